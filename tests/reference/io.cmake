# Model I/O reference tests: files written by the safetensors / transformers libraries are read,
# converted and rewritten by chord through st_tool, and checked back in Python (tests/reference/
# io_*_test.py). Needs the venv (CHORD_PYTHON).
add_executable(st_tool ${CMAKE_CURRENT_LIST_DIR}/st_tool.c)
target_link_libraries(st_tool PRIVATE chord_model)

foreach(name safetensors config)
  add_test(NAME reference.io_${name}
           COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                   ${CMAKE_CURRENT_LIST_DIR}/io_${name}_test.py)
  set_tests_properties(reference.io_${name} PROPERTIES
    ENVIRONMENT "ST_TOOL=$<TARGET_FILE:st_tool>;TRANSFORMERS_VERBOSITY=error;HF_HUB_OFFLINE=1"
    LABELS reference TIMEOUT 300)
endforeach()
