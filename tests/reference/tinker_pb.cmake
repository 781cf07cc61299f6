# Reference test of the Tinker protobuf codec (api/tinker/tinker_pb.c) against the real client
# (PyPI tinker, pinned in requirements.txt): requests encoded by the client's own request_conv are
# decoded by chord (tinker_pb_dump decode), and chord's results are decoded by the client's
# response_conv into its types.
add_executable(tinker_pb_dump ${CMAKE_CURRENT_LIST_DIR}/tinker_pb_dump.c)
target_link_libraries(tinker_pb_dump PRIVATE chord_tinker_pb PkgConfig::JANSSON ${MATH_LIB})

add_test(NAME reference.tinker_pb
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/tinker_pb_reference.py
                 $<TARGET_FILE:tinker_pb_dump>)
set_tests_properties(reference.tinker_pb PROPERTIES LABELS reference TIMEOUT 300)
