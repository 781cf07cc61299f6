# POST /v1/rollouts on a real chordd, log-probs checked against transformers.
add_test(NAME integration.rollout
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/rollout_test.py)
set_tests_properties(integration.rollout
                     PROPERTIES ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                                LABELS integration TIMEOUT 300 RESOURCE_LOCK chordd_cpu)

# Two LoRA jobs and their rollouts at once on one copy of a base (chordd serve --slots 2).
add_test(NAME integration.shared_base
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/shared_base_test.py)
set_tests_properties(integration.shared_base
                     PROPERTIES ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                                LABELS integration TIMEOUT 600 RESOURCE_LOCK chordd_cpu)
