#!/usr/bin/env bash
# emulate-runtime.sh [DOCKERFILE [BUILD_DIR]] — replays a Dockerfile's runtime stage without a
# Docker engine (docs/docker.md "Checks"), then starts the image's command and probes it.
#
# In a chroot of scripts/check-fresh.sh's cached minbase bookworm (run that script once first):
# the stage's RUN steps verbatim under its SHELL, ADD of a URL with curl, COPY --from=build of
# chordd and chordctl from BUILD_DIR (a build of this tree, e.g. cmake -DCHORD_NATIVE=OFF
# -DCHORD_CUDA=OFF for docker/Dockerfile.cpu), ENV and USER as Docker applies them. Then, in a
# network namespace of its own (the host's ports stay free), ENTRYPOINT + CMD as USER: refused
# without a token file, then served with one; the HEALTHCHECK command, chordctl with and without
# the token, SIGTERM; and the documented --insecure-no-auth override. Not a real image: the base
# is minbase, not debian:12-slim, and nothing of the build stage runs (check-fresh.sh proves it).
# Needs root (chroot, mount, unshare) and network (apt). Defaults: docker/Dockerfile.cpu, build/.
#
# Safety, as in check-fresh.sh: mounts only in a private mount + PID namespace, a tmpfs /dev of
# its own (never the host's), the temporary root deleted only when nothing is mounted under it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=${CHORD_VENV:-$HOME/.cache/chord/venv}/bin/python

if [ "${1:-}" = "--inner" ]; then
  work=$2 build=$3
  root=$work/root
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount -t tmpfs -o nosuid,noexec,mode=0755,size=4m chord-emulate-dev "$root/dev"
  trap 'umount "$root/dev" "$root/proc" 2>/dev/null || true' EXIT
  for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 0666 "$root/dev/$name" c "$major" "$minor"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  mkdir -m 1777 "$root/dev/shm"
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  envs=(HOME=/root DEBIAN_FRONTEND=noninteractive
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  user=0:0 workdir=/ shell=(/bin/sh -c)
  while IFS=$'\t' read -r kind arg; do
    case $kind in
      SHELL) mapfile -t shell < <("$py" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$arg") ;;
      RUN)
        echo "== RUN ${arg:0:90}..."
        chroot "$root" /usr/bin/env -i "${envs[@]}" "${shell[@]}" "$arg" >>"$work/run.log" 2>&1 ||
          { tail -20 "$work/run.log"; echo "emulate-runtime: FAIL: a RUN step failed"; exit 1; } ;;
      ADD)
        read -r url dest <<<"$arg"
        echo "== ADD $url"
        curl -fsSL --max-time 60 -o "$root$dest" "$url" ||
          { echo "emulate-runtime: FAIL: cannot fetch $url"; exit 1; } ;;
      COPY)
        echo "== COPY $arg (chordd, chordctl from $build)"
        cp "$build/chordd" "$build/chordctl" "$root/usr/local/bin/" ;;
      ENV) envs+=("$arg"); echo "== ENV $arg" ;;
      USER) user=$arg; echo "== USER $arg" ;;
      WORKDIR) workdir=$arg ;;
      ENTRYPOINT) entry=$arg ;;
      CMD) cmd=$arg ;;
      HEALTHCHECK) health=$arg ;;
    esac
  done <"$work/steps.tsv"
  argv=$("$py" -c 'import json,shlex,sys; print(shlex.join(json.loads(sys.argv[1]) + json.loads(sys.argv[2])))' "$entry" "$cmd")
  noauth=$("$py" -c 'import json,shlex,sys; print(shlex.join(json.loads(sys.argv[1]) + ["--insecure-no-auth"]))' "$entry")
  probe=$("$py" -c 'import json,sys; h=sys.argv[1]; print(json.loads(h[h.index("CMD")+3:])[-1])' "$health")
  printf '%s\n' "${envs[@]}" >"$work/envs"
  export root work user workdir argv noauth probe
  # shellcheck disable=SC2016 # expands in the inner shell, from the exported variables
  unshare --net bash -uo pipefail -c '
    ip link set lo up
    mapfile -t envs <"$work/envs"
    as_user() { chroot --userspec="$user" "$root" /usr/bin/env -i "${envs[@]}" /bin/sh -c "cd $workdir && $1"; }
    fail() { echo "emulate-runtime: FAIL: $*"; exit 1; }
    wait_healthy() { for _ in $(seq 1 50); do as_user "$probe" 2>/dev/null && return 0; sleep 0.2; done; return 1; }
    echo "-- $argv"
    rc=0; as_user "$argv" >"$work/no-token.log" 2>&1 || rc=$?
    [ "$rc" -eq 2 ] && grep -q chord_tokens "$work/no-token.log" || fail "without a token file: exit $rc"
    echo "without a token file: exit 2, $(head -1 "$work/no-token.log")"
    token=$(openssl rand -hex 32)
    mkdir -p "$root/run/secrets"
    echo "admin $token" >"$root/run/secrets/chord_tokens"
    chown "$user" "$root/run/secrets/chord_tokens"; chmod 600 "$root/run/secrets/chord_tokens"
    echo "$token" >"$root/tmp/admin.token"; chmod 644 "$root/tmp/admin.token"
    chroot --userspec="$user" "$root" /usr/bin/env -i "${envs[@]}" /bin/sh -c "cd $workdir && exec $argv" >"$work/chordd.log" 2>&1 &
    pid=$!
    wait_healthy || { cat "$work/chordd.log"; fail "the HEALTHCHECK command never passed"; }
    echo "HEALTHCHECK command: exit 0"
    echo "as: $(as_user id)"
    echo "/data: $(as_user "ls -ld /data | cut -d\" \" -f1,3,4; ls /data" | tr "\n" " ")"
    as_user "chordctl --token-file /tmp/admin.token jobs list" >/dev/null || fail "chordctl with the token"
    echo "chordctl with the token: ok"
    ! as_user "chordctl jobs list" 2>/dev/null || fail "chordctl without a token was answered"
    code=$(as_user "curl -s -o /dev/null -w %{http_code} http://127.0.0.1:8080/v1/jobs")
    [ "$code" = 401 ] || fail "GET /v1/jobs without a token: $code"
    echo "without a token: 401"
    kill -TERM "$pid"; rc=0; wait "$pid" || rc=$?
    [ "$rc" -eq 0 ] || fail "SIGTERM: exit $rc"
    ! as_user "$probe" 2>/dev/null || fail "healthy after stopping"
    echo "SIGTERM: exit 0, then the HEALTHCHECK command fails"
    chroot --userspec="$user" "$root" /usr/bin/env -i "${envs[@]}" /bin/sh -c "cd $workdir && exec $noauth" >"$work/noauth.log" 2>&1 &
    pid=$!
    wait_healthy || { cat "$work/noauth.log"; fail "--insecure-no-auth never became healthy"; }
    code=$(as_user "curl -s -o /dev/null -w %{http_code} http://127.0.0.1:8080/v1/jobs")
    kill -TERM "$pid"; wait "$pid" || true
    [ "$code" = 200 ] || fail "--insecure-no-auth: GET /v1/jobs gave $code"
    echo "--insecure-no-auth in place of the CMD: 200 without a token"
    echo "emulate-runtime: PASS"
  '
  exit
