# The Docker image files (docker/, .dockerignore) without a Docker engine: hadolint from the venv
# (tests/reference/requirements.txt), compose.yaml's GPU reservation, volume, healthcheck and
# token, and the Dockerfiles' build steps against scripts/check-fresh.sh; then broken copies of
# them must be refused (tests/docker/docker_lint.py; docs/docker.md "Checks"). By hand, as root:
# tests/docker/emulate-runtime.sh replays a runtime stage in a chroot and probes the server.
add_test(NAME lint.docker
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/docker_lint.py
                 --hadolint ${CHORD_VENV}/bin/hadolint --root ${PROJECT_SOURCE_DIR})
set_tests_properties(lint.docker PROPERTIES
                     ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1" LABELS lint TIMEOUT 120)
