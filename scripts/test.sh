#!/usr/bin/env bash
# Builds chord and runs every test (ctest). Installs the Debian packages and the Python reference
# venv first when they are missing. Usage: scripts/test.sh [--sanitize] [extra ctest args]
#   --sanitize   build with ASan + UBSan in build-sanitize/ and run the tests there
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=build type=Release
if [ "${1:-}" = "--sanitize" ]; then
  build=build-sanitize type=Sanitize
  shift
fi
scripts/install-deps.sh
scripts/setup-venv.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=$type >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
ctest --output-on-failure -j"$(nproc)" "$@"
