/* mem_estimate.c — the device memory estimate of a job, a rollout request or a model's weights,
 * and the refusal message (mem_estimate.h has the formulas). Pure arithmetic: nothing here
 * allocates on a device or reads a file. */
#include "server/train/mem_estimate.h"

#include "kernels/ops.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define GIB 1073741824.0
#define MIB 1048576.0
#define LOGITS_CHUNK_BYTES (256.0 * MIB) /* model.c's logits_budget_bytes */

static double dmin(double a, double b) {
    return a < b ? a : b;
}
static double dmax(double a, double b) {
    return a > b ? a : b;
}

/* model_config_num_params in doubles (tests/unit/test_mem_estimate.c checks they agree). */
static double params_of(const model_config *c) {
    double V = c->vocab_size, C = c->hidden_size, Hq = c->num_attention_heads;
    double Hkv = c->num_key_value_heads, D = c->head_dim, I = c->intermediate_size;
    double layer = C * Hq * D + 2 * C * Hkv * D + Hq * D * C + 3 * C * I + 2 * C;
    if (c->attention_bias) layer += Hq * D + 2 * Hkv * D;
    if (c->o_proj_bias) layer += C;
    if (c->qk_norm) layer += 2 * D;
    if (c->mlp_bias) layer += 2 * I + C;
    double total = V * C + (double)c->num_hidden_layers * layer + C;
    if (!c->tie_word_embeddings) total += V * C;
    return total;
}

/* Floats per row one layer keeps in the forward pass (run_layout: ln1, res_mid, ln2, qkv, the
 * q/k norm blocks, att, lse, gate/up, two rstd). */
static double layer_floats(const model_config *c) {
    double C = c->hidden_size, Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    double D = c->head_dim, I = c->intermediate_size;
    double f = 3 * C + (Hq + 2 * Hkv) * D + Hq * D + 2 * I + Hq + 2;
    if (c->qk_norm) f += (Hq + Hkv) * D + Hq + Hkv;
    return f;
}

/* The run state outside the layers, per row: h (I), xf (C), rstdf and 9 per-row scalars. */
static double tail_floats(const model_config *c) {
    return (double)c->intermediate_size + c->hidden_size + 10;
}

static double positions_cap(const model_config *c, double t) {
    return c->max_position_embeddings > 0 ? dmin(t, c->max_position_embeddings) : t;
}

/* One sampling engine: S prompts of T_p tokens, G samples each, new_tokens more. Adds its run
 * state and KV cache to e; returns their sum. */
static double add_sampling(const model_config *c, double S, double G, double T_p, double new_tokens,
                           mem_estimate *e, double *slots, double *positions) {
    double T_prompt = positions_cap(c, T_p);
    double T = positions_cap(c, T_p + new_tokens);
    double rows = dmax(S * T_prompt, S * G);
    double run = 4.0 * (rows * ((double)c->hidden_size + layer_floats(c) + tail_floats(c)) +
                        S * G * (double)c->vocab_size);
    double kv =
        4.0 * 2.0 * c->num_hidden_layers * (S * G) * T * c->num_key_value_heads * c->head_dim;
    e->sampling += run;
    e->kv_cache += kv;
    *slots = S * G;
    *positions = T;
    return run + kv;
}

static void finish(mem_estimate *e) {
    e->total =
        e->weights + e->reference + e->optimizer + e->activations + e->sampling + e->kv_cache;
}

void mem_estimate_weights(const model_config *mc, mem_estimate *out) {
    memset(out, 0, sizeof *out);
    out->kind = MEM_KIND_WEIGHTS;
    out->params = params_of(mc);
    out->weights = 4.0 * out->params;
    out->weights16 = 2.0 * out->params;
    finish(out);
}

void mem_estimate_zero1(mem_estimate *e, int ranks) {
    if (ranks <= 1 || e->optimizer <= 0) return;
    const double trainable = e->lora_params > 0 ? e->lora_params : e->params;
    e->optimizer = 4.0 * trainable + 8.0 * ceil(trainable / ranks);
    e->zero_ranks = ranks;
    finish(e);
}

/* The rows of the largest micro-batch: micro_batch_tokens, but never more than a step's
 * sequences hold together (the rollouts' B G of at most T_p + new tokens, the expert records' E
 * of at most T_e), and at least the longest of them (a longer sequence trains alone). */
