/* schedule.h — the per-step coefficients of a job: μ (the SFT weight) and the learning rate.
 *
 * μ follows ALGORITHM.md exactly (step s counts from 1); the learning rate follows transformers'
 * get_{constant,linear,cosine}_schedule_with_warmup (cosine with min_lr_rate as in
 * get_cosine_with_min_lr_schedule_with_warmup). Pure functions: no state, nothing allocated. */
#ifndef CHORD_TRAIN_SCHEDULE_H
#define CHORD_TRAIN_SCHEDULE_H

#include <stdint.h>

#include "server/train/jobconfig.h"

/* ALGORITHM.md's μ schedule at step s >= 1:
 *   s < W          : peak · s / W
 *   W <= s < W + D : valley + (peak − valley) · ½ · (1 + cos(π (s − W) / D))
 *   s >= W + D     : valley            (W = D = 0: valley at every step) */
double sched_mu_cosine(int64_t step, int64_t warmup_steps, int64_t decay_steps, double peak,
                       double valley);

/* μ of a job at step s >= 1 for its preset: sft ≡ 1, grpo ≡ 0, sft_then_grpo 1 for
 * s <= sft_steps then 0, the schedule above, or adaptive max(0, tau − mean_reward) clamped to
 * [0, 1]. mean_reward (the step's on-policy rewards) is read only by the adaptive rule. */
double sched_mu(const job_config *cfg, int64_t step, double mean_reward);

/* The multiplier of the base learning rate after `completed` optimizer steps, as transformers'
 * lr_lambda(current_step = completed): the s-th step (s from 1) uses completed = s − 1, as a
 * Hugging Face Trainer does. min_lr_ratio floors the linear and cosine decays:
 * factor = min_lr_ratio + (1 − min_lr_ratio) · decay. */
double sched_lr_factor(job_lr_schedule schedule, int64_t completed, int64_t warmup_steps,
                       int64_t total_steps, double min_lr_ratio);

/* The learning rate of a job's step s >= 1: optimizer.lr · sched_lr_factor(s − 1, ...). */
double sched_lr(const job_config *cfg, int64_t step);

#endif
