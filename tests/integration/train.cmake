# Trainer tests: `chordd train` / `chordd eval` driven as a user runs them (pytest, the real
# binary), and the environment of the trainer's unit tests.
add_test(NAME integration.train_cli
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/train_cli_test.py)
set_tests_properties(integration.train_cli PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1;OMP_WAIT_POLICY=passive"
                     LABELS "integration;train" TIMEOUT 300)
# OpenMP's default spin-wait burns the shared cores between the tiny ops of these models.
set_tests_properties(unit.test_trainer unit.test_rollout PROPERTIES
                     ENVIRONMENT "OMP_WAIT_POLICY=passive" LABELS "unit;train")
# The embedded default job run to the end (`chordd train --demo`, a few minutes on two cores):
# >= 90 % on held-out problems, re-scored in Python. Not in the Sanitize and TSan builds (same
# code as the short trainer tests, ~3x slower there).
if(NOT CMAKE_BUILD_TYPE MATCHES "^(Sanitize|TSan)$")
  add_test(NAME integration.train_demo
           COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                   ${CMAKE_CURRENT_LIST_DIR}/train_demo_test.py)
  set_tests_properties(integration.train_demo PROPERTIES
                       ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                       LABELS "integration;train;slow" TIMEOUT 1800)
endif()
