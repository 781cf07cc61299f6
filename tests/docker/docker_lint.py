"""docker_lint.py — ctest lint.docker: the Docker image files (docker/, .dockerignore) checked
without a Docker engine.

- hadolint (pinned in tests/reference/requirements.txt) on docker/Dockerfile and
  docker/Dockerfile.cpu at its strictest threshold, with no configuration file of the user's; an
  inline `# hadolint ignore=` must follow a comment line that says why.
- The build stage of each Dockerfile runs the steps of the fresh-machine check
  (scripts/check-fresh.sh, its `in_chroot` lines), in the same order and with the same words: the
  image cannot drift from what that check proves. The CMake configure step may add -D options for
  CHORD_NATIVE and CHORD_CUDA only.
- The runtime stage runs as a non-root numeric user with /data a volume, exposes chordd's default
  REST and gRPC ports (read from cmd/cmd_serve.c), binds them to 0.0.0.0 with a token file by
  default (never --insecure-no-auth), and has a HEALTHCHECK on GET /healthz.
- docker/compose.yaml (PyYAML): the CUDA service reserves NVIDIA GPUs, a cpu-profile service uses
  Dockerfile.cpu; both have the /data volume, both ports, a healthcheck and the token secret.
- .dockerignore leaves out .git and the build directories.

Then a self-test: broken copies of those files (one mutation each) must each be refused.

Usage: docker_lint.py --hadolint PATH --root REPO [--no-self-test]"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import yaml

DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.cpu")
FILES = DOCKERFILES + ("docker/compose.yaml", ".dockerignore", "scripts/check-fresh.sh",
                       "cmd/cmd_serve.c")
HADOLINT_CONFIG = "failure-threshold: style\nignored: []\n"
# -D options the image's configure step may add to check-fresh's (docker/Dockerfile says why)
CONFIGURE_EXTRA = {"CHORD_NATIVE", "CHORD_CUDA"}
TOKEN_FILE = "/run/secrets/chord_tokens"


def read(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


# ---- hadolint ---------------------------------------------------------------------------------

def check_hadolint(root, hadolint, problems):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as cfg:
        cfg.write(HADOLINT_CONFIG)
    try:
        for rel in DOCKERFILES:
            p = subprocess.run([hadolint, "--config", cfg.name, "--no-color",
                                "--failure-threshold", "style", rel],
                               cwd=root, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                problems.append(f"hadolint {rel} (exit {p.returncode}):\n"
                                f"{(p.stdout + p.stderr).rstrip()}")
            lines = read(root, rel).splitlines()
            for i, line in enumerate(lines):
                if re.match(r"\s*#\s*hadolint\s+ignore", line):
                    before = lines[i - 1].strip() if i > 0 else ""
                    if not before.startswith("#") or "hadolint" in before or len(before) < 12:
                        problems.append(f"{rel}:{i + 1}: '{line.strip()}' without a comment "
                                        "line above it saying why")
    finally:
        os.unlink(cfg.name)


# ---- Dockerfile parsing -------------------------------------------------------------------------

def instructions(text):
    """[(line, KEYWORD, rest)] with continuation lines joined and comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.strip().partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
        buf = ""
    return out


def stages(text):
    """[{'name', 'image', 'ins': [...]}] in order."""
    result = []
    for ins in instructions(text):
        if ins[1] == "FROM":
            words = ins[2].split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append({"name": name, "image": words[0], "ins": []})
        elif result:
            result[-1]["ins"].append(ins)
    return result


def shell_commands(run_text):
    """A RUN's shell text split into simple commands (on &&, ; and newlines), as word lists."""
    cmds = []
    for part in re.split(r"&&|;|\n", run_text):
        part = part.strip()
        if part:
            try:
                cmds.append(shlex.split(part))
            except ValueError:
                cmds.append(part.split())
    return cmds


def exec_form(rest):
    try:
        v = json.loads(rest)
    except json.JSONDecodeError:
        return None
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


# ---- the fresh-machine check's steps ----------------------------------------------------------

def fresh_steps(root):
    """The commands scripts/check-fresh.sh runs in its chroot, in order, as word lists."""
    steps = []
    for m in re.finditer(r"^\s*in_chroot\s+('([^']*)'|(\S+))", read(root, "scripts/check-fresh.sh"),
                         re.M):
        steps.append(shlex.split(m.group(2) if m.group(2) is not None else m.group(3)))
    return steps


