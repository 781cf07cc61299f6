# model.cmake — the transformer engine against Hugging Face transformers (PyTorch fp32):
# chord_refdump (a test tool over server/model/model.h) + model_reference.py.
add_executable(chord_refdump ${CMAKE_CURRENT_LIST_DIR}/chord_refdump.c)
target_link_libraries(chord_refdump PRIVATE chord_all)

add_test(NAME reference.model
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/model_reference.py
                 --refdump $<TARGET_FILE:chord_refdump> --chordd $<TARGET_FILE:chordd>)
set_tests_properties(reference.model PROPERTIES LABELS reference TIMEOUT 600)