fi

dockerfile=${1:-$repo/docker/Dockerfile.cpu}
build=$(realpath -e "${2:-$repo/build}")
cache=${CHECK_FRESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chord/fresh-bookworm.tar}
[ "$(id -u)" -eq 0 ] || { echo "emulate-runtime: needs root (chroot, mount, unshare)" >&2; exit 1; }
[ -s "$cache" ] || { echo "emulate-runtime: no $cache: run scripts/check-fresh.sh once" >&2; exit 1; }
if [ ! -x "$build/chordd" ] || [ ! -x "$build/chordctl" ]; then
  echo "emulate-runtime: no chordd/chordctl in $build" >&2
  exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/chord-emulate.XXXXXX")
finish() {
  if grep -q " $work/" /proc/self/mounts; then
    echo "emulate-runtime: still mounted under $work; not deleting it" >&2
  else
    rm -rf --one-file-system -- "$work"
  fi
}
trap finish EXIT
# the runtime stage (the last), one instruction a line: KEYWORD<TAB>arguments
"$py" -c '
import sys
sys.path.insert(0, sys.argv[1])
import docker_lint
st = docker_lint.stages(open(sys.argv[2]).read())
print(st[-1]["image"], file=sys.stderr)
for _, kw, rest in st[-1]["ins"]:
    print(kw + "\t" + rest.replace("\t", " "))
' "$repo/tests/docker" "$dockerfile" >"$work/steps.tsv"
mkdir "$work/root"
tar -xf "$cache" -C "$work/root" --exclude='./dev/*'
echo "emulate-runtime: $(basename "$dockerfile")'s runtime stage in $work/root"
unshare --mount --propagation private --pid --fork --kill-child bash "$0" --inner "$work" "$build"
