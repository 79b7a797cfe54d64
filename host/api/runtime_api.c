/* The model-runtime part of the host API table: tokenizers, forward sessions, generation and
 * dataset reading, each a checked wrapper that reports errors through the stage context. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime_api.h"
#include "../runtime/generate.h"
#include "../runtime/runtime.h"
#include "../runtime/tokenizer.h"
#include "../runtime/transformer.h"
#include "../runtime/unicode.h"
#include "../util/fs.h"

struct llmopt_session {
    tf_model *tm;
    tf_session *s;
};

static int fail(llmopt_stage_ctx *ctx, const llmopt_error *e) {
    if (ctx) {
        ctx->err = *e;
        if (!ctx->err.status) ctx->err.status = LLMOPT_EFAIL;
    }
    return e->status ? e->status : LLMOPT_EFAIL;
}

typedef struct parse_arg {
    const llmopt_model *m;
    llmopt_error *err;
} parse_arg;

static void *parse_tokenizer(const char *data, size_t len, void *arg) {
    parse_arg *a = arg;
    size_t lc = 0, lg = 0;
    const char *cfg = rt_model_get_file(a->m, "tokenizer_config.json", &lc);
    const char *gen = rt_model_get_file(a->m, "generation_config.json", &lg);
    tok_tokenizer *t = NULL;
    tok_load_mem("tokenizer.json", data, len, cfg, lc, gen, lg, &t, a->err);
    return t;
}

static void free_tokenizer(void *t) { tok_free(t); }

const tok_tokenizer *rt_model_tokenizer(const llmopt_model *m, llmopt_error *err) {
    if (!rt_model_get_file(m, "tokenizer.json", NULL)) {
        error_set(err, LLMOPT_ENOTFOUND, "the model has no tokenizer.json");
        return NULL;
    }
    parse_arg a = {m, err};
    return rt_model_file_parsed(m, "tokenizer.json", parse_tokenizer, free_tokenizer, &a);
}

static int api_tokenize(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *text, size_t len,
                        int add_special, int32_t **ids, size_t *n) {
    llmopt_error err = {0};
    const tok_tokenizer *t = rt_model_tokenizer(m, &err);
    if (!t || tok_encode(t, text, len, add_special, ids, n, &err) != 0) return fail(ctx, &err);
    return 0;
}

static int api_detokenize(llmopt_stage_ctx *ctx, const llmopt_model *m, const int32_t *ids, size_t n,
                          int skip_special, char **text, size_t *len) {
    llmopt_error err = {0};
    const tok_tokenizer *t = rt_model_tokenizer(m, &err);
    char *raw = NULL;
    size_t raw_len = 0;
    if (!t || tok_decode(t, ids, n, skip_special, &raw, &raw_len, &err) != 0) return fail(ctx, &err);
    /* plugins get text: ill-formed bytes (a character cut between tokens) become U+FFFD, as
     * transformers' decode gives */
    *text = uni_sanitize(raw, raw_len, len);
    free(raw);
    if (!*text) {
        error_set(&err, LLMOPT_ENOMEM, "out of memory");
        return fail(ctx, &err);
    }
    return 0;
}

static int32_t config_id(const llmopt_model *m, const char *key) {
    double v;
    return rt_model_cfg_get_num(m, key, &v) == 0 && v >= 0 ? (int32_t)v : -1;
}

int32_t rt_model_eos(const llmopt_model *m) {
    llmopt_error err = {0};
    const tok_tokenizer *t = rt_model_get_file(m, "tokenizer.json", NULL) ? rt_model_tokenizer(m, &err) : NULL;
    if (t && tok_eos(t) >= 0) return tok_eos(t);
    return config_id(m, "eos_token_id");
}

/* Adds the ids of v (an integer or an array of them) to out[*n], without repeats. */
static void add_json_ids(json_t *v, int32_t *out, int *n, int max) {
    json_t *one = v;
    for (size_t i = 0; json_is_array(v) ? i < json_array_size(v) : i < 1; i++) {
        if (json_is_array(v)) one = json_array_get(v, i);
        if (!json_is_integer(one) || json_integer_value(one) < 0 || json_integer_value(one) > INT32_MAX) continue;
        int32_t id = (int32_t)json_integer_value(one), seen = 0;
        for (int k = 0; k < *n; k++) seen |= out[k] == id;
        if (!seen && *n < max) out[(*n)++] = id;
    }
}

