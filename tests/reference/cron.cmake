# cron.cmake — the cron parser of schedules (server/jobs/cron.h) against croniter: random
# expressions (lists, ranges, steps, both day fields, the optional seconds field) and start
# times, the next times compared one by one; malformed expressions refused naming the field.
add_executable(cron_tool ${CMAKE_CURRENT_LIST_DIR}/cron_tool.c)
target_link_libraries(cron_tool PRIVATE chord_service chord_base)
add_test(NAME reference.cron
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/cron_reference.py $<TARGET_FILE:cron_tool>)
set_tests_properties(reference.cron PROPERTIES LABELS reference TIMEOUT 300)
