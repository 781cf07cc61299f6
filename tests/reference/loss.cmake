# loss.cmake — reference tests of the CHORD loss, GRPO advantages and the μ / learning-rate
# schedules against independent PyTorch / transformers implementations (tests/reference/loss_*.py).
# loss_tool is the small C driver the Python side runs on its random inputs.
add_executable(loss_tool ${CMAKE_CURRENT_LIST_DIR}/loss_tool.c)
target_link_libraries(loss_tool PRIVATE chord_train chord_base PkgConfig::JANSSON ${MATH_LIB})

add_test(NAME reference.loss
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/loss_reference.py $<TARGET_FILE:loss_tool>)
add_test(NAME reference.loss_schedule
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/loss_schedule_reference.py
                 $<TARGET_FILE:loss_tool>)
set_tests_properties(reference.loss reference.loss_schedule PROPERTIES LABELS reference TIMEOUT 300)
