# tokenizer.cmake — chord's tokenizer and chat templates against Hugging Face `tokenizers` and
# `transformers` (tests/reference/tok_*.py), driving `chordd tokenize`. Needs the venv
# (CHORD_PYTHON) and the real tokenizer files in CHORD_TEST_DATA/tokenizers.
add_test(NAME reference.tokenizer
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/tok_reference.py $<TARGET_FILE:chordd>
                 ${CHORD_TEST_DATA})
add_test(NAME reference.chat_template
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/tok_chat.py $<TARGET_FILE:chordd>
                 ${CHORD_TEST_DATA})
# the components beyond the byte-level families (Digits, Whitespace, Punctuation, Metaspace, the
# Llama-2 / Mistral files, byte_fallback, ...), on tokenizers that `tokenizers` trains in the test
add_test(NAME reference.tokenizer_components
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/tok_components.py $<TARGET_FILE:chordd>
                 ${CHORD_TEST_DATA})
set_tests_properties(reference.tokenizer reference.chat_template reference.tokenizer_components
                     PROPERTIES
  ENVIRONMENT "TOKENIZERS_PARALLELISM=false;RAYON_NUM_THREADS=1;TRANSFORMERS_VERBOSITY=error;HF_HUB_OFFLINE=1"
  LABELS reference TIMEOUT 600)
