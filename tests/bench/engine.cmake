# engine.cmake — bench_engine, chord's side of tests/bench/bench_engine.py (training step and
# KV-cache decode tokens/s against PyTorch + transformers, GFLOP/s against the OpenBLAS sgemm roof).
# The benchmark is not a ctest test; run it by hand (docs/benchmarks.md, "## Engine"):
#   ${CHORD_PYTHON} tests/bench/bench_engine.py --bin build/tests/bench_engine
# bench.engine_smoke only keeps the tool and the script working: one step of a tiny model on both
# sides, checking that chord and PyTorch compute the same loss and greedy tokens (no timing).
add_executable(bench_engine ${CMAKE_CURRENT_LIST_DIR}/bench_engine.c)
target_link_libraries(bench_engine PRIVATE chord_model chord_kernels chord_base)

add_test(NAME bench.engine_smoke
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/bench_engine.py
                 --bin $<TARGET_FILE:bench_engine> --smoke)
set_tests_properties(bench.engine_smoke PROPERTIES LABELS bench TIMEOUT 300)

# bench_engine prefix: a group's prompt shared in the training pass (grpo.share_prompt) against
# the same groups unshared, in one run (docs/benchmarks.md, "## Shared prompts"):
#   build/tests/bench_engine prefix --config tests/bench/prefix_config.json \
#       --prompt-len 512 --group 8 --response-len 64 --groups 2 --threads 2
# bench.prefix_smoke keeps it working on a short prompt: the tool exits 1 when the shared pass's
# gradients differ from the unshared pass's by more than 1e-4 of the largest (no timing checked).
add_test(NAME bench.prefix_smoke
         COMMAND bench_engine prefix --config ${CMAKE_CURRENT_LIST_DIR}/prefix_config.json
                 --prompt-len 24 --group 4 --response-len 6 --groups 2 --steps 1 --warmup 0
                 --threads 1)
set_tests_properties(bench.prefix_smoke PROPERTIES LABELS bench TIMEOUT 120)
