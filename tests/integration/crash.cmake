# The crash test: chordd SIGKILLed at random instants (training steps, checkpoint writes, dataset
# uploads, pending rollouts, its own start-up) and restarted on the same data directory; after
# each kill nothing committed is lost, duplicated or half-written, and every job ends with the
# weights of an uninterrupted run (tests/integration/crash_test.py). CI runs 8 kills (about
# 5 s); the full run (--kills 60) is run by hand, its figures are in docs/robustness.md.
add_test(NAME integration.crash
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/crash_test.py --kills 8)
set_tests_properties(integration.crash PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                     LABELS "integration;crash" TIMEOUT 300 RESOURCE_LOCK chordd_cpu)
