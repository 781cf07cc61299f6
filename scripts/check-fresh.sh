#!/usr/bin/env bash
# Fresh-machine check: builds chord on a brand-new minimal Debian 12 the way a new user would
# (scripts/install-deps.sh, then the CMake configure and build of scripts/demo.sh), so a package
# missing from scripts/deps-debian.txt fails here instead of on the user's machine.
#
# A minbase bookworm root file system is made with mmdebstrap and cached as a tarball (outside the
# repository); each run unpacks it into a temporary directory, copies `git archive HEAD` into
# /src/chord, and runs the steps in a chroot. It does not run the tests (scripts/test.sh does) and
# has no CUDA toolkit, so the build is CPU-only. Needs root (mount, mknod, chroot) and network.
#
# Safety (a host's /dev was once wiped by a chroot clean-up): the chroot gets its own /dev (a small
# tmpfs with device nodes made by mknod; the host's /dev is never bind-mounted), every mount
# happens in a private mount and PID namespace (unshare) so none reaches the host and all vanish
# with the namespace, a trap unmounts them on exit, and the temporary directory is deleted only
# after /proc/self/mounts shows nothing mounted under it, and then with rm --one-file-system.
#
# Environment:
#   CHECK_FRESH_CACHE         rootfs tarball (default ~/.cache/chord/fresh-bookworm.tar)
#   CHECK_FRESH_MAX_AGE_DAYS  rebuild the tarball when older than this (default 7)
#   CHECK_FRESH_REBUILD=1     rebuild the tarball now
#   CHECK_FRESH_MIRROR        Debian mirror (default http://deb.debian.org/debian)
#   CHECK_FRESH_SECURITY      security mirror (default http://deb.debian.org/debian-security)
#   CHECK_FRESH_REF           the git revision to check (default HEAD)
#   CHECK_FRESH_WORKTREE_DEPS=1  use the working tree's scripts/deps-debian.txt instead of the
#                             revision's (to try a deps-list edit before committing it)
#   CHECK_FRESH_DROP_PKG=P    self-test of this check: delete package P from the copied deps list;
#                             the run must then fail (e.g. libprotobuf-dev fails at configure)
#   CHECK_FRESH_TMPDIR        where the temporary root goes (default $TMPDIR or /tmp)
#   CHECK_FRESH_KEEP=1        keep the temporary root (unmounted) for inspection
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
self=$(realpath "$0")
t0=${CHECK_FRESH_T0:-$(date +%s)}

elapsed() { echo $(($(date +%s) - t0)); }
note() { printf '[check-fresh %5ds] %s\n' "$(elapsed)" "$*"; }

# Lists mount points at or below $1 in this process's mount namespace.
mounts_under() {
  awk -v r="$1" '{ p = $2; gsub(/\\040/, " ", p); if (p == r || index(p, r "/") == 1) print p }' \
    /proc/self/mounts
}

