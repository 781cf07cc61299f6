/* cmd_train.c — `chordd train JOB.json`: one training job in the foreground, for pipelines and
 * debugging. Prints a progress line per step on stderr, writes checkpoints under --out, and can
 * resume from the newest one. The same trainer (server/train/trainer.h) the service runs.
 *
 * Under mpirun every rank runs this command (docs/distributed.md): rank 0 alone writes the
 * metrics, checkpoints and progress lines; the others only compute their share of each step. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/ranks.h"
#include "kernels/ops.h"
#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "server/dist/dist.h"
#include "server/train/demo.h"
#include "server/train/jobconfig.h"
#include "server/train/trainer.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct run_ctx {
    const char *out;
    FILE *metrics;
    FILE *samples;
    int64_t keep;       /* newest checkpoints to keep (0 = all) */
    int64_t stop_after; /* stop (with a checkpoint) once this many steps are done; 0 = never */
    int64_t last_step;
    int quiet;
} run_ctx;

static int cb_on_step(void *user, int64_t step, const char *const *names, const double *values,
                      int n) {
    run_ctx *r = user;
    r->last_step = step;
    if (!r->metrics) return 0;
    fprintf(r->metrics, "{\"step\": %lld, \"metrics\": {", (long long)step);
    for (int i = 0; i < n; i++)
        fprintf(r->metrics, "%s\"%s\": %.17g", i ? ", " : "", names[i], values[i]);
    fprintf(r->metrics, "}}\n");
    return fflush(r->metrics) == 0 ? 0 : -1;
}

/* One JSON line per sample: {"step", "kind", "group", "prompt", "completion", "answer",
 * "reward", "reason", "tokens", "truncated"}. */
static int cb_on_samples(void *user, int64_t step, const trainer_sample *s, int n) {
    run_ctx *r = user;
    if (!r->samples) return 0;
    for (int i = 0; i < n; i++) {
        json_t *o = trainer_sample_json(&s[i]);
        int bad = !o || json_object_set_new(o, "step", json_integer(step)) ||
                  json_object_set_new(o, "kind", json_string(s[i].kind ? s[i].kind : "")) ||
                  json_object_set_new(o, "group", json_integer(s[i].group));
        char *line = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        if (!line) {
            LOG_ERROR("samples: out of memory");
            return -1;
        }
        fprintf(r->samples, "%s\n", line);
        free(line);
    }
    return fflush(r->samples) == 0 ? 0 : -1;
}

/* Removes committed checkpoints older than the newest `keep` (keep_checkpoints). */
static void prune_checkpoints(const char *out, int64_t keep) {
    if (keep <= 0) return;
    char parent[4096 + 16];
    snprintf(parent, sizeof parent, "%s/checkpoints", out);
    DIR *d = opendir(parent);
    if (!d) return;
    long long steps[1024];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 1024) {
        long long s;
        char tail;
        if (sscanf(e->d_name, "step_%lld%c", &s, &tail) == 1) steps[n++] = s;
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        int newer = 0;
        for (int j = 0; j < n; j++)
            newer += steps[j] > steps[i];
        if (newer < keep) continue;
        char dir[4096 + 64];
        chord_err err = {0};
        snprintf(dir, sizeof dir, "%s/step_%lld", parent, steps[i]);
        if (chord_rmtree(dir, &err) != 0) LOG_WARN("could not remove %s: %s", dir, err.msg);
    }
}

static int cb_checkpoint_begin(void *user, int64_t step, char *dir, size_t dirlen, chord_err *err) {
    run_ctx *r = user;
    if ((size_t)snprintf(dir, dirlen, "%s/checkpoints/step_%lld.tmp", r->out, (long long)step) >=
        dirlen)
        return chord_err_set(err, "checkpoint path too long");
    return chord_mkdirs(dir, err);
}

static int cb_checkpoint_commit(void *user, int64_t step, const char *dir, chord_err *err) {
    run_ctx *r = user;
    char final_dir[4096 + 64], parent[4096 + 16];
    snprintf(final_dir, sizeof final_dir, "%s/checkpoints/step_%lld", r->out, (long long)step);
    snprintf(parent, sizeof parent, "%s/checkpoints", r->out);
    /* a re-run of the same step after a resume: replace it (removed without a shell: --out
     * may hold any character) */
    if (chord_is_dir(final_dir) && chord_rmtree(final_dir, err) != 0)
        return chord_err_prefix(err, "cannot replace %s", final_dir);
    if (rename(dir, final_dir) != 0)
        return chord_err_setc(err, CHORD_E_IO, "rename %s: %s", dir, strerror(errno));
    if (chord_fsync_dir(parent, err) != 0) return -1;
    prune_checkpoints(r->out, r->keep);
    return 0;
}

