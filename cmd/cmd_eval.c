/* cmd_eval.c — `chordd eval --model DIR --data EVAL.jsonl`: accuracy (avg@k) and pass@k of a
 * model directory or a checkpoint on an eval set, on its own (no training). The same evaluation
 * the trainer runs at its eval steps (trainer_evaluate in server/train/trainer.h): the model's
 * chat template, its stop tokens, k samples per prompt through the KV cache, a verifier from a
 * job's "reward" object. Prints one JSON object on stdout; --samples-out keeps every sample.
 *
 * Not here: any scoring or sampling logic (server/train), training. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "kernels/ops.h"
#include "server/base/log.h"
#include "server/train/bootstrap.h"
#include "server/train/reward.h"
#include "server/train/trainer.h"
#include "server/train/trainer_data.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: chordd eval --model DIR --data EVAL.jsonl [options]\n\n"
            "Samples k responses per prompt of EVAL.jsonl ({\"prompt\"|\"messages\", \"answer\"} "
            "per line)\nwith the model in DIR (a model directory or a checkpoint) and scores "
            "them. Prints\n{\"prompts\", \"k\", \"accuracy\" (= avg@k), \"pass_at_k\", "
            "\"errors\", \"seconds\"} as JSON.\n\n"
            "  --k K                 samples per prompt [1]\n"
            "  --temperature T       0 = greedy [0 when k = 1, else 0.6]\n"
            "  --max-new-tokens N    [min(1024, max_position_embeddings / 2)]\n"
            "  --reward JSON         the verifier, as a job's \"reward\" object "
            "[{\"type\":\"math_boxed\"}]\n"
            "  --samples-out FILE    write one JSON line per sample\n"
            "  --max-prompts N       only the first N records [all]\n"
            "  --seed S              sampling seed [0]\n"
            "  --tokenizer DIR       tokenizer directory [DIR's, else the embedded default]\n"
            "  --device DEV          auto | cpu | cuda | cuda:N [auto]\n"
            "  --threads N           CPU threads [all cores]\n");
}

typedef struct eval_out {
    FILE *f;
    int failed;
} eval_out;

static void on_sample(void *user, const trainer_sample *s) {
    eval_out *o = user;
    if (!o->f || o->failed) return;
    json_t *j = trainer_sample_json(s);
    if (j && json_object_set_new(j, "index", json_integer(s->group))) {
        json_decref(j);
        j = NULL;
    }
    char *line = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(j);
    if (!line || fprintf(o->f, "%s\n", line) < 0) o->failed = 1;
    free(line);
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"data", required_argument, 0, 'd'},
                                         {"k", required_argument, 0, 'k'},
                                         {"temperature", required_argument, 0, 'T'},
                                         {"max-new-tokens", required_argument, 0, 'n'},
                                         {"reward", required_argument, 0, 'r'},
                                         {"samples-out", required_argument, 0, 'o'},
                                         {"max-prompts", required_argument, 0, 'p'},
                                         {"seed", required_argument, 0, 's'},
                                         {"tokenizer", required_argument, 0, 'z'},
                                         {"device", required_argument, 0, 'D'},
                                         {"threads", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model_dir = NULL, *data = NULL, *reward_text = NULL, *samples_path = NULL,
               *tok_dir = NULL, *device = "auto";
    double k = 1, temperature = -1, max_new = 0, max_prompts = 0, seed = 0, threads = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm':
            model_dir = optarg;
            break;
        case 'd':
            data = optarg;
            break;
        case 'k':
            bad = cmd_arg_double("--k", optarg, 1, 1024, &k);
            break;
        case 'T':
            bad = cmd_arg_double("--temperature", optarg, 0, 100, &temperature);
            break;
        case 'n':
            bad = cmd_arg_double("--max-new-tokens", optarg, 1, 1 << 20, &max_new);
            break;
        case 'r':
            reward_text = optarg;
            break;
        case 'o':
            samples_path = optarg;
            break;
        case 'p':
            bad = cmd_arg_double("--max-prompts", optarg, 0, 1e15, &max_prompts);
            break;
        case 's':
            bad = cmd_arg_double("--seed", optarg, 0, 9007199254740992.0, &seed);
            break;
        case 'z':
            tok_dir = optarg;
            break;
        case 'D':
            device = optarg;
            break;
        case 't':
            bad = cmd_arg_double("--threads", optarg, 0, 4096, &threads);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) return 2;
    }
    if (!model_dir || !data || optind != argc) {
        fprintf(stderr, "chordd eval: --model and --data are required\n");
        usage(stderr);
        return 2;
    }
    if (k != (int)k || max_new != (long)max_new) {
        fprintf(stderr, "chordd eval: --k and --max-new-tokens take integers\n");
        return 2;
    }
    if (temperature < 0) temperature = k > 1 ? 0.6 : 0.0;

    int status = 1;
    chord_err err = {0};
    ops_ctx *ops = NULL;
    bootstrap_model boot;
    memset(&boot, 0, sizeof boot);
    reward_verifier *verifier = NULL;
    trainer_dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.fd = -1;
    eval_out out = {0};
    json_t *reward_cfg = NULL;

    if (reward_text) {
        json_error_t je;
        reward_cfg = json_loads(reward_text, 0, &je);
        if (!reward_cfg) {
            chord_err_set(&err, "--reward: %s (column %d)", je.text, je.column);
            goto fail;
        }
    } else {
        reward_cfg = json_pack("{s:s}", "type", "math_boxed");
    }
    if (reward_verifier_new(reward_cfg, &verifier, &err) != 0) goto fail;
    char errbuf[512];
    ops = ops_open(device, (int)threads, errbuf, sizeof errbuf);
    if (!ops) {
        chord_err_set(&err, "%s", errbuf);
        goto fail;
    }
    bootstrap_spec spec = {.dir = model_dir, .tokenizer_dir = tok_dir};
    if (bootstrap_open(&spec, ops, &boot, &err) != 0) {
        chord_err_prefix(&err, "--model %s", model_dir);
        goto fail;
    }
    if (boot.default_tokenizer)
        LOG_INFO("%s has no tokenizer.json: using the embedded default", model_dir);
    model *m = boot.m;
    if (trainer_dataset_open(&ds, data, DS_PROMPTS, 0, &err) != 0) {
        chord_err_prefix(&err, "--data");
        goto fail;
    }
    if (max_new == 0) {
        int mp = m->cfg.max_position_embeddings > 0 ? m->cfg.max_position_embeddings : 2048;
        max_new = mp / 2 < 1024 ? mp / 2 : 1024;
    }
    if (samples_path && !(out.f = fopen(samples_path, "w"))) {
        chord_err_set(&err, "%s: %s", samples_path, strerror(errno));
        goto fail;
    }
    trainer_eval_params ep = {.k = (int)k,
                              .temperature = temperature,
                              .max_new_tokens = (int)max_new,
                              .max_prompts = (int64_t)max_prompts,
                              .stop_ids = boot.stop_ids,
                              .n_stop = boot.n_stop,
                              .seed = (uint64_t)seed,
                              .stream = 0,
                              .on_sample = samples_path ? on_sample : NULL,
                              .user = &out};
    trainer_eval_result r;
    if (trainer_evaluate(m, boot.tok, &boot.tpl, &ds, verifier, &ep, &r, &err) != 0) goto fail;
    if (out.failed || (out.f && fflush(out.f) != 0)) {
        chord_err_set(&err, "%s: write failed", samples_path);
        goto fail;
    }
    printf("{\"prompts\": %lld, \"k\": %d, \"accuracy\": %.6f, \"avg_at_k\": %.6f, "
           "\"pass_at_k\": %.6f, \"errors\": %lld, \"temperature\": %g, \"max_new_tokens\": %d, "
           "\"seconds\": %.3f}\n",
           (long long)r.prompts, r.k, r.accuracy, r.accuracy, r.pass_at_k, (long long)r.errors,
           temperature, (int)max_new, r.seconds);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "chordd eval: %s\n", err.msg);
done:
    if (out.f) fclose(out.f);
    trainer_dataset_close(&ds);
    reward_verifier_free(verifier);
    json_decref(reward_cfg);
    bootstrap_close(&boot);
    ops_close(ops);
    return status;
}
