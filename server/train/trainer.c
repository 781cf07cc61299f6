/* trainer.c — placeholder for trainer_run (trainer.h) until the step loop lands. */
#include "server/train/trainer.h"

int trainer_run(const job_config *cfg, const trainer_env *env, const trainer_callbacks *cb,
                chord_err *err) {
    (void)cfg;
    (void)env;
    (void)cb;
    return chord_err_setc(err, CHORD_E_INTERNAL, "trainer: not implemented yet");
}