def step_matches(step, cmd):
    if cmd == step:
        return True
    if step[:1] == ["cmake"] and "-S" in step and cmd[:len(step)] == step:
        extra = cmd[len(step):]
        return bool(extra) and all(
            re.fullmatch(r"-D([A-Z_]+)=\S+", w) and re.fullmatch(r"-D([A-Z_]+)=\S+", w).group(1)
            in CONFIGURE_EXTRA for w in extra)
    return False


def check_build_steps(root, rel, build, problems):
    steps = fresh_steps(root)
    if len(steps) < 3:
        problems.append(f"scripts/check-fresh.sh: found only {len(steps)} in_chroot steps")
        return
    cmds = [c for (_, kw, rest) in build["ins"] if kw == "RUN" for c in shell_commands(rest)]
    at = 0
    for step in steps:
        for i in range(at, len(cmds)):
            if step_matches(step, cmds[i]):
                at = i + 1
                break
        else:
            problems.append(f"{rel}: the build stage does not run check-fresh's step "
                            f"'{shlex.join(step)}' (in check-fresh's order; the configure step may "
                            f"add only -D{'/-D'.join(sorted(CONFIGURE_EXTRA))})")


# ---- the runtime stage --------------------------------------------------------------------------

def default_ports(root):
    src = read(root, "cmd/cmd_serve.c")
    http = re.search(r'\*http = "[^":]*:(\d+)"', src)
    grpc = re.search(r'\*grpc = "[^":]*:(\d+)"', src)
    return (http.group(1) if http else "8080"), (grpc.group(1) if grpc else "50051")


def check_dockerfile(root, rel, problems):
    text = read(root, rel)
    st = stages(text)
    if len(st) < 2:
        problems.append(f"{rel}: want a multi-stage build (build, runtime); found {len(st)} stage(s)")
        return
    build = next((s for s in st if s["name"] == "build"), None)
    if build is None:
        problems.append(f"{rel}: no stage named 'build'")
    else:
        if not build["image"].startswith("debian:12"):
            problems.append(f"{rel}: the build stage is {build['image']}, not Debian 12 "
                            "(scripts/check-fresh.sh's bookworm)")
        check_build_steps(root, rel, build, problems)
    rt = st[-1]
    ins = rt["ins"]
    if not rt["image"].startswith("debian:12-slim"):
        problems.append(f"{rel}: the runtime stage is {rt['image']}, not debian:12-slim")
    kw = lambda k: [rest for (_, w, rest) in ins if w == k]  # noqa: E731
    copies = " ".join(kw("COPY"))
    for binary in ("chordd", "chordctl"):
        if not re.search(rf"--from=build\b[^\n]*/build/{binary}\b", copies):
            problems.append(f"{rel}: the runtime stage does not COPY --from=build .../build/{binary}")
    users = kw("USER")
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append(f"{rel}: the runtime stage's last USER is {users[-1] if users else 'none'}"
                        ", want a non-root numeric uid[:gid]")
    volumes = " ".join(kw("VOLUME"))
    if "/data" not in re.findall(r"/[\w./-]+", volumes):
        problems.append(f"{rel}: no VOLUME /data")
    http_port, grpc_port = default_ports(root)
    exposed = set(" ".join(kw("EXPOSE")).replace("/tcp", "").split())
    for port in (http_port, grpc_port):
        if port not in exposed:
            problems.append(f"{rel}: EXPOSE lacks chordd's default port {port}")
    env = " ".join(kw("ENV"))
    health = " ".join(kw("HEALTHCHECK"))
    if "CMD" not in health or not ("/healthz" in health or
                                   ("CHORD_HEALTH_URL" in health and
                                    re.search(rf"CHORD_HEALTH_URL=https?://127\.0\.0\.1:{http_port}"
                                              r"/healthz\b", env))):
        problems.append(f"{rel}: no HEALTHCHECK on GET /healthz (port {http_port})")
    entry = exec_form(kw("ENTRYPOINT")[-1]) if kw("ENTRYPOINT") else None
    cmd = exec_form(kw("CMD")[-1]) if kw("CMD") else []
    if not entry or cmd is None:
        problems.append(f"{rel}: ENTRYPOINT and CMD must be in JSON (exec) form")
        return
    argv = entry + cmd
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    if os.path.basename(entry[0]) != "chordd":
        problems.append(f"{rel}: the ENTRYPOINT does not run chordd")
    want = {"--data-dir": "/data", "--http": f"0.0.0.0:{http_port}",
            "--grpc": f"0.0.0.0:{grpc_port}", "--auth-token-file": TOKEN_FILE}
    for flag, value in want.items():
        if pairs.get(flag) != value:
            problems.append(f"{rel}: ENTRYPOINT + CMD give {flag} {pairs.get(flag)}, want {value}")
    if "--insecure-no-auth" in argv:
        problems.append(f"{rel}: the default command serves without tokens (--insecure-no-auth)")


