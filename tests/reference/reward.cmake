# Reference tests of the verifiers (server/train/reward*): the math_boxed verifier against
# Hugging Face math-verify, and the webhook verifier against a loopback Python HTTP server.
# Both drive chord through reward_tool (JSON lines in, JSON lines out).
add_executable(reward_tool ${CMAKE_CURRENT_LIST_DIR}/reward_tool.c)
target_link_libraries(reward_tool PRIVATE chord_all)

add_test(NAME reference.reward_math_verify
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/reward_math_verify.py
                 $<TARGET_FILE:reward_tool>)
set_tests_properties(reference.reward_math_verify PROPERTIES LABELS reference TIMEOUT 300)

add_test(NAME reference.reward_webhook
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/reward_webhook.py
                 $<TARGET_FILE:reward_tool>)
set_tests_properties(reference.reward_webhook PROPERTIES LABELS reference TIMEOUT 120)
