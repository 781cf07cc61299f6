# libFuzzer targets (tests/fuzz/README): built only with -DCHORD_FUZZ=ON and clang. Each
# tests/fuzz/fuzz_*.c is one executable; ctest's fuzz.<target> runs it briefly from its seed
# corpus (tests/fuzz/corpus/<target>) through tests/fuzz/run.sh.
if(NOT CHORD_FUZZ)
  # The normal build: fuzz.smoke builds the targets in a separate clang build (build/fuzz) and
  # runs each for CHORD_FUZZ_SMOKE_SECONDS, so CI fuzzes them; skipped (77) without clang. Not
  # in the Sanitize and TSan builds (the fuzz build has its own sanitizers).
  if(CMAKE_BUILD_TYPE MATCHES "^(Sanitize|TSan)$")
    return()
  endif()
  set(CHORD_FUZZ_SMOKE_SECONDS 10 CACHE STRING "seconds ctest's fuzz.smoke runs each fuzz target")
  add_test(NAME fuzz.smoke
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/smoke.sh ${PROJECT_SOURCE_DIR}
                   ${CMAKE_BINARY_DIR}/fuzz ${CHORD_FUZZ_SMOKE_SECONDS})
  set_tests_properties(fuzz.smoke PROPERTIES LABELS "fuzz" TIMEOUT 900 SKIP_RETURN_CODE 77)
  return()
endif()
file(GLOB fuzz_targets CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/fuzz_*.c)
set(CHORD_FUZZ_CI_SECONDS 20 CACHE STRING "seconds each fuzz.<target> ctest entry runs")
add_custom_target(fuzz)
foreach(src IN LISTS fuzz_targets)
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE chord_all)
  if(name STREQUAL "fuzz_http")
    target_link_libraries(${name} PRIVATE chord_api_http)
  elseif(name STREQUAL "fuzz_grpc")
    target_link_libraries(${name} PRIVATE chord_api_grpc)
  elseif(name STREQUAL "fuzz_tinker")
    target_link_libraries(${name} PRIVATE chord_tinker_pb)
  endif()
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  add_dependencies(fuzz ${name})
  add_test(NAME fuzz.${name}
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/run.sh ${CMAKE_BINARY_DIR} ${CHORD_FUZZ_CI_SECONDS}
                   ${name})
  set_tests_properties(fuzz.${name} PROPERTIES LABELS fuzz TIMEOUT 120)
endforeach()
