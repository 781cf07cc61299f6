# ops.cmake — the CPU ops of kernels/ops.h against PyTorch fp32 (tests/reference/ops_reference.py:
# SDPA attention, autograd backwards, torch.optim.AdamW), driven through ops_tool.
add_executable(ops_tool ${CMAKE_CURRENT_LIST_DIR}/ops_tool.c)
target_link_libraries(ops_tool PRIVATE chord_kernels)

add_test(NAME reference.ops
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/ops_reference.py $<TARGET_FILE:ops_tool>)
# ops_tool exits without freeing its inputs
set_tests_properties(reference.ops PROPERTIES LABELS reference TIMEOUT 300
                     ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
