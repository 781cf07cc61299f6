# tokenizer.cmake — bench_tokenizer, chord's side of tests/bench/bench_tokenizer.py (encode and
# decode MB/s against Hugging Face tokenizers). Not a ctest test: run the script by hand,
#   ${CHORD_PYTHON} tests/bench/bench_tokenizer.py build/tests/bench_tokenizer
add_executable(bench_tokenizer ${CMAKE_CURRENT_LIST_DIR}/bench_tokenizer.c)
target_link_libraries(bench_tokenizer PRIVATE chord_model chord_base)
