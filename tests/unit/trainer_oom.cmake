# test_trainer_oom: the link wraps the allocator (realloc, free) and the model calls that frame
# a training step's micro-batches, to fail one growth inside the step and count what leaks.
target_link_options(test_trainer_oom PRIVATE
  "LINKER:--wrap=realloc,--wrap=free,--wrap=model_zero_grad,--wrap=model_forward,--wrap=model_adamw_step")
set_tests_properties(unit.test_trainer_oom PROPERTIES
                     ENVIRONMENT "OMP_WAIT_POLICY=passive" LABELS "unit;train")
