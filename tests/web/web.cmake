# The web dashboard (clients/web, docs/dashboard.md) in headless Debian chromium driven by
# selenium (chromium-driver) against a real chordd: upload, a job's live curves, samples,
# cancel, the playground, tokens. Python from ${CHORD_PYTHON} (pytest, selenium).
add_test(NAME integration.web
         COMMAND ${CHORD_PYTHON} -m pytest -q -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/web_test.py)
set_tests_properties(integration.web
                     PROPERTIES ENVIRONMENT "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1"
                                LABELS integration TIMEOUT 300 RESOURCE_LOCK chordd_cpu)