int rt_model_eos_ids(const llmopt_model *m, int32_t *out, int max) {
    llmopt_error err = {0};
    const tok_tokenizer *t = rt_model_get_file(m, "tokenizer.json", NULL) ? rt_model_tokenizer(m, &err) : NULL;
    int n = 0;
    if (t) { /* tokenizer_config.json's eos_token, then every id of generation_config.json's */
        size_t k = 0;
        const int32_t *ids = tok_eos_ids(t, &k);
        for (size_t i = 0; i < k && n < max; i++)
            if (ids[i] >= 0) out[n++] = ids[i];
        if (n) return n;
    }
    add_json_ids(json_object_get(rt_model_config_json(m), "eos_token_id"), out, &n, max);
    size_t len = 0;
    const char *gen = rt_model_get_file(m, "generation_config.json", &len);
    json_t *g = gen ? json_loadb(gen, len, 0, NULL) : NULL;
    if (g) add_json_ids(json_object_get(g, "eos_token_id"), out, &n, max);
    json_decref(g);
    return n;
}

static int32_t api_token_bos(const llmopt_model *m) {
    llmopt_error err = {0};
    const tok_tokenizer *t = rt_model_get_file(m, "tokenizer.json", NULL) ? rt_model_tokenizer(m, &err) : NULL;
    if (t && tok_bos(t) >= 0) return tok_bos(t);
    return config_id(m, "bos_token_id");
}

static int api_model_vocab(const llmopt_model *m) {
    arch_config c;
    llmopt_error err = {0};
    return arch_from_model(m, &c, &err) == 0 ? c.vocab : 0;
}

static int api_model_context(const llmopt_model *m) {
    arch_config c;
    llmopt_error err = {0};
    return arch_from_model(m, &c, &err) == 0 ? c.n_ctx : 0;
}

static int api_model_arch_info(llmopt_stage_ctx *ctx, const llmopt_model *m, llmopt_arch_info *out) {
    arch_config c;
    llmopt_error err = {0};
    if (!out || out->struct_size < sizeof out->struct_size) {
        error_set(&err, LLMOPT_EINVAL, "model_arch_info: out->struct_size is not set");
        return fail(ctx, &err);
    }
    if (arch_from_model(m, &c, &err) != 0) return fail(ctx, &err);
    llmopt_arch_info a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.family = c.family == ARCH_GPT2 ? LLMOPT_ARCH_GPT2 : LLMOPT_ARCH_LLAMA;
    a.n_layer = c.n_layer, a.n_embd = c.n_embd, a.n_head = c.n_head, a.n_kv_head = c.n_kv_head;
    a.head_dim = c.head_dim, a.n_ff = c.n_ff, a.vocab = c.vocab, a.n_ctx = c.n_ctx, a.norm_eps = c.norm_eps;
    a.act = c.act == ACT_GELU_TANH ? LLMOPT_ACT_GELU_TANH : c.act == ACT_GELU_ERF ? LLMOPT_ACT_GELU_ERF : LLMOPT_ACT_SILU;
    a.tied = c.tied, a.attn_bias = c.attn_bias, a.o_bias = c.o_bias, a.mlp_bias = c.mlp_bias;
    a.attn_unscaled = c.attn_unscaled, a.attn_scale_by_layer = c.attn_scale_by_layer;
    a.rope_scale = c.rope_scale;
    if (c.family == ARCH_LLAMA) {
        a.rope_n_freq = c.head_dim / 2;
        for (int i = 0; i < a.rope_n_freq && i < LLMOPT_ROPE_MAX_FREQ; i++)
            a.rope_freq[i] = c.rope_n_freq ? c.rope_inv_freq[i] : (float)arch_rope_base_freq(c.rope_theta, c.head_dim, i);
    }
    uint32_t n = out->struct_size < sizeof a ? out->struct_size : (uint32_t)sizeof a;
    memcpy((char *)out + sizeof out->struct_size, (char *)&a + sizeof a.struct_size, n - sizeof a.struct_size);
    return 0;
}

