# Service integration tests: a real chordd on a free loopback port and a temp data dir, driven
# over real HTTP from Python (${CHORD_PYTHON}: pytest, schemathesis).
set(chord_service_env "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1")

add_test(NAME integration.service
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/service_test.py)
add_test(NAME integration.service_resume
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/service_resume_test.py)
add_test(NAME integration.service_schemathesis
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/service_schemathesis.py
                 ${PROJECT_SOURCE_DIR}/api/proto/openapi.yaml)
set_tests_properties(integration.service integration.service_resume
                     integration.service_schemathesis
                     PROPERTIES ENVIRONMENT "${chord_service_env}" LABELS integration TIMEOUT 600
                                RESOURCE_LOCK chordd_cpu)

# A short load check (wrk on read endpoints while a job trains); skipped when wrk is missing.
add_test(NAME integration.service_load
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/service_load.py 3 64)
set_tests_properties(integration.service_load
                     PROPERTIES ENVIRONMENT "${chord_service_env}" LABELS "integration;load"
                                TIMEOUT 300 RESOURCE_LOCK chordd_cpu)
