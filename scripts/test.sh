#!/usr/bin/env bash
# Builds chord and runs every test (ctest). Installs the Debian packages and the Python reference
# venv first when they are missing. Usage: scripts/test.sh [--sanitize | --tsan] [extra ctest args]
#   --sanitize   build with ASan + UBSan in build-sanitize/ and run the tests there
#   --tsan       build with ThreadSanitizer in build-tsan/ and run the tests whose threads
#                meet — the service and gRPC integration tests, rollouts, the shutdown tests —
#                there (docs/operations.md "ThreadSanitizer"; extra ctest args replace that
#                selection, e.g. scripts/test.sh --tsan -R unit.test_storage)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=build type=Release
select=()
if [ "${1:-}" = "--sanitize" ]; then
  build=build-sanitize type=Sanitize
  shift
elif [ "${1:-}" = "--tsan" ]; then
  build=build-tsan type=TSan
  shift
  # (integration.tinker_cookbook is not: SmolLM2's RL steps take many minutes under TSan)
  [ $# -gt 0 ] || select=(-R '^integration\.(service.*|grpc|rollout|shared_base|tinker)$')
  # third-party libraries TSan cannot see into (each entry says why); a report fails the run
  # (chordd and the test programs exit 66), halt_on_error=0 to see every report of a run
  export TSAN_OPTIONS="suppressions=$root/tests/integration/tsan.supp halt_on_error=0 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
  # libgomp is not built with TSan: its worker threads' handoffs would all be reported. With
  # one OpenMP thread (OMP_THREAD_LIMIT also caps the backend's num_threads clauses) every
  # parallel loop of the CPU backend runs on the calling thread; OpenBLAS likewise
  export OMP_NUM_THREADS=1 OMP_THREAD_LIMIT=1 OPENBLAS_NUM_THREADS=1
fi
scripts/install-deps.sh
scripts/setup-venv.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=$type >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
ctest --output-on-failure -j"$(nproc)" "${select[@]}" "$@"