static double micro_batch_rows(const model_config *mc, const job_config *cfg, double prompt_tokens,
                               double expert_tokens) {
    double budget = cfg->micro_batch_tokens > 0 ? (double)cfg->micro_batch_tokens : 8192.0;
    double rows = 0, longest = 0;
    if (jobconfig_uses_rollouts(cfg->algorithm)) {
        double T = positions_cap(mc, prompt_tokens + (double)cfg->sampling.max_new_tokens);
        rows += (double)cfg->grpo.prompts_per_step * (double)cfg->grpo.group_size * T;
        longest = dmax(longest, T);
    }
    if (jobconfig_uses_expert(cfg->algorithm)) {
        double T = positions_cap(mc, expert_tokens);
        rows += (double)cfg->expert_per_step * T;
        longest = dmax(longest, T);
    }
    return rows > 0 ? dmin(rows, dmax(budget, longest)) : budget;
}

void mem_estimate_job(const model_config *mc, const job_config *cfg, double prompt_tokens,
                      double expert_tokens, double eval_prompt_tokens, mem_estimate *out) {
    mem_estimate_weights(mc, out);
    out->kind = MEM_KIND_JOB;
    out->optimizer = 12.0 * out->params;
    /* the KL's reference policy: a second copy of the weights, none without a KL */
    out->reference = cfg->grpo.kl_coef > 0.0 ? out->weights : 0.0;
    if (out->reference > 0) out->weights16 *= 2.0;
    if (cfg->lora.rank > 0) { /* model_lora.c: A (r, in) and B (out, r) per layer and target */
        const double C = mc->hidden_size, I = mc->intermediate_size;
        const double HqD = (double)mc->num_attention_heads * mc->head_dim,
                     HkvD = (double)mc->num_key_value_heads * mc->head_dim;
        const double in[] = {C, C, C, HqD, C, C, I}, outd[] = {HqD, HkvD, HkvD, C, I, I, C};
        double per_layer = 0.0;
        for (int k = 0; k < 7; k++)
            if (cfg->lora.targets & (1u << k))
                per_layer += (double)cfg->lora.rank * (in[k] + outd[k]);
        out->lora_params = mc->num_hidden_layers * per_layer;
        if (cfg->lora.train_embeddings) /* copies of embed_tokens and an untied lm_head */
            out->lora_params += (mc->tie_word_embeddings ? 1.0 : 2.0) * (double)mc->vocab_size *
                                (double)mc->hidden_size;
        out->full_optimizer = out->optimizer;
        out->weights += 4.0 * out->lora_params;
        out->optimizer = 12.0 * out->lora_params;
        out->reference = 0.0; /* the base under the adapter */
        /* run_layout's LoRA buffers: x A^T of every target per layer kept, and the scratch
         * (the widest projection's output, and r) */
        double widest = dmax(dmax(C, I), HqD), r = (double)cfg->lora.rank;
        double N = micro_batch_rows(mc, cfg, prompt_tokens, expert_tokens);
        out->lora_activations = 4.0 * N * (mc->num_hidden_layers * 7.0 * r + widest + r);
        if (cfg->lora.dropout > 0.0) out->lora_activations += 4.0 * N * 2.0 * widest; /* masks */
    }
    /* training: a micro-batch of N rows, every layer kept, backward scratch, logits chunks */
    double L = mc->num_hidden_layers, C = mc->hidden_size, V = mc->vocab_size;
    double Hq = mc->num_attention_heads, Hkv = mc->num_key_value_heads, D = mc->head_dim;
    double I = mc->intermediate_size;
    double N = micro_batch_rows(mc, cfg, prompt_tokens, expert_tokens);
    double fwd = (L + 1) * C + L * layer_floats(mc) + tail_floats(mc);
    double bwd = 2 + 2 * C + (Hq + 2 * Hkv) * D + Hq * D + 3 * I;
    if (mc->qk_norm) bwd += (Hq + Hkv) * D;
    double chunk = dmin(N, dmax(1.0, (double)(long long)(LOGITS_CHUNK_BYTES / (4.0 * V))));
    out->tokens = N;
    out->activations = 4.0 * (N * (fwd + bwd) + 2.0 * chunk * V) + out->lora_activations;
    /* bf16 activations (model.h precision; not with an adapter): ln1, ln2 and gate/up of every
     * layer in 2 bytes instead of 4, plus one float32 (N, C) norm output the layers share */
    if (cfg->lora.rank <= 0) out->act16_saving = N * (L * (2.0 * C + 2.0 * I) * 2.0 - 4.0 * C);
    /* the reference's log-probs run the same micro-batches through its own model (model_forward:
     * its run state is a training one, kept beside the policy's), counted here in float32 */
    if (out->reference > 0) out->reference += out->activations;
    /* grpo.share_prompt: attention's expanded layout (model.c's x* scratch, one for every layer):
     * a shared prompt row appears once per response, so at most G N rows of q, k, v and the
     * attention output with their gradients */
    if (cfg->grpo.share_prompt && jobconfig_uses_rollouts(cfg->algorithm)) {
        double X = N * (double)(cfg->grpo.group_size > 1 ? cfg->grpo.group_size : 1);
        double x_floats = 2 * (Hq + 2 * Hkv) * D + 2 * Hq * D + Hq + 4;
        if (mc->qk_norm) x_floats += 2 * (Hq + Hkv) * D;
        out->activations += 4.0 * X * x_floats;
    }
    /* the training rollouts' engine, and the eval engine beside it on eval steps */
    if (jobconfig_uses_rollouts(cfg->algorithm))
        add_sampling(mc, (double)cfg->grpo.prompts_per_step, (double)cfg->grpo.group_size,
                     prompt_tokens, (double)cfg->sampling.max_new_tokens, out, &out->slots,
                     &out->positions);
    if (cfg->data_eval && cfg->eval.every > 0) {
        double k = cfg->eval.k > 0 ? (double)cfg->eval.k : 1.0;
        double new_tokens = cfg->eval.max_new_tokens > 0 ? (double)cfg->eval.max_new_tokens
                                                         : (double)cfg->sampling.max_new_tokens;
        out->eval = add_sampling(mc, MEM_EVAL_CHUNK, k, eval_prompt_tokens, new_tokens, out,
                                 &out->eval_slots, &out->eval_positions);
    }
    finish(out);
}

