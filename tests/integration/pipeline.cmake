# Retraining pipelines (docs/pipelines.md): chaining from checkpoints, datasets by name, models
# from a checkpoint, idempotency keys over REST and gRPC, on a real chordd.
add_test(NAME integration.pipeline
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/pipeline_test.py)
set_tests_properties(integration.pipeline
                     PROPERTIES ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_PROTO_DIR=${PROJECT_SOURCE_DIR}/api/proto"
                                LABELS integration TIMEOUT 400 RESOURCE_LOCK chordd_cpu)
