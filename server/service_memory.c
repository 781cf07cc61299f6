/* service_memory.c — refusing at submission what would not fit a device's memory: the budget of
 * each device the service runs (its free memory as ops.h reports it, the host's available RAM
 * on the CPU, within the operator's --device-memory-mb) against the estimate of
 * server/train/mem_estimate.h, the same one the trainer checks again when the job starts.
 *
 * A job queued now runs after the job a device runs now, so that job's estimate counts as free
 * for it; a rollout runs between that job's steps, so it does not. Work that may run on several
 * devices ("auto") is refused only when it fits none of them.
 *
 * Not here: the estimate itself (server/train), the devices' queries (kernels/ops.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "server/base/buf.h"
#include "server/base/json_field.h"
#include "server/jobs/bases.h"
#include "server/service_internal.h"
#include "server/train/mem_estimate.h"

static void device_budget(svc *s, const char *device, int for_job, mem_budget *b) {
    size_t free_b = 0, total_b = 0;
    int known;
    if (!strncmp(device, "cuda:", 5))
        known = ops_cuda_mem_info((int)strtol(device + 5, NULL, 10), &free_b, &total_b) == 0;
    else
        known = ops_mem_info(NULL, &free_b, &total_b) == 0; /* no context: the host's */
    double held = (double)jobs_device_reserved(s->jobs, device);
    double free_bytes = known && free_b > 0 ? (double)free_b + (for_job ? held : 0.0) : -1.0;
    double limit = 0;
    if (s->memory_limit > 0) {
        limit = (double)s->memory_limit - (for_job ? 0.0 : held);
        if (limit < 1) limit = 1; /* a limit all taken still refuses (0 would mean none) */
    }
    mem_budget_make(b, device, free_bytes, limit);
}

/* job_device NULL: any device. */
static int check_devices(svc *s, const char *job_device, int for_job, const mem_estimate *e,
                         chord_err *err) {
    mem_budget best;
    int have = 0;
    for (int i = 0; i < s->n_devices; i++) {
        if (job_device && !jobs_device_accepts(s->devices[i], job_device)) continue;
        mem_budget b;
        device_budget(s, s->devices[i], for_job, &b);
        if (b.bytes < 0 || mem_estimate_need(e, &b) <= b.bytes) return 0;
        if (!have || b.bytes > best.bytes) {
            best = b;
            have = 1;
        }
    }
    return have ? mem_estimate_check(e, &best, err) : 0;
}

/* the prompt-token bound of dataset `id` (its file, read line by line); MEM_PROMPT_TOKENS when
 * it cannot be looked up or read */
static double dataset_prompt_tokens(store *st, const char *id) {
    if (!id) return MEM_PROMPT_TOKENS;
    chord_err err = {0};
    store_dataset d;
    memset(&d, 0, sizeof d);
    double t = MEM_PROMPT_TOKENS;
    if (store_dataset_get(st, id, &d, &err) == 0) {
        t = mem_prompt_tokens_of_file(d.path);
        store_dataset_free(&d);
    }
    return t;
}

int svc_check_job_fits(svc *s, store *st, const job_config *cfg, const model_config *mc,
                       chord_err *err) {
    mem_estimate e;
    mem_estimate_job(mc, cfg, dataset_prompt_tokens(st, cfg->data_prompts),
                     dataset_prompt_tokens(st, cfg->data_expert),
                     dataset_prompt_tokens(st, cfg->data_eval), &e);
    return check_devices(s, cfg->device, 1, &e, err);
}

int svc_check_model_fits(svc *s, const model_config *mc, chord_err *err) {
    mem_estimate e;
    mem_estimate_weights(mc, &e);
    return check_devices(s, NULL, 1, &e, err);
}

/* The longest prompt of the request in tokens, bounded by its text's bytes. */
static double prompt_tokens_bound(const json_t *req) {
    double longest = 0;
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(req, "prompts"), i, p) {
        double t = mem_prompt_tokens_bound((double)json_string_length(p), 1);
        if (t > longest) longest = t;
    }
    json_t *conv;
    json_array_foreach(json_object_get(req, "messages"), i, conv) {
        double bytes = 0;
        size_t j;
        json_t *m;
        json_array_foreach(conv, j, m) bytes +=
            (double)json_string_length(json_object_get(m, "content"));
        double t = mem_prompt_tokens_bound(bytes, (int)json_array_size(conv));
        if (t > longest) longest = t;
    }
    return longest;
}