# Refuses a mount target that is not a plain directory at exactly that path: a symlink such as
# $root/dev -> /dev would otherwise put the mount on the host.
plain_dir() {
  if [ ! -d "$1" ] || [ -L "$1" ] || [ "$(realpath -e "$1")" != "$1" ]; then
    echo "check-fresh: refusing to mount on $1 (not a plain directory inside the root)" >&2
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Inner part: runs as PID 1 of a private mount + PID namespace. Mounts proc and a private /dev in
# $root, runs the steps in the chroot, unmounts. Reports its stage in $work/stage.
if [ "${1:-}" = "--inner" ]; then
  work=$2
  root=$work/root
  stage() { echo "$1" >"$work/stage"; note "stage: $1"; }
  # shellcheck disable=SC2317 # called by the EXIT trap
  unmount_all() {
    local m p
    # As PID 1 of our own PID namespace, every other process in it was started by this run
    # (a daemon a package left behind, say) and would keep /dev busy: end them, one by one.
    if [ $$ -eq 1 ] && mountpoint -q "$root/proc" 2>/dev/null; then
      for p in "$root"/proc/[0-9]*; do
        p=${p##*/}
        [ "$p" -ne 1 ] || continue
        echo "check-fresh: ending leftover process $p ($(cat "$root/proc/$p/comm" 2>/dev/null))" >&2
        kill -KILL "$p" 2>/dev/null || true
      done
      sleep 0.5
    fi
    for m in "$root/dev/pts" "$root/dev" "$root/proc"; do
      if mountpoint -q "$m" 2>/dev/null; then umount "$m" || echo "check-fresh: umount $m failed" >&2; fi
    done
    if [ -n "$(mounts_under "$root")" ]; then
      echo "check-fresh: still mounted under $root:" >&2
      mounts_under "$root" >&2
      touch "$work/mounts-left"
    fi
  }
  trap unmount_all EXIT
  trap 'exit 130' INT TERM

  stage "mount proc and a private /dev"
  plain_dir "$root/proc"
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  plain_dir "$root/dev"
  mount -t tmpfs -o nosuid,noexec,mode=0755,size=4m chord-fresh-dev "$root/dev"
  for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 0666 "$root/dev/$name" c "$major" "$minor"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  ln -s /proc/self/fd/0 "$root/dev/stdin"
  ln -s /proc/self/fd/1 "$root/dev/stdout"
  ln -s /proc/self/fd/2 "$root/dev/stderr"
  mkdir -m 1777 "$root/dev/shm"
  mkdir -m 0755 "$root/dev/pts"
  # A new devpts instance (never the host's); optional, nothing in the build needs a terminal.
  if mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts "$root/dev/pts" 2>/dev/null; then
    ln -s pts/ptmx "$root/dev/ptmx"
  fi
  # Name resolution for apt. Remove first: a symlinked resolv.conf would be followed out of the root.
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"

  envs=(HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!v:-}" ] || envs+=("$v=${!v}")
  done
  in_chroot() { chroot "$root" /usr/bin/env -i "${envs[@]}" /bin/bash -euo pipefail -c "cd /src/chord && $1"; }

  stage "install-deps (scripts/install-deps.sh in the chroot)"
  in_chroot scripts/install-deps.sh
  stage "cmake configure"
  in_chroot 'cmake -S . -B build -DCMAKE_BUILD_TYPE=Release'
  stage "cmake build"
  # shellcheck disable=SC2016 # $(nproc) expands in the chroot
  in_chroot 'cmake --build build -j"$(nproc)"'
  stage "smoke (build/chordd --help)"
  in_chroot 'build/chordd --help >/dev/null'
  stage "unmount"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Outer part: preflight, rootfs cache, temporary root, source copy; deletes the root at the end.
stage=preflight
work=""
finish() {
  local rc=$?
  trap - EXIT
  if [ -n "$work" ] && [ -d "$work" ]; then
    if [ -e "$work/mounts-left" ] || [ -n "$(mounts_under "$work")" ]; then
      echo "check-fresh: something is (or was) still mounted under $work; NOT deleting it." >&2
      mounts_under "$work" >&2 || true
      echo "check-fresh: inspect with: findmnt -R $work; unmount, then rm -rf --one-file-system $work" >&2
      [ "$rc" -ne 0 ] || rc=1
    elif [ "${CHECK_FRESH_KEEP:-0}" = 1 ]; then
      note "kept $work (nothing mounted under it)"
    else
      rm -rf --one-file-system -- "$work"
    fi
  fi
  if [ "$rc" -eq 0 ]; then
    note "PASS: fresh Debian 12 installs the deps and builds chord in $(elapsed) s"
  else
    printf '[check-fresh %5ds] FAIL at stage %s (exit %d)\n' "$(elapsed)" "'$stage'" "$rc" >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM
note "stage: $stage"

[ "$(id -u)" -eq 0 ] || { echo "check-fresh: needs root (mount, mknod, chroot)" >&2; exit 1; }
if ! command -v mmdebstrap >/dev/null; then
  note "installing mmdebstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
fi
# Mounts go in a private namespace when the kernel allows it (they then cannot reach the host and
# disappear with the namespace); otherwise in ours, still with our own /dev and the checks below.
ns=(unshare --mount --propagation private --pid --fork --kill-child)
if ! "${ns[@]}" true 2>/dev/null; then
  note "warning: unshare --mount --pid not permitted; mounting in the host namespace"
  ns=()
fi

stage="rootfs cache"
cache=${CHECK_FRESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chord/fresh-bookworm.tar}
max_age=${CHECK_FRESH_MAX_AGE_DAYS:-7}
mirror=${CHECK_FRESH_MIRROR:-http://deb.debian.org/debian}
security=${CHECK_FRESH_SECURITY:-http://deb.debian.org/debian-security}
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9 # one builder at a time; readers wait for a finished tarball
if [ ! -s "$cache" ] || [ "${CHECK_FRESH_REBUILD:-0}" = 1 ] ||
   [ -n "$(find "$cache" -mtime +"$max_age" 2>/dev/null)" ]; then
  note "stage: $stage: building $cache with mmdebstrap (minbase bookworm)"
  partial="$cache.partial.$$"
  rm -f "$cache".partial.* # left by an interrupted build (we hold the lock)
  # No /dev mounts for mmdebstrap either (it creates device nodes with mknod as root).
  "${ns[@]}" mmdebstrap --mode=root --variant=minbase --format=tar --skip=chroot/mount/dev \
    bookworm "$partial" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" ||
    { rm -f "$partial"; false; }
  mv -f "$partial" "$cache"
else
  note "stage: $stage: using $cache ($(( ($(date +%s) - $(stat -c %Y "$cache")) / 3600 )) h old)"
fi
flock -u 9

stage="unpack rootfs"
note "stage: $stage"
tmpbase=$(realpath -e "${CHECK_FRESH_TMPDIR:-${TMPDIR:-/tmp}}")
work=$(mktemp -d "$tmpbase/chord-fresh.XXXXXX")
case "$work" in "$tmpbase"/chord-fresh.??????) ;; *) echo "check-fresh: odd temp dir $work" >&2; work=""; exit 1 ;; esac
root=$work/root
mkdir "$root"
# The tarball's ./dev nodes are not needed: the chroot gets a fresh /dev tmpfs.
tar -xf "$cache" -C "$root" --exclude='./dev/*'

stage="copy source"
ref=${CHECK_FRESH_REF:-HEAD}
note "stage: $stage: git archive $ref ($(git -C "$repo" rev-parse --short "$ref"))"
mkdir -p "$root/src/chord"
git -C "$repo" archive --format=tar "$ref" | tar -x -C "$root/src/chord"
deps="$root/src/chord/scripts/deps-debian.txt"
if [ "${CHECK_FRESH_WORKTREE_DEPS:-0}" = 1 ]; then
  note "using the working tree's scripts/deps-debian.txt"
  cp "$repo/scripts/deps-debian.txt" "$deps"
fi
if [ -n "${CHECK_FRESH_DROP_PKG:-}" ]; then
  grep -qx "$CHECK_FRESH_DROP_PKG" "$deps" ||
    { echo "check-fresh: CHECK_FRESH_DROP_PKG=$CHECK_FRESH_DROP_PKG is not in the deps list" >&2; exit 1; }
  grep -vx "$CHECK_FRESH_DROP_PKG" "$deps" >"$deps.new" && mv "$deps.new" "$deps"
  note "self-test: dropped $CHECK_FRESH_DROP_PKG from the copied deps list; this run should FAIL"
fi

stage="chroot"
echo "$stage" >"$work/stage"
if ! CHECK_FRESH_T0=$t0 "${ns[@]}" bash "$self" --inner "$work"; then
  stage=$(cat "$work/stage")
  exit 1
fi
stage="clean-up"
