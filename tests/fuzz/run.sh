#!/bin/sh
# run.sh BUILD_DIR SECONDS [TARGET...] — runs each fuzz target (all of tests/fuzz/fuzz_*.c when
# none is named) for SECONDS, one after another, from its committed seed corpus. Each runs in
# libFuzzer's default in-process mode: one process, one thread, one core (-jobs/-workers would
# fork a child whose output goes to ./fuzz-N.log instead).
# New inputs go to BUILD_DIR/fuzz-corpus/<target> (never into the repository); a crash, leak or
# hang leaves its input in BUILD_DIR/fuzz-artifacts/<target>/ and makes the script exit 1.
# FUZZ_RUNS caps the executions per target (ctest sets none; see tests/fuzz/README).
set -u
[ $# -ge 2 ] || { echo "usage: $0 BUILD_DIR SECONDS [TARGET...]" >&2; exit 2; }
build=$1 seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -eq 0 ]; then
  set -- $(cd "$here" && ls fuzz_*.c | sed 's/\.c$//')
fi
status=0
for target in "$@"; do
  bin=$build/tests/$target
  [ -x "$bin" ] || { echo "$target: $bin not built (cmake -DCHORD_FUZZ=ON, make fuzz)" >&2; exit 2; }
  corpus=$build/fuzz-corpus/$target artifacts=$build/fuzz-artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  dict=
  [ -f "$here/$target.dict" ] && dict=-dict=$here/$target.dict
  echo "== $target: ${seconds}s"
  # -rss_limit_mb: the tokenizer and safetensors targets legitimately hold a few hundred MB
  # under ASan; -timeout: one input taking over 10 s is a hang.
  if ! "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} $dict \
        -artifact_prefix="$artifacts/" "$corpus" "$here/corpus/$target" \
        > "$build/fuzz-$target.log" 2>&1; then
    echo "$target: FAILED (log $build/fuzz-$target.log, inputs in $artifacts)" >&2
    tail -40 "$build/fuzz-$target.log" >&2
    status=1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$build/fuzz-$target.log"
  echo "corpus: $(ls "$corpus" | wc -l) new + $(ls "$here/corpus/$target" | wc -l) seed inputs"
done
exit $status
