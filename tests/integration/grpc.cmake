# gRPC integration tests: a real chordd (REST + gRPC on free loopback ports, temp data dir)
# driven by Python grpcio with stubs generated at test time from api/proto/chord.proto
# (grpcio-tools) and the standard grpcio-health-checking client. The watcher benchmark
# (100 WatchJob streams on one training job) is labelled bench.
set(chord_grpc_env "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
    "CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto")

add_test(NAME integration.grpc
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/grpc_test.py)
set_tests_properties(integration.grpc PROPERTIES ENVIRONMENT "${chord_grpc_env}"
                     LABELS integration TIMEOUT 600 RESOURCE_LOCK chordd_cpu)

add_test(NAME bench.grpc_watchers
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/grpc_watchers_bench.py)
set_tests_properties(bench.grpc_watchers PROPERTIES ENVIRONMENT "${chord_grpc_env}"
                     LABELS bench TIMEOUT 900 RESOURCE_LOCK chordd_cpu)
