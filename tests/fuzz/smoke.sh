#!/bin/sh
# smoke.sh SOURCE_DIR FUZZ_BUILD_DIR SECONDS — what ctest's fuzz.smoke runs in the normal (gcc)
# build, so that CI fuzzes every target briefly: configures a separate clang build with
# -DCHORD_FUZZ=ON in FUZZ_BUILD_DIR (once; later runs rebuild incrementally), builds the fuzz
# targets and runs each for SECONDS (tests/fuzz/run.sh). Exits 77 (skipped) without clang or
# libFuzzer.
set -u
[ $# -eq 3 ] || { echo "usage: $0 SOURCE_DIR FUZZ_BUILD_DIR SECONDS" >&2; exit 2; }
src=$1 build=$2 seconds=$3
cc=${CHORD_FUZZ_CC:-clang}
command -v "$cc" >/dev/null 2>&1 || { echo "fuzz.smoke: no $cc, skipped"; exit 77; }
probe=$(mktemp -d "${TMPDIR:-/tmp}/chord-fuzz-probe.XXXXXX")
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
  rm -rf "$probe"
  echo "fuzz.smoke: $cc cannot link libFuzzer, skipped"
  exit 77
fi
rm -rf "$probe"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$src" -B "$build" -DCMAKE_C_COMPILER="$cc" -DCHORD_FUZZ=ON -DCHORD_CUDA=OFF \
        -DCHORD_NATIVE=OFF -DCMAKE_BUILD_TYPE=Debug >"$build.configure.log" 2>&1 ||
    { cat "$build.configure.log"; exit 1; }
fi
start=$(date +%s)
cmake --build "$build" --target fuzz -j"$(nproc)" >"$build.build.log" 2>&1 ||
  { tail -50 "$build.build.log"; exit 1; }
echo "fuzz.smoke: built in $(($(date +%s) - start)) s"
exec "$src/tests/fuzz/run.sh" "$build" "$seconds"
