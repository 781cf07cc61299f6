# The service's shutdown with requests in flight (a C program on the service API: client
# threads keep calling while svc_shutdown runs; see the file's first comment). Meant for the
# Sanitize and TSan builds, where a use-after-free or data race fails it; it runs in every
# build.
add_executable(service_shutdown_test ${CMAKE_CURRENT_LIST_DIR}/service_shutdown_test.c)
target_link_libraries(service_shutdown_test PRIVATE chord_all Threads::Threads)
add_test(NAME integration.service_shutdown COMMAND service_shutdown_test 10)
set_tests_properties(integration.service_shutdown PROPERTIES
                     ENVIRONMENT "OMP_WAIT_POLICY=passive" LABELS integration TIMEOUT 600
                     RESOURCE_LOCK chordd_cpu)

# The same over both transports: SIGTERM to a real chordd with REST and gRPC requests and event
# streams in flight (tests/integration/shutdown_inflight_test.py).
add_test(NAME integration.service_sigterm
         COMMAND ${CHORD_PYTHON} -m pytest -q -s -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/shutdown_inflight_test.py)
set_tests_properties(integration.service_sigterm PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto"
                     LABELS integration TIMEOUT 600 RESOURCE_LOCK chordd_cpu)
