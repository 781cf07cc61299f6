# Malformed input (issue 18): a real chordd (REST + gRPC) fed >= 1,000 generated malformed REST
# requests over every route and >= 1,000 malformed gRPC messages to every method; no 5xx, no
# INTERNAL / UNKNOWN, still healthy, stored data unchanged. Seeded (CHORD_MALFORMED_SEED).
add_test(NAME integration.malformed
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/malformed_test.py)
set_tests_properties(integration.malformed PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto"
                     LABELS integration TIMEOUT 600 RESOURCE_LOCK chordd_cpu)
