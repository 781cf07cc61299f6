# tinker_loss.cmake — the Tinker losses (server/tinker/tinker_loss.h) against PyTorch autograd
# (tests/reference/tinker_loss_reference.py); tinker_loss_tool is the C driver it runs.
add_executable(tinker_loss_tool ${CMAKE_CURRENT_LIST_DIR}/tinker_loss_tool.c)
target_link_libraries(tinker_loss_tool PRIVATE chord_tinker chord_train chord_base
                      PkgConfig::JANSSON ${MATH_LIB})

add_test(NAME reference.tinker_loss
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/tinker_loss_reference.py
                 $<TARGET_FILE:tinker_loss_tool>)
set_tests_properties(reference.tinker_loss PROPERTIES LABELS reference TIMEOUT 300)
