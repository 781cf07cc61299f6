# gpu.cmake — tests/gpu: gpu_check runs every op of the CUDA backend against the CPU backend,
# a full ~100M-parameter training step on both, and GPU benchmarks (tests/gpu/run.sh, docs/cuda.md).
# Built whenever the CUDA backend is; the ctest entry gpu.check runs the checks only (no
# benchmarks) and reports SKIP (exit 77) where ops_cuda_device_count() == 0, as on CI.
if(CHORD_HAVE_CUDA AND TARGET chord_kernels_cuda)
  add_executable(gpu_check ${CMAKE_CURRENT_LIST_DIR}/gpu_check.c)
  target_link_libraries(gpu_check PRIVATE chord_all CUDA::cudart)
  add_test(NAME gpu.check COMMAND gpu_check --no-bench --out ${CMAKE_CURRENT_BINARY_DIR})
  # ASan needs protect_shadow_gap=0 for the CUDA runtime to map device memory
  set_tests_properties(gpu.check PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 1200
                       ENVIRONMENT "ASAN_OPTIONS=protect_shadow_gap=0:detect_leaks=0")
endif()

# The CUDA kernels' logic on a machine without a GPU: tests/gpu/emu/run.sh translates
# kernels/cuda/*.cu for a CPU emulator and runs gpu_check's op and small-model checks against the
# CPU backend (docs/cuda.md says what this can and cannot show). ~2 minutes; needs g++ + python3.
find_program(CHORD_GXX g++)
find_program(CHORD_PY3 python3)
# (Not in the Sanitize build: the emulator links the build's libraries without the sanitizer
# runtimes; it has its own ASan mode, CUDA_EMU_ASAN=1.)
if(CHORD_HAVE_CUDA AND TARGET chord_kernels_cuda AND CHORD_GXX AND CHORD_PY3
   AND NOT CMAKE_BUILD_TYPE STREQUAL "Sanitize")
  add_test(NAME gpu.emulator
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/emu/run.sh ${CMAKE_BINARY_DIR} --no-step --no-bench)
  set_tests_properties(gpu.emulator PROPERTIES LABELS "gpu;emulator" TIMEOUT 900)
endif()
