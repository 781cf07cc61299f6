# The paper's comparison (tests/experiments/paper.py, docs/experiments.md) at its CI budget:
# every row runs through a real chordd over REST and the table, JSON and plots are checked.
add_test(NAME integration.experiments_paper
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/paper_test.py)
set_tests_properties(integration.experiments_paper
                     PROPERTIES ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                                LABELS "integration;slow" TIMEOUT 600 RESOURCE_LOCK chordd_cpu)