# ---- compose ----------------------------------------------------------------------------------

def check_compose(root, problems):
    rel = "docker/compose.yaml"
    try:
        doc = yaml.safe_load(read(root, rel))
    except yaml.YAMLError as e:
        problems.append(f"{rel}: not YAML: {e}")
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        problems.append(f"{rel}: no services")
        return
    http_port, grpc_port = default_ports(root)
    top_volumes = doc.get("volumes") or {}
    top_secrets = doc.get("secrets") or {}
    by_dockerfile = {}
    for name, svc in doc["services"].items():
        build = (svc or {}).get("build") or {}
        if isinstance(build, dict) and build.get("dockerfile"):
            context = os.path.normpath(os.path.join(root, "docker", build.get("context", ".")))
            df = os.path.normpath(os.path.join(context, build["dockerfile"]))
            by_dockerfile[os.path.relpath(df, root)] = (name, svc)
            if context != os.path.normpath(root):
                problems.append(f"{rel}: service {name}'s build context is not the repository root")
    for df in DOCKERFILES:
        if df not in by_dockerfile:
            problems.append(f"{rel}: no service builds {df}")
    for df, (name, svc) in sorted(by_dockerfile.items()):
        where = f"{rel}: service {name}"
        mounts = svc.get("volumes") or []
        data = [m for m in mounts if isinstance(m, str) and m.split(":")[1:2] == ["/data"]]
        data += [m for m in mounts if isinstance(m, dict) and m.get("target") == "/data"]
        if not data:
            problems.append(f"{where}: no volume on /data")
        for m in data:
            source = m.split(":")[0] if isinstance(m, str) else m.get("source", "")
            if not source.startswith((".", "/", "$")) and source not in top_volumes:
                problems.append(f"{where}: volume {source} is not declared under volumes:")
        published = set()
        for p in svc.get("ports") or []:
            target = str(p.get("target")) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1]
            published.add(target.split("/")[0])
        for port in (http_port, grpc_port):
            if port not in published:
                problems.append(f"{where}: container port {port} is not published")
        hc = svc.get("healthcheck") or {}
        test = hc.get("test")
        test = " ".join(test) if isinstance(test, list) else str(test or "")
        if hc.get("disable") or not ("/healthz" in test or "CHORD_HEALTH_URL" in test):
            problems.append(f"{where}: no healthcheck on /healthz")
        secrets = [s if isinstance(s, str) else (s or {}).get("source") for s in
                   svc.get("secrets") or []]
        token_mounted = "chord_tokens" in secrets and "chord_tokens" in top_secrets
        token_mounted |= any(isinstance(m, str) and TOKEN_FILE in m for m in mounts)
        if not token_mounted:
            problems.append(f"{where}: no token file at {TOKEN_FILE} (secret chord_tokens or a "
                            "bind mount)")
        if df == "docker/Dockerfile":
            devices = ((((svc.get("deploy") or {}).get("resources") or {}).get("reservations")
                        or {}).get("devices") or [])
            if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
                       for d in devices if isinstance(d, dict)):
                problems.append(f"{where}: no GPU reservation (deploy.resources.reservations."
                                "devices: driver nvidia, capabilities [gpu])")
        else:
            if "cpu" not in (svc.get("profiles") or []):
                problems.append(f"{where}: not in the cpu profile")
            if "deploy" in svc and "devices" in json.dumps(svc["deploy"]):
                problems.append(f"{where}: the CPU service reserves devices")


