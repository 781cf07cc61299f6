# Data parallelism (tests/integration/mpi_test.py, docs/distributed.md): `mpirun -np 2 chordd
# train` against one process on the same jobs (SFT, CHORD with a resume, GRPO, LoRA): the same
# metrics and final weights to fp32 round-off; a killed and a hung rank end the job naming it.
# Skipped when mpirun is absent (scripts/install-deps.sh installs openmpi-bin). About 20 s.
# integration.mpi_serve (mpi_serve_test.py): `mpirun -np 2 chordd serve` — a job over REST on two
# ranks equals one process (CHORD, LoRA, stopped and resumed), pause/cancel/SIGTERM reach both
# ranks, a hung rank fails the job naming it, a killed one's job resumes. About 30 s.
# Not in the TSan build: Open MPI's own threads are not instrumented.
if(CMAKE_BUILD_TYPE STREQUAL "TSan")
  return()
endif()
add_test(NAME integration.mpi
         COMMAND ${CHORD_PYTHON} -m pytest -q -rs -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/mpi_test.py)
# Open MPI keeps what MPI_Init allocates until exit: LeakSanitizer would report it at every exit.
set(chord_mpi_test_env "CHORDD=$<TARGET_FILE:chordd>;PYTHONDONTWRITEBYTECODE=1")
if(CMAKE_BUILD_TYPE STREQUAL "Sanitize")
  list(APPEND chord_mpi_test_env "ASAN_OPTIONS=detect_leaks=0")
endif()
add_test(NAME integration.mpi_serve
         COMMAND ${CHORD_PYTHON} -m pytest -q -rs -p no:cacheprovider
                 ${CMAKE_CURRENT_LIST_DIR}/mpi_serve_test.py)
set_tests_properties(integration.mpi integration.mpi_serve PROPERTIES
                     ENVIRONMENT "${chord_mpi_test_env}"
                     SKIP_REGULAR_EXPRESSION "SKIPPED.*mpirun not found"
                     LABELS integration TIMEOUT 240 RESOURCE_LOCK chordd_cpu)
