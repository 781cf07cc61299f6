# Embedding files into the binary at build time, as llama.cpp embeds its web UI: the source files
# stay the committed truth and the C arrays are generated into the build tree, never committed.
# Pure CMake (file(READ ... HEX)), so the build needs nothing beyond scripts/deps-debian.txt.
#
# Included from CMake, it defines
#   chord_embed_files(TARGET tgt HEADER name.h FILES symbol path [symbol path]...)
# which generates <build dir>/embedded/name.h before tgt compiles, regenerates it when a file
# changes, and puts <build dir> on tgt's include path: `#include "embedded/name.h"`. The header
# defines, per file, `static const unsigned char symbol[]`: the file's bytes followed by one NUL
# (so it is also a C string); the file's length is `sizeof symbol - 1`.
#
# Run as a script (cmake -P), it writes that header:
#   cmake -DCHORD_EMBED_HEADER=out.h "-DCHORD_EMBED_FILES=symbol;path;..." -P ChordEmbed.cmake

if(CMAKE_SCRIPT_MODE_FILE AND DEFINED CHORD_EMBED_HEADER)
  set(text "/* ${CHORD_EMBED_HEADER}\n * GENERATED at build time by cmake/ChordEmbed.cmake: do not edit, edit the files. */\n")
  list(LENGTH CHORD_EMBED_FILES count)
  math(EXPR last "${count} - 1")
  string(REPEAT "0x..," 16 sixteen)
  foreach(i RANGE 0 ${last} 2)
    math(EXPR j "${i} + 1")
    list(GET CHORD_EMBED_FILES ${i} symbol)
    list(GET CHORD_EMBED_FILES ${j} path)
    file(READ "${path}" hex HEX)
    file(SIZE "${path}" size)
    string(REGEX REPLACE "(..)" "0x\\1," bytes "${hex}")
    string(REGEX REPLACE "(${sixteen})" "\\1\n    " bytes "${bytes}")
    string(APPEND text "\n/* ${path}: ${size} bytes, then a NUL */\n"
           "static const unsigned char ${symbol}[] = {\n    ${bytes}0x00};\n")
  endforeach()
  file(WRITE "${CHORD_EMBED_HEADER}" "${text}")
  return()
endif()

set(CHORD_EMBED_SCRIPT ${CMAKE_CURRENT_LIST_FILE})

function(chord_embed_files)
  cmake_parse_arguments(A "" "TARGET;HEADER" "FILES" ${ARGN})
  list(LENGTH A_FILES count)
  math(EXPR odd "${count} % 2")
  if(count EQUAL 0 OR odd)
    message(FATAL_ERROR "chord_embed_files: FILES takes symbol/path pairs")
  endif()
  set(paths "")
  foreach(i RANGE 1 ${count} 2)
    if(i LESS count)
      list(GET A_FILES ${i} path)
      list(APPEND paths ${path})
    endif()
  endforeach()
  set(out ${CMAKE_CURRENT_BINARY_DIR}/embedded/${A_HEADER})
  string(REPLACE ";" "$<SEMICOLON>" files_arg "${A_FILES}")
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/embedded
    COMMAND ${CMAKE_COMMAND} -DCHORD_EMBED_HEADER=${out} -DCHORD_EMBED_FILES=${files_arg}
            -P ${CHORD_EMBED_SCRIPT}
    DEPENDS ${paths} ${CHORD_EMBED_SCRIPT}
    COMMENT "embedding ${A_HEADER}" VERBATIM)
  target_sources(${A_TARGET} PRIVATE ${out})
  target_include_directories(${A_TARGET} PRIVATE ${CMAKE_CURRENT_BINARY_DIR})
endfunction()