/* A config the request names that cannot be read is bad input naming the field. */
static int config_error(chord_err *err, const char *field) {
    if (err && err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
    return chord_err_prefix(err, "%s", field);
}

int svc_check_rollout_fits(svc *s, const json_t *req, chord_err *err) {
    const char *ckpt = chord_json_string_or(req, "checkpoint_dir", NULL);
    const char *dir = chord_json_string_or(req, "model_dir", NULL);
    const json_t *init = json_object_get(req, "model_init");
    model_config mc;
    if (ckpt) {
        if (model_config_load(ckpt, &mc, err)) return config_error(err, "checkpoint");
    } else if (dir) {
        if (model_config_load(dir, &mc, err)) return config_error(err, "model");
    } else if (json_is_object(init)) {
        if (model_config_from_json(init, &mc, err)) return config_error(err, "model");
    } else {
        return 0;
    }
    const json_t *prompts = json_object_get(req, "prompts");
    if (!json_is_array(prompts)) prompts = json_object_get(req, "messages");
    mem_estimate e;
    mem_estimate_rollout(&mc, (double)json_array_size(prompts), chord_json_number_or(req, "n", 1),
                         prompt_tokens_bound(req), chord_json_number_or(req, "max_tokens", 256), 1,
                         &e);
    return check_devices(s, NULL, 0, &e, err);
}

/* ---- the shared bases, for the health answer and Prometheus ---- */

json_t *svc_shared_bases_json(svc *s) {
    json_t *arr = json_array();
    jobs_base_info *items = NULL;
    size_t n = 0;
    chord_err err = {0};
    if (!arr || !s->jobs || jobs_bases_list(jobs_pool_bases(s->jobs), &items, &n, &err)) return arr;
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:i}", "device", items[i].device,
                                             "model", items[i].key, "bytes",
                                             (json_int_t)items[i].bytes, "users", items[i].users));
    jobs_bases_list_free(items, n);
    return arr;
}

/* A label value: the key with backslashes, quotes and newlines escaped, cut at 200 bytes. */
static void label_value(const char *in, char *out, size_t outlen) {
    size_t o = 0;
    for (size_t i = 0; in[i] && i < 200 && o + 3 < outlen; i++) {
        char c = in[i];
        if (c == '\\' || c == '"') out[o++] = '\\', out[o++] = c;
        else if (c == '\n') out[o++] = '\\', out[o++] = 'n';
        else out[o++] = c;
    }
    out[o] = '\0';
}

char *svc_shared_bases_prometheus(svc *s) {
    jobs_base_info *items = NULL;
    size_t n = 0;
    chord_err err = {0};
    if (!s->jobs || jobs_bases_list(jobs_pool_bases(s->jobs), &items, &n, &err)) return NULL;
    chord_buf b = {0};
    int bad = chord_buf_printf(&b,
                               "# HELP chord_shared_base_bytes Weights of a base model held once "
                               "per device and shared by every job and rollout using it.\n"
                               "# TYPE chord_shared_base_bytes gauge\n") != 0;
    char lab[512];
    for (size_t i = 0; i < n && !bad; i++) {
        label_value(items[i].key, lab, sizeof lab);
        bad = chord_buf_printf(&b, "chord_shared_base_bytes{device=\"%s\",model=\"%s\"} %lld\n",
                               items[i].device, lab, (long long)items[i].bytes) != 0;
    }
    bad = bad || chord_buf_printf(&b, "# HELP chord_shared_base_users Jobs and rollouts using a "
                                      "shared base now.\n"
                                      "# TYPE chord_shared_base_users gauge\n") != 0;
    for (size_t i = 0; i < n && !bad; i++) {
        label_value(items[i].key, lab, sizeof lab);
        bad = chord_buf_printf(&b, "chord_shared_base_users{device=\"%s\",model=\"%s\"} %d\n",
                               items[i].device, lab, items[i].users) != 0;
    }
    jobs_bases_list_free(items, n);
    if (bad) {
        chord_buf_free(&b);
        return NULL;
    }
    return chord_buf_take(&b);
}
