/* schedule.c — μ and learning-rate schedules (see schedule.h). */
#include "server/train/schedule.h"

#include <math.h>

double sched_mu_cosine(int64_t step, int64_t warmup_steps, int64_t decay_steps, double peak,
                       double valley) {
    if (step < warmup_steps) return peak * (double)step / (double)warmup_steps;
    if (step < warmup_steps + decay_steps) {
        double progress = (double)(step - warmup_steps) / (double)decay_steps;
        return valley + (peak - valley) * 0.5 * (1.0 + cos(M_PI * progress));
    }
    return valley;
}

double sched_mu(const job_config *cfg, int64_t step, double mean_reward) {
    const job_mu *mu = &cfg->mu;
    switch (mu->kind) {
    case JOB_MU_SFT:
        return 1.0;
    case JOB_MU_GRPO:
        return 0.0;
    case JOB_MU_SFT_THEN_GRPO:
        return step <= cfg->sft_steps ? 1.0 : 0.0;
    case JOB_MU_ADAPTIVE: {
        double m = mu->tau - mean_reward;
        if (!(m > 0.0)) return 0.0; /* also a NaN mean reward (no rollouts) */
        return m < 1.0 ? m : 1.0;
    }
    case JOB_MU_SCHEDULE:
    default:
        return sched_mu_cosine(step, mu->warmup_steps, mu->decay_steps, mu->peak, mu->valley);
    }
}

double sched_lr_factor(job_lr_schedule schedule, int64_t completed, int64_t warmup_steps,
                       int64_t total_steps, double min_lr_ratio) {
    if (completed < warmup_steps)
        return (double)completed / (double)(warmup_steps > 1 ? warmup_steps : 1);
    if (schedule == JOB_LR_CONSTANT) return 1.0;
    int64_t span = total_steps - warmup_steps;
    double progress = (double)(completed - warmup_steps) / (double)(span > 1 ? span : 1);
    double decay;
    if (schedule == JOB_LR_LINEAR) {
        decay = (double)(total_steps - completed) / (double)(span > 1 ? span : 1);
    } else {
        decay = 0.5 * (1.0 + cos(M_PI * progress)); /* num_cycles = 0.5 */
    }
    if (decay < 0.0) decay = 0.0;
    double factor = min_lr_ratio + (1.0 - min_lr_ratio) * decay;
    return factor > 0.0 ? factor : 0.0;
}

double sched_lr(const job_config *cfg, int64_t step) {
    const job_optimizer *o = &cfg->optimizer;
    return o->lr *
           sched_lr_factor(o->schedule, step - 1, o->warmup_steps, cfg->steps, o->min_lr_ratio);
}