def check_dockerignore(root, problems):
    try:
        entries = {ln.strip().rstrip("/") for ln in read(root, ".dockerignore").splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")}
    except FileNotFoundError:
        problems.append(".dockerignore: missing")
        return
    for want in (".git", "build", "build-*"):
        if want not in entries:
            problems.append(f".dockerignore: does not leave out {want}")


def all_problems(root, hadolint):
    problems = []
    check_hadolint(root, hadolint, problems)
    for rel in DOCKERFILES:
        check_dockerfile(root, rel, problems)
    check_compose(root, problems)
    check_dockerignore(root, problems)
    return problems


# ---- self-test ----------------------------------------------------------------------------------

# (what the mutation breaks, file, old text, new text, a word the refusal must contain)
MUTATIONS = [
    ("install-deps.sh replaced by a hand-written apt-get", "docker/Dockerfile",
     "RUN scripts/install-deps.sh", "RUN apt-get update", "install-deps.sh"),
    ("an extra configure option", "docker/Dockerfile.cpu",
     "-DCHORD_CUDA=OFF", "-DCHORD_CUDA=OFF -DCMAKE_C_COMPILER=clang", "cmake -S"),
    ("a new step in check-fresh.sh", "scripts/check-fresh.sh",
     "  in_chroot 'build/chordd --help >/dev/null'",
     "  in_chroot 'build/chordd --help >/dev/null'\n  in_chroot 'build/chordctl --help'",
     "chordctl --help"),
    ("runs as root", "docker/Dockerfile", "USER 10001:10001", "USER root", "USER"),
    ("no /data volume", "docker/Dockerfile.cpu", 'VOLUME ["/data"]', 'VOLUME ["/tmp"]', "/data"),
    ("served without tokens", "docker/Dockerfile",
     'CMD ["--auth-token-file", "/run/secrets/chord_tokens"]', 'CMD ["--insecure-no-auth"]',
     "--auth-token-file"),
    ("a hadolint finding (cd in RUN)", "docker/Dockerfile.cpu",
     "RUN scripts/install-deps.sh", "RUN cd scripts && ./install-deps.sh", "DL3003"),
    ("an unexplained hadolint ignore", "docker/Dockerfile",
     "COPY . .", "# hadolint ignore=DL3045\nCOPY . .", "saying why"),
    ("no GPU reservation", "docker/compose.yaml", "driver: nvidia", "driver: amd", "GPU"),
    ("no healthcheck", "docker/compose.yaml", "  healthcheck:\n", "  healthcheck_:\n",
     "healthcheck"),
    ("no data volume in compose", "docker/compose.yaml", "      - chord-data:/data\n", "",
     "/data"),
    ("a changed default port", "cmd/cmd_serve.c", '*http = "127.0.0.1:8080"',
     '*http = "127.0.0.1:8090"', "8090"),
    (".git in the build context", ".dockerignore", "\n.git\n", "\n", ".git"),
]


def self_test(root, hadolint):
    failed = 0
    for what, rel, old, new, word in MUTATIONS:
        with tempfile.TemporaryDirectory(prefix="chord-docker-lint.") as tmp:
            for f in FILES:
                os.makedirs(os.path.dirname(os.path.join(tmp, f)), exist_ok=True)
                shutil.copy(os.path.join(root, f), os.path.join(tmp, f))
            text = read(tmp, rel)
            if old not in text:
                print(f"self-test: '{what}': {rel} no longer contains {old!r}; update MUTATIONS")
                failed += 1
                continue
            with open(os.path.join(tmp, rel), "w", encoding="utf-8") as f:
                f.write(text.replace(old, new, 1))
            found = all_problems(tmp, hadolint)
            if not any(word in p for p in found):
                print(f"self-test: '{what}' was NOT refused (want a problem naming {word!r}); "
                      f"got: {found}")
                failed += 1
            else:
                print(f"self-test: refused '{what}'")
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--no-self-test", action="store_true")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    if not os.access(args.hadolint, os.X_OK):
        print(f"lint.docker: no hadolint at {args.hadolint} (scripts/setup-venv.sh installs it)")
        return 1
    version = subprocess.run([args.hadolint, "--version"], capture_output=True, text=True)
    print(f"lint.docker: {version.stdout.strip()}")
    problems = all_problems(root, args.hadolint)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        return 1
    print(f"lint.docker: {', '.join(DOCKERFILES)}, docker/compose.yaml, .dockerignore: clean; "
          f"build steps = scripts/check-fresh.sh's {len(fresh_steps(root))} steps")
    if not args.no_self_test:
        failed = self_test(root, args.hadolint)
        if failed:
            print(f"lint.docker: self-test: {failed} of {len(MUTATIONS)} broken copies passed")
            return 1
        print(f"lint.docker: self-test: all {len(MUTATIONS)} broken copies refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
