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
