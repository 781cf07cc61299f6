# train.cmake — `chordd train` (an sft job, end to end) against the same training written in
# PyTorch / transformers, step for step (train_sft_reference.py).
add_test(NAME reference.train_sft
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/train_sft_reference.py
                 --chordd $<TARGET_FILE:chordd>)
set_tests_properties(reference.train_sft PROPERTIES LABELS reference TIMEOUT 300
                     ENVIRONMENT "OMP_WAIT_POLICY=passive")