void mem_estimate_rollout(const model_config *mc, double prompts, double n, double prompt_tokens,
                          double new_tokens, int weights_loaded, mem_estimate *out) {
    mem_estimate_weights(mc, out);
    out->kind = MEM_KIND_ROLLOUT;
    if (!weights_loaded) out->weights = out->weights16 = 0;
    add_sampling(mc, prompts, n > 0 ? n : 1, prompt_tokens, new_tokens, out, &out->slots,
                 &out->positions);
    finish(out);
}

double mem_prompt_tokens_bound(double text_bytes, int n_messages) {
    return text_bytes + MEM_TEMPLATE_TOKENS + (double)MEM_MESSAGE_TOKENS * n_messages;
}

double mem_prompt_tokens_of_file(const char *path) {
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return MEM_PROMPT_TOKENS;
    /* per line: its bytes and its "role" keys (messages), without holding the line */
    static const char key[] = "\"role\"";
    double best = 0, bytes = 0;
    int roles = 0, matched = 0, c;
    while ((c = getc(f)) != EOF) {
        if (c == '\n') {
            best = dmax(best, mem_prompt_tokens_bound(bytes, roles > 0 ? roles : 1));
            bytes = 0, roles = 0, matched = 0;
            continue;
        }
        bytes += 1;
        matched = c == key[matched] ? matched + 1 : (c == key[0] ? 1 : 0);
        if (matched == (int)sizeof key - 1) {
            roles++;
            matched = 0;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return MEM_PROMPT_TOKENS;
    return dmax(best, mem_prompt_tokens_bound(bytes, roles > 0 ? roles : 1));
}

void mem_budget_make(mem_budget *b, const char *device, double free_bytes, double limit_bytes) {
    memset(b, 0, sizeof *b);
    snprintf(b->device, sizeof b->device, "%s", device ? device : "the device");
    b->bytes = free_bytes;
    if (limit_bytes > 0 && (free_bytes < 0 || limit_bytes < free_bytes)) {
        b->bytes = limit_bytes;
        b->limited = 1;
    }
    b->bf16_weights = ops_device_bf16_weights(device);
}

double mem_estimate_need(const mem_estimate *e, const mem_budget *b) {
    return e->total + (b && b->bf16_weights ? e->weights16 - e->act16_saving : 0.0);
}

/* the training activations on b's device (bf16 ones where its models keep bf16 weights) */
static double activations_on(const mem_estimate *e, const mem_budget *b) {
    return e->activations - (b && b->bf16_weights ? e->act16_saving : 0.0);
}

/* "1.25 GiB", "310.0 MiB", "12.0 KiB", "100 bytes" */
static const char *size_text(double bytes, char *buf, size_t len) {
    if (bytes >= 0.995 * GIB)
        snprintf(buf, len, "%.2f GiB", bytes / GIB);
    else if (bytes >= MIB)
        snprintf(buf, len, "%.1f MiB", bytes / MIB);
    else if (bytes >= 1024)
        snprintf(buf, len, "%.1f KiB", bytes / 1024.0);
    else
        snprintf(buf, len, "%.0f bytes", bytes);
    return buf;
}

typedef struct advice {
    double share;
    const char *fields;
} advice;

int mem_estimate_check(const mem_estimate *e, const mem_budget *b, chord_err *err) {
    const double need = mem_estimate_need(e, b);
    if (!b || b->bytes < 0 || need <= b->bytes) return 0;
    char total[32], have[32], w[32], r[32], o[32], a[32], s[32], k[32];
    char msg[CHORD_ERR_MSG];
    static const char *const what[] = {"the job needs", "the rollout needs",
                                       "the model's weights need"};
    int off = snprintf(msg, sizeof msg, "%s about %s on %s but %s %s", what[e->kind],
                       size_text(need, total, sizeof total), b->device,
                       b->limited ? "the device memory limit (--device-memory-mb) allows" : "only",
                       size_text(b->bytes, have, sizeof have));
#define ADD(...)                                                                                   \
    do {                                                                                           \
        if (off >= 0 && (size_t)off < sizeof msg)                                                  \
            off += snprintf(msg + off, sizeof msg - (size_t)off, __VA_ARGS__);                     \
    } while (0)
    if (!b->limited) ADD(" are free");
    if (e->kind == MEM_KIND_WEIGHTS) {
        ADD(": %.0f parameters in float32%s", e->params,
            b->bf16_weights ? " and their matrices in bf16" : "");
    } else {
        ADD(": weights %s", size_text(e->weights, w, sizeof w));
        if (b->bf16_weights && e->weights16 > 0) {
            char w16[32];
            ADD(" + their bf16 copy %s", size_text(e->weights16, w16, sizeof w16));
        }
        if (e->reference > 0)
            ADD(" + the KL's reference (weights and activations) %s",
                size_text(e->reference, r, sizeof r));
        if (e->optimizer > 0 && e->lora_params > 0) {
            char fo[32];
            ADD(" + the LoRA adapter's gradients and AdamW moments %s (%.0f parameters; full "
                "fine-tuning: %s)",
                size_text(e->optimizer, o, sizeof o), e->lora_params,
                size_text(e->full_optimizer, fo, sizeof fo));
        } else if (e->optimizer > 0) {
            ADD(" + gradients and AdamW moments %s", size_text(e->optimizer, o, sizeof o));
        }
        if (e->zero_ranks > 1) ADD(" (ZeRO-1: moments of 1/%d of them per rank)", e->zero_ranks);
        if (e->activations > 0)
            ADD(" + activations %s (%.0f tokens per micro-batch%s)",
                size_text(activations_on(e, b), a, sizeof a), e->tokens,
                b->bf16_weights && e->act16_saving > 0 ? ", norms and gate/up in bf16" : "");
        ADD(" + sampling %s + KV cache %s", size_text(e->sampling, s, sizeof s),
            size_text(e->kv_cache, k, sizeof k));
        if (e->slots > 0) ADD(" (%.0f slots x %.0f positions", e->slots, e->positions);
        if (e->eval_slots > 0)
            ADD("%s%.0f eval slots x %.0f positions", e->slots > 0 ? "; " : " (", e->eval_slots,
                e->eval_positions);
        if (e->slots > 0 || e->eval_slots > 0) ADD(")");
    }
    /* what to lower, the biggest share first */
    if (e->kind == MEM_KIND_WEIGHTS) {
        ADD("; use a smaller model or a larger device");
    } else {
        advice adv[5];
        int n = 0;
        if (e->kind == MEM_KIND_JOB) {
            adv[n++] =
                (advice){e->sampling + e->kv_cache - e->eval,
                         "grpo.prompts_per_step x grpo.group_size or sampling.max_new_tokens"};
            adv[n++] = (advice){e->eval, "eval.k or eval.max_new_tokens"};
            adv[n++] = (advice){activations_on(e, b), "micro_batch_tokens"};
        } else {
            adv[n++] = (advice){e->sampling + e->kv_cache,
                                "the number of prompts x n, the prompts' length or max_tokens"};
        }
        adv[n++] = (advice){e->weights + e->optimizer + (b->bf16_weights ? e->weights16 : 0.0),
                            "the model's size"};
        if (e->reference > 0) adv[n++] = (advice){e->reference, "grpo.kl_coef (0: no reference)"};
        for (int i = 1; i < n; i++) /* insertion sort, descending */
            for (int j = i; j > 0 && adv[j].share > adv[j - 1].share; j--) {
                advice t = adv[j];
                adv[j] = adv[j - 1];
                adv[j - 1] = t;
            }
        const char *sep = "; to fit, lower (biggest share first) ";
        for (int i = 0; i < n; i++) {
            if (adv[i].share <= 0) continue;
            ADD("%s%s", sep, adv[i].fields);
            sep = ", then ";
        }
        ADD(", or use a larger device");
    }
#undef ADD
    return chord_err_setc(err, CHORD_E_TOO_LARGE, "%s", msg);
}
