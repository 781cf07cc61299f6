# chordctl (clients/cli) against a real chordd: every command, exit statuses, --json, `jobs
# watch` in a pseudo-terminal (docs/cli.md). Python from ${CHORD_PYTHON} (pytest).
add_test(NAME integration.chordctl
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/chordctl_test.py)
set_tests_properties(integration.chordctl
                     PROPERTIES ENVIRONMENT
                                "CHORDD=$<TARGET_FILE:chordd>;CHORDCTL=$<TARGET_FILE:chordctl>;PYTHONDONTWRITEBYTECODE=1"
                                LABELS integration TIMEOUT 600 RESOURCE_LOCK chordd_cpu)
