# Faults injected into a running chordd (tests/integration/faults_test.py, docs/robustness.md
# "Faults"): a full disk during a checkpoint, a training step and an upload (a size-limited
# tmpfs); read-only checkpoints/ and datasets/ (read-only bind mounts) and a read-only data
# directory at start; chord.db locked by another process; a webhook verifier that hangs or
# answers garbage; clients that disconnect mid-SSE, mid-upload and mid-download. The mounts need
# root with CAP_SYS_ADMIN: without it those tests are skipped and -rs prints why. About 20 s.
add_test(NAME integration.faults
         COMMAND ${CHORD_PYTHON} -m pytest -q -rs -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/faults_test.py)
set_tests_properties(integration.faults PROPERTIES
                     ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                     LABELS integration TIMEOUT 180 RESOURCE_LOCK chordd_cpu)
