/* rng.h — SplitMix64 (Steele, Lea and Flood, 2014), the one mixing function behind chord's seeded
 * streams: the random init's xoshiro seeding (model_io.c), the datasets' epoch permutations
 * (trainer_data.c), the rollouts' uniforms (train/rollout.c) and the built-in task (task.c).
 * Their outputs are part of reproducibility (a resumed job replays the same draws), so the
 * constants never change. Header-only: a few instructions, inlined where used. */
#ifndef CHORD_BASE_RNG_H
#define CHORD_BASE_RNG_H

#include <stdint.h>

/* SplitMix64's output for state x, i.e. the value a generator at state x returns next */
static inline uint64_t chord_splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* the stateful form: returns the next value and advances *state */
static inline uint64_t chord_splitmix64_next(uint64_t *state) {
    const uint64_t r = chord_splitmix64(*state);
    *state += 0x9E3779B97F4A7C15ull;
    return r;
}

#endif
