# The server's limits (docs/operations.md "Limits"): each set low on a real chordd, refused with
# 413 / 429 / RESOURCE_EXHAUSTED naming the flag, and the server still serving.
add_test(NAME integration.limits
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/limits_test.py)
set_tests_properties(integration.limits PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto"
                     LABELS integration TIMEOUT 300 RESOURCE_LOCK chordd_cpu)
