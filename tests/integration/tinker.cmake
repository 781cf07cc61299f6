# The Tinker-compatible API (docs/tinker.md) driven by the official client, PyPI tinker.
add_test(NAME integration.tinker
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/tinker_test.py)
set_tests_properties(integration.tinker
                     PROPERTIES ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto"
                                LABELS integration TIMEOUT 300 RESOURCE_LOCK chordd_cpu)
