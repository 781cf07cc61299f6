#!/usr/bin/env bash
# Creates (once) the Python virtual environment holding the test references — transformers +
# torch, tokenizers, math-verify, grpcio(-tools, -health-checking), schemathesis, peft, the
# tinker client and tinker-cookbook — pinned in tests/reference/requirements.txt (and
# requirements-nodeps.txt, installed without their dependencies). Reused while the requirements
# are unchanged (a stamp file records their hash). Location: $CHORD_VENV, default ~/.cache/chord/venv.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CHORD_VENV:-$HOME/.cache/chord/venv}
req="$here/tests/reference/requirements.txt"
nodeps="$here/tests/reference/requirements-nodeps.txt" # installed without their dependencies
want=$(cat "$req" "$nodeps" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.chord-stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup-venv: $venv is up to date"
  exit 0
fi
# The first python3 on PATH (pyenv 3.11 on the dev machines) or Debian's; never mix the two.
py=${CHORD_PYTHON_BOOTSTRAP:-python3}
echo "setup-venv: creating $venv with $($py --version)"
mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$req"
"$venv/bin/pip" install -q --no-deps -r "$nodeps"
echo "$want" > "$venv/.chord-stamp"
echo "setup-venv: ready"
