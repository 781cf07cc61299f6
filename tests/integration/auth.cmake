# Authentication and TLS: a real chordd with --auth-token-file (and, later in the file,
# --tls-cert / --tls-key with certificates made by the openssl CLI) driven by curl and grpcio.
add_test(NAME integration.auth
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/auth_test.py)
set_tests_properties(integration.auth PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto"
                     LABELS integration TIMEOUT 300 RESOURCE_LOCK chordd_cpu)
