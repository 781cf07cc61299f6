# tinker-cookbook's recipes (PyPI tinker-cookbook 0.6.1, unmodified) against a real chordd: the
# supervised chat_sl recipe and the math_rl arithmetic recipe (docs/tinker.md "The cookbook").
# The RL part needs SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh); without it pytest skips
# that test and ctest reports the whole as skipped rather than passed.
add_test(NAME integration.tinker_cookbook
         COMMAND ${CHORD_PYTHON} -m pytest -q -s -p no:cacheprovider -rs
                 ${CMAKE_CURRENT_LIST_DIR}/tinker_cookbook_test.py)
set_tests_properties(integration.tinker_cookbook PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;CHORD_TEST_DATA=${CHORD_TEST_DATA}"
                     SKIP_REGULAR_EXPRESSION "[0-9]+ skipped"
                     LABELS "integration;slow" TIMEOUT 900 RESOURCE_LOCK chordd_cpu)