static void cb_checkpoint_abort(void *user, int64_t step, const char *dir) {
    (void)user;
    (void)step;
    chord_err err = {0};
    if (chord_rmtree(dir, &err) != 0) LOG_WARN("could not remove %s: %s", dir, err.msg);
}

static int cb_should_stop(void *user, int *checkpoint_on_stop) {
    run_ctx *r = user;
    *checkpoint_on_stop = 1;
    if (g_stop) return 1;
    return r->stop_after > 0 && r->last_step >= r->stop_after;
}

static void cb_on_log(void *user, const char *line) {
    run_ctx *r = user;
    if (!r->quiet) LOG_INFO("%s", line);
}

/* The newest committed checkpoint under out/checkpoints (step_N, highest N). */
static int find_latest_checkpoint(const char *out, char *dir, size_t dirlen) {
    char parent[4096 + 16];
    snprintf(parent, sizeof parent, "%s/checkpoints", out);
    DIR *d = opendir(parent);
    if (!d) return 0;
    long long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long n;
        char tail;
        if (sscanf(e->d_name, "step_%lld%c", &n, &tail) == 1 && n > best) best = n;
    }
    closedir(d);
    if (best < 0) return 0;
    return (size_t)snprintf(dir, dirlen, "%s/step_%lld", parent, best) < dirlen;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: chordd train JOB.json [options]\n"
            "       chordd train --demo [options]\n\n"
            "Runs one CHORD training job in the foreground (the job document: docs/job.md).\n"
            "Data fields may be JSONL paths or \"builtin:arith\" (the built-in task).\n\n"
            "  --out DIR          output directory (checkpoints/, data/) [./chord-train/<name>]\n"
            "  --resume           continue from the newest checkpoint in --out\n"
            "  --device DEV       auto | cpu | cuda | cuda:N (overrides the job's device), or\n"
            "                     cuda:all: every GPU of the host, one rank each (mpirun)\n"
            "  --threads N        CPU threads (default: all cores; under mpirun the cores / the\n"
            "                     host's ranks)\n"
            "  --device-memory-mb N  refuse the job when the memory estimate (docs/job.md)\n"
            "                     exceeds N MiB on its device (default: the device's free memory)\n"
            "  --steps N          override the job's step count\n"
            "  --metrics-out F    append one JSON line of metrics per step to F\n"
            "  --samples-out F    append one JSON line per rollout / eval sample to F\n"
            "  --stop-after N     stop after step N with a checkpoint (as if interrupted)\n"
            "  --demo             the embedded default job (random-init model, built-in task)\n"
            "  --dist-timeout S   under mpirun: a rank that does not reach a collective within\n"
            "                     S seconds fails the job, named [600]\n"
            "  --zero 1           under mpirun: ZeRO-1, each rank keeps the AdamW moments of\n"
            "                     1/ranks of the parameters (same results, less memory) [0]\n"
            "  --bucket-mb X      under mpirun: gradients summed in buckets of X MiB, started\n"
            "                     during the backward; 0: one sum after it [25]\n"
            "  --quiet            no progress lines\n");
}

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"resume", no_argument, 0, 'r'},
                                         {"device", required_argument, 0, 'd'},
                                         {"threads", required_argument, 0, 't'},
                                         {"steps", required_argument, 0, 's'},
                                         {"metrics-out", required_argument, 0, 'm'},
                                         {"stop-after", required_argument, 0, 'S'},
                                         {"demo", no_argument, 0, 'D'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {"samples-out", required_argument, 0, 'P'},
                                         {"device-memory-mb", required_argument, 0, 'M'},
                                         {"dist-timeout", required_argument, 0, 'T'},
                                         {"zero", required_argument, 0, 'Z'},
                                         {"bucket-mb", required_argument, 0, 'B'},
                                         {0, 0, 0, 0}};
    const char *out = NULL, *device = NULL, *metrics_path = NULL, *samples_path = NULL;
    int resume = 0, demo = 0, quiet = 0;
    long threads = 0, steps_override = 0, stop_after = 0, memory_mb = 0, zero = 0;
    double dist_timeout = DIST_DEFAULT_TIMEOUT_S, bucket_mb = 25.0;
    int bucket_given = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'r':
            resume = 1;
            break;
        case 'd':
            device = optarg;
            break;
        case 't':
            if (cmd_arg_long("--threads", optarg, 0, 4096, &threads)) return 2;
            break;
        case 's':
            if (cmd_arg_long("--steps", optarg, 1, 1L << 40, &steps_override)) return 2;
            break;
        case 'M':
            if (cmd_arg_long("--device-memory-mb", optarg, 1, 1L << 30, &memory_mb)) return 2;
            break;
        case 'm':
            metrics_path = optarg;
            break;
        case 'P':
            samples_path = optarg;
            break;
        case 'S':
            if (cmd_arg_long("--stop-after", optarg, 1, 1L << 40, &stop_after)) return 2;
            break;
        case 'D':
            demo = 1;
            break;
        case 'T':
            if (cmd_arg_double("--dist-timeout", optarg, CMD_DIST_TIMEOUT_MIN, CMD_DIST_TIMEOUT_MAX,
                               &dist_timeout))
                return 2;
            break;
        case 'B':
            if (cmd_arg_double("--bucket-mb", optarg, 0.0, CMD_BUCKET_MB_MAX, &bucket_mb)) return 2;
            bucket_given = 1;
            break;
        case 'Z':
            if (cmd_arg_long("--zero", optarg, 0, 1, &zero)) return 2;
            break;
        case 'q':
            quiet = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!demo && optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    if (device && !strcmp(device, "cuda:all")) { /* every GPU of the host, one rank each */
        int gpus = ops_cuda_device_count();
        if (gpus == 0) {
            fprintf(stderr, "chordd train: --device cuda:all: no CUDA device on this host (or no "
                            "CUDA driver)\n");
            return 2;
        }
        if (!dist_launched_by_mpi() && gpus > 1)
            return cmd_relaunch_per_gpu("train", argc, argv, gpus);
        device = dist_launched_by_mpi() ? "cuda" : "cuda:0"; /* under mpirun: one per rank */
    }
    chord_err err = {0};
    dist_ctx *dist = NULL;
    if (dist_open(dist_timeout, &dist, &err) != 0) {
        fprintf(stderr, "chordd train: %s\n", err.msg);
        return 1;
    }
    const int rank = dist_rank(dist), ranks = dist_size(dist);
    const char *refused = NULL;
    if (zero && ranks == 1)
        refused = "--zero 1 shards the optimizer state over the ranks of an mpirun job; one "
                  "process has nothing to shard";
    else if (bucket_given && ranks == 1)
        refused = "--bucket-mb sizes the buckets of the gradients summed over the ranks of an "
                  "mpirun job; one process sums nothing";
    if (refused) {
        fprintf(stderr, "chordd train: %s (docs/distributed.md)\n", refused);
        dist_close(dist, &err);
        return 2;
    }
    /* rank 0 writes and reports; the others compute (and send rank 0 their samples) */
    const int want_samples = samples_path != NULL;
    if (rank != 0) {
        quiet = 1;
        metrics_path = NULL;
        samples_path = NULL;
    }
    job_config cfg;
    int rc;
    if (demo)
        rc = jobconfig_parse(trainer_demo_job_json(), &cfg, &err);
    else
        rc = jobconfig_load(argv[optind], &cfg, &err);
    if (rc != 0) {
        fprintf(stderr, "chordd train: %s\n", err.msg);
        dist_close(dist, &err);
        return 2;
    }
    if (steps_override > 0) cfg.steps = steps_override;
    char outbuf[4096];
    if (!out) {
        snprintf(outbuf, sizeof outbuf, "chord-train/%s", cfg.name && *cfg.name ? cfg.name : "job");
        out = outbuf;
    }
    int status = 1;
    ops_ctx *ops = NULL;
    FILE *metrics = NULL, *samples = NULL;
    char paths[3][4096 + 64];
    const char *refs[3] = {cfg.data_prompts, cfg.data_expert, cfg.data_eval};
    static const char *which[3] = {"prompts", "expert", "eval"};
    const char *resolved[3] = {NULL, NULL, NULL};
    char datadir[4096 + 16];
    snprintf(datadir, sizeof datadir, "%s/data", out);
    /* rank 0 makes the directory and the built-in data; the others then read them */
    if (rank == 0 && chord_mkdirs(out, &err) != 0) goto fail;
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) != (rank == 0)) {
            if (pass == 0 && dist_barrier(dist, "the built-in data", &err) != 0) goto fail;
            continue;
        }
        for (int i = 0; i < 3; i++) {
            if (!refs[i]) continue;
            if (trainer_data_is_builtin(refs[i])) {
                if (trainer_builtin_data(datadir, cfg.seed, which[i], paths[i], sizeof paths[i],
                                         &err) != 0)
                    goto fail;
                resolved[i] = paths[i];
            } else {
                resolved[i] = refs[i];
            }
        }
        if (pass == 0 && dist_barrier(dist, "the built-in data", &err) != 0) goto fail;
    }
    char errbuf[512], device_buf[32];
    const char *dev = device ? device : (cfg.device ? cfg.device : "auto");
    /* several ranks on GPUs: one GPU per rank, cuda:<the rank's index on its host> */
    int on_gpu = cmd_rank_gpu(dist, dev, device_buf, sizeof device_buf, &err);
    if (on_gpu < 0) goto fail;
    if (on_gpu) dev = device_buf;
    if (ranks > 1 && threads == 0) threads = cmd_rank_threads(dist); /* not each all the cores */
    ops = ops_open(dev, threads, errbuf, sizeof errbuf);
    if (!ops) {
        chord_err_set(&err, "%s", errbuf);
        goto fail;
    }
    if (ranks > 1 && ops->device_index >= 0 && dist_have_nccl() &&
        dist_attach_nccl(dist, ops, &err) != 0)
        goto fail;
    if (metrics_path && !(metrics = fopen(metrics_path, "a"))) {
        chord_err_set(&err, "%s: %s", metrics_path, strerror(errno));
        goto fail;
    }
    if (samples_path && !(samples = fopen(samples_path, "a"))) {
        chord_err_set(&err, "%s: %s", samples_path, strerror(errno));
        goto fail;
    }
    char resume_dir[8192];
    int have_resume = resume && find_latest_checkpoint(out, resume_dir, sizeof resume_dir);
    if (ranks > 1) { /* every rank resumes from rank 0's choice (--out on a shared file system) */
        char chosen[sizeof resume_dir];
        memset(chosen, 0, sizeof chosen);
        if (rank == 0 && have_resume) snprintf(chosen, sizeof chosen, "%s", resume_dir);
        if (dist_broadcast(dist, chosen, sizeof chosen, 0, "the checkpoint to resume", &err) != 0)
            goto fail;
        have_resume = chosen[0] != 0;
        if (have_resume) snprintf(resume_dir, sizeof resume_dir, "%s", chosen);
    }
    if (resume && !have_resume && rank == 0)
        LOG_INFO("no checkpoint in %s/checkpoints: starting fresh", out);
    if (ranks > 1 && rank == 0 && !quiet)
        LOG_INFO("data parallel: %d ranks (%s), %d on this host, %ld CPU thread%s per rank, "
                 "collective timeout %.0f s%s%s",
                 ranks, dist_kind(dist), dist_local_size(dist), threads, threads == 1 ? "" : "s",
                 dist_timeout, zero ? ", ZeRO-1" : "", bucket_mb > 0 ? ", gradient buckets" : "");
    trainer_env env = {.ops = ops,
                       .prompts_path = resolved[0],
                       .expert_path = resolved[1],
                       .eval_path = resolved[2],
                       .model_dir = cfg.model_path,
                       .tokenizer_dir = cfg.model_init_tokenizer,
                       .resume_dir = have_resume ? resume_dir : NULL,
                       .memory_limit = (int64_t)memory_mb << 20,
                       .dist = dist,
                       .zero = (int)zero,
                       .bucket_mb = bucket_mb};
    run_ctx r = {.out = out,
                 .metrics = metrics,
                 .samples = samples,
                 .keep = cfg.keep_checkpoints,
                 .stop_after = stop_after,
                 .quiet = quiet};
    trainer_callbacks cb = {.user = &r,
                            .on_step = cb_on_step,
                            .on_samples = want_samples ? cb_on_samples : NULL,
                            .checkpoint_begin = rank == 0 ? cb_checkpoint_begin : NULL,
                            .checkpoint_commit = rank == 0 ? cb_checkpoint_commit : NULL,
                            .checkpoint_abort = rank == 0 ? cb_checkpoint_abort : NULL,
                            .should_stop = cb_should_stop,
                            .on_log = cb_on_log};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    double t0 = chord_now();
    int tr = trainer_run(&cfg, &env, &cb, &err);
    if (tr == TRAINER_FAILED) goto fail;
    if (rank == 0)
        LOG_INFO("%s after step %lld in %.1fs; checkpoints in %s/checkpoints",
                 tr == TRAINER_DONE ? "done" : "stopped", (long long)r.last_step, chord_now() - t0,
                 out);
    status = 0;
    goto done;
fail:
    if (ranks > 1) { /* the other ranks would wait in their next collective: end them all */
        fprintf(stderr, "chordd train: rank %d of %d: %s\n", rank, ranks, err.msg);
        dist_abort(dist, 1);
    }
    fprintf(stderr, "chordd train: %s\n", err.msg);
done:
    if (metrics) fclose(metrics);
    if (samples) fclose(samples);
    ops_close(ops);
    jobconfig_free(&cfg);
    if (dist_close(dist, &err) != 0) {
        fprintf(stderr, "chordd train: rank %d: %s\n", rank, err.msg);
        if (ranks > 1) dist_abort(dist, 1);
        status = 1;
    }
    return status;
}