static llmopt_session *api_session_new(llmopt_stage_ctx *ctx, const llmopt_model *m, int max_ctx) {
    llmopt_error err = {0};
    llmopt_session *s = calloc(1, sizeof *s);
    if (!s) {
        error_set(&err, LLMOPT_ENOMEM, "out of memory");
        fail(ctx, &err);
        return NULL;
    }
    int device = ctx ? ctx->device : LLMOPT_DEVICE_CPU;
    /* the session only reads the model; tf_model keeps a reference so it outlives the stage */
    if (tf_model_new((llmopt_model *)m, device, &s->tm, &err) != 0 || tf_session_new(s->tm, max_ctx, &s->s, &err) != 0) {
        fail(ctx, &err);
        tf_model_free(s->tm);
        free(s);
        return NULL;
    }
    if (ctx && ctx->p) tf_model_set_matmul_precision(s->tm, ctx->p->matmul_precision);
    return s;
}

static void api_session_free(llmopt_session *s) {
    if (!s) return;
    tf_session_free(s->s);
    tf_model_free(s->tm);
    free(s);
}

static int api_session_forward(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *ids, int n, float *logits,
                               int all_logits) {
    llmopt_error err = {0};
    return tf_forward(s->s, ids, n, logits, all_logits, &err) ? fail(ctx, &err) : 0;
}

static int api_session_pos(const llmopt_session *s) { return tf_session_pos(s->s); }
static void api_session_rewind(llmopt_session *s, int pos) { tf_session_rewind(s->s, pos); }

static int api_generate(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *prompt, size_t n_prompt,
                        const llmopt_gen_params *p, int32_t **out, size_t *n_out) {
    gen_params g = {.max_tokens = p->max_tokens, .greedy = p->greedy, .temperature = p->temperature,
                    .top_k = p->top_k, .top_p = p->top_p, .repetition_penalty = p->repetition_penalty,
                    .seed = p->seed};
    /* every end-of-sequence id of the session's model */
    if (p->stop_at_eos) g.n_eos = rt_model_eos_ids(tf_model_source(s->tm), g.eos, GEN_MAX_EOS);
    llmopt_error err = {0};
    return gen_run(s->s, prompt, n_prompt, &g, NULL, NULL, out, n_out, &err) ? fail(ctx, &err) : 0;
}

static int api_data_read(llmopt_stage_ctx *ctx, const char *entry, char **text, size_t *len) {
    llmopt_error err = {0};
    const pipeline_data *d = NULL;
    for (size_t i = 0; i < ctx->p->n_data; i++)
        if (strcmp(ctx->p->data[i].name, entry) == 0) d = &ctx->p->data[i];
    if (!d) {
        error_set(&err, LLMOPT_ENOTFOUND, "the pipeline has no data entry '%s' (add it under 'data:')", entry);
        return fail(ctx, &err);
    }
    char *all = NULL;
    size_t n = 0, b = 0, e = 0;
    if (fs_read_all(d->path, &all, &n, &err) != 0 || rt_text_split(all, n, d->split, &b, &e, &err) != 0) {
        free(all);
        error_prefix(&err, "data '%s'", entry);
        return fail(ctx, &err);
    }
    memmove(all, all + b, e - b);
    all[e - b] = '\0';
    *text = all;
    *len = e - b;
    return 0;
}

void runtime_api_fill(llmopt_host_api *api) {
    api->mem_free = free;
    api->tokenize = api_tokenize;
    api->detokenize = api_detokenize;
    api->token_eos = rt_model_eos;
    api->token_bos = api_token_bos;
    api->model_vocab = api_model_vocab;
    api->model_context = api_model_context;
    api->model_arch_info = api_model_arch_info;
    api->session_new = api_session_new;
    api->session_free = api_session_free;
    api->session_forward = api_session_forward;
    api->session_pos = api_session_pos;
    api->session_rewind = api_session_rewind;
    api->generate = api_generate;
    api->data_read = api_data_read;
}
