/* Reading GPT-2 and Llama configs (transformers' GPT2Config / LlamaConfig field names and
 * defaults) and checking every tensor the forward pass will use against them. */
#include "arch.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime.h"

/* The largest value of any dimension field. Real models stay far below it (vocabularies of 256 k,
 * contexts of 10 M), and it keeps every product the runtime forms in int (4 * n_embd, 3 * C,
 * heads * head_dim) from overflowing. */
#define ARCH_DIM_MAX (1 << 24)

/* An integer field; `dflt` < 0 means required. */
static int get_int(const llmopt_model *m, const char *key, int dflt, int *out, llmopt_error *err) {
    double v;
    if (rt_model_cfg_get_num(m, key, &v) != 0) {
        if (dflt < 0) return error_set(err, LLMOPT_EFORMAT, "config.json: missing integer field '%s'", key);
        *out = dflt;
        return 0;
    }
    if (!(v >= 0 && v <= ARCH_DIM_MAX) || v != (double)(int)v) /* range first: the cast is UB outside int */
        return error_set(err, LLMOPT_EFORMAT, "config.json: '%s' must be an integer from 0 to %d, got %g", key,
                         ARCH_DIM_MAX, v);
    *out = (int)v;
    return 0;
}

static int get_float(const llmopt_model *m, const char *key, double dflt, float *out) {
    double v;
    *out = (float)(rt_model_cfg_get_num(m, key, &v) == 0 ? v : dflt);
    return 0;
}

static int get_bool(const llmopt_model *m, const char *key, int dflt) {
    json_t *v = json_object_get(rt_model_config_json(m), key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int read_gpt2(const llmopt_model *m, arch_config *c, llmopt_error *err) {
    int rc = 0;
    if ((rc = get_int(m, "n_layer", -1, &c->n_layer, err)) || (rc = get_int(m, "n_embd", -1, &c->n_embd, err)) ||
        (rc = get_int(m, "n_head", -1, &c->n_head, err)) || (rc = get_int(m, "vocab_size", -1, &c->vocab, err)) ||
        (rc = get_int(m, "n_positions", 1024, &c->n_ctx, err)) || (rc = get_int(m, "n_inner", 0, &c->n_ff, err)))
        return rc;
    if (c->n_ff == 0) c->n_ff = 4 * c->n_embd;
    c->n_kv_head = c->n_head;
    get_float(m, "layer_norm_epsilon", 1e-5, &c->norm_eps);
    c->tied = get_bool(m, "tie_word_embeddings", 1);
    c->attn_bias = c->mlp_bias = 1;
    c->attn_unscaled = !get_bool(m, "scale_attn_weights", 1);
    c->attn_scale_by_layer = get_bool(m, "scale_attn_by_inverse_layer_idx", 0);
    const char *act = rt_model_cfg_get_str(m, "activation_function");
    if (!act || strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0) c->act = ACT_GELU_TANH;
    else if (strcmp(act, "gelu") == 0) c->act = ACT_GELU_ERF;
    else return error_set(err, LLMOPT_EUNSUPPORTED, "config.json: activation_function '%s' is not supported "
                          "(gelu_new, gelu_pytorch_tanh, gelu)", act);
    return 0;
}

static int scaling_num(json_t *rs, const char *key, double *out, llmopt_error *err);
static int read_llama3(json_t *rs, double factor, arch_config *c, llmopt_error *err);

/* A sliding window of sliding_window positions (Mistral; Qwen2 where a layer uses it) is causal
 * attention for sequences that fit in it, and there is no windowed attention kernel: the context
 * stops at the window, so a longer sequence is refused rather than attended differently. */
static int cap_context_at_window(const llmopt_model *m, arch_config *c, llmopt_error *err) {
    int window = 0, rc;
    if (!json_is_number(json_object_get(rt_model_config_json(m), "sliding_window"))) return 0; /* null: none */
    if ((rc = get_int(m, "sliding_window", 0, &window, err))) return rc;
    if (window > 0 && window < c->n_ctx) c->n_ctx = window;
    return 0;
}

static int read_llama(const llmopt_model *m, arch_config *c, llmopt_error *err) {
    int rc = 0;
    if ((rc = get_int(m, "num_hidden_layers", -1, &c->n_layer, err)) ||
        (rc = get_int(m, "hidden_size", -1, &c->n_embd, err)) ||
        (rc = get_int(m, "num_attention_heads", -1, &c->n_head, err)) ||
        (rc = get_int(m, "intermediate_size", -1, &c->n_ff, err)) ||
        (rc = get_int(m, "vocab_size", -1, &c->vocab, err)) ||
        (rc = get_int(m, "max_position_embeddings", 2048, &c->n_ctx, err)) ||
        (rc = get_int(m, "num_key_value_heads", c->n_head, &c->n_kv_head, err)) ||
        (rc = get_int(m, "head_dim", c->n_head ? c->n_embd / c->n_head : 0, &c->head_dim, err)))
        return rc;
    get_float(m, "rms_norm_eps", 1e-6, &c->norm_eps);
    get_float(m, "rope_theta", 10000.0, &c->rope_theta);
    c->tied = get_bool(m, "tie_word_embeddings", 0);
    c->attn_bias = c->o_bias = get_bool(m, "attention_bias", 0);
    c->mlp_bias = get_bool(m, "mlp_bias", 0);
    const char *act = rt_model_cfg_get_str(m, "hidden_act");
    if (act && strcmp(act, "silu") != 0)
        return error_set(err, LLMOPT_EUNSUPPORTED, "config.json: hidden_act '%s' is not supported (silu)", act);
    c->act = ACT_SILU;
    c->rope_scale = 1.0f;
    json_t *rs = json_object_get(rt_model_config_json(m), "rope_scaling");
    if (rs && !json_is_null(rs)) {
        json_t *type = json_object_get(rs, "rope_type");
        if (!type) type = json_object_get(rs, "type");
        const char *t = json_string_value(type);
        if (t && strcmp(t, "default") == 0) return 0;
        if (!t || (strcmp(t, "linear") != 0 && strcmp(t, "llama3") != 0))
            return error_set(err, LLMOPT_EUNSUPPORTED, "config.json: rope_scaling type '%s' is not supported "
                             "(none, linear or llama3)", t ? t : "?");
        double f = 0;
        if ((rc = scaling_num(rs, "factor", &f, err))) return rc;
        if (strcmp(t, "linear") == 0) {
            c->rope_scale = (float)f;
            return 0;
        }
        return read_llama3(rs, f, c, err);
    }
    return 0;
}

/* A positive number of rope_scaling. */
static int scaling_num(json_t *rs, const char *key, double *out, llmopt_error *err) {
    json_t *v = json_object_get(rs, key);
    if (!v) return error_set(err, LLMOPT_EFORMAT, "config.json: rope_scaling.%s is missing", key);
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
        return error_set(err, LLMOPT_EFORMAT, "config.json: rope_scaling.%s must be a positive number", key);
    *out = json_number_value(v);
    return 0;
}

static int read_llama3(json_t *rs, double factor, arch_config *c, llmopt_error *err) {
    double lo = 0, hi = 0, ctx = 0;
    int rc;
    if ((rc = scaling_num(rs, "low_freq_factor", &lo, err)) || (rc = scaling_num(rs, "high_freq_factor", &hi, err)) ||
        (rc = scaling_num(rs, "original_max_position_embeddings", &ctx, err)))
        return rc;
    if (!(hi > lo))
        return error_set(err, LLMOPT_EFORMAT, "config.json: rope_scaling.high_freq_factor (%g) must be above "
                         "low_freq_factor (%g)", hi, lo);
    if (c->head_dim <= 0 || c->head_dim % 2 != 0 || c->head_dim / 2 > ARCH_ROPE_MAX_FREQ)
        return error_set(err, LLMOPT_EUNSUPPORTED, "config.json: llama3 rope scaling needs an even head size of "
                         "at most %d, not %d", 2 * ARCH_ROPE_MAX_FREQ, c->head_dim);
    c->rope_factor = (float)factor, c->rope_low_freq = (float)lo, c->rope_high_freq = (float)hi;
    c->rope_orig_ctx = (float)ctx;
    c->rope_n_freq = c->head_dim / 2;
    double div[ARCH_ROPE_MAX_FREQ];
    arch_rope_llama3_divisors(c->rope_theta, c->head_dim, factor, lo, hi, ctx, div);
    for (int i = 0; i < c->rope_n_freq; i++)
        c->rope_inv_freq[i] = (float)(arch_rope_base_freq(c->rope_theta, c->head_dim, i) / div[i]);
    return 0;
}

double arch_rope_base_freq(float theta, int head_dim, int i) { return pow(theta, -2.0 * i / head_dim); }

float arch_attn_scale(const arch_config *c, int layer) {
    float s = c->attn_unscaled ? 1.0f : 1.0f / sqrtf((float)c->head_dim);
    return c->attn_scale_by_layer ? s / (float)(layer + 1) : s;
}

/* transformers' _compute_llama3_parameters, and the factors llama.cpp's converter writes. */
void arch_rope_llama3_divisors(float theta, int head_dim, double factor, double low_freq, double high_freq,
                               double orig_ctx, double *out) {
    const double low_wavelen = orig_ctx / low_freq, high_wavelen = orig_ctx / high_freq;
    for (int i = 0; i < head_dim / 2; i++) {
        double wavelen = 2.0 * 3.14159265358979323846 / arch_rope_base_freq(theta, head_dim, i);
        if (wavelen < high_wavelen) out[i] = 1.0;
        else if (wavelen > low_wavelen) out[i] = factor;
        else {
            double smooth = (orig_ctx / wavelen - low_freq) / (high_freq - low_freq);
            out[i] = 1.0 / ((1.0 - smooth) / factor + smooth);
        }
    }
}

int arch_linear_layout(const arch_config *c, const llmopt_tensor *w) {
    const llmopt_dtype_traits *tr = rt_dtype_traits(w->dtype);
    return c->family == ARCH_GPT2 && !(tr && tr->is_quantized) ? LLMOPT_W_IN_OUT : LLMOPT_W_OUT_IN;
}

int arch_model_linear_layout(const llmopt_model *m, const char *name) {
    const llmopt_tensor *t = name ? rt_model_get(m, name) : NULL;
    if (!t || t->ndim != 2) return LLMOPT_EINVAL;
    const char *type = rt_model_cfg_get_str(m, "model_type");
    if (!type) type = rt_model_arch(m);
    int block = strncmp(name, "h.", 2) == 0 || strstr(name, ".h.") != NULL; /* not wte, wpe, lm_head */
    arch_config c = {.family = type && strcmp(type, "gpt2") == 0 && block ? ARCH_GPT2 : ARCH_LLAMA};
    return arch_linear_layout(&c, t);
}

const char *arch_tensor_name(const arch_config *c, const llmopt_model *m, int layer, const char *what,
                             char *buf, size_t n) {
    if (c->family == ARCH_GPT2) {
        /* transformers saves "transformer.h.0...", original OpenAI-converted files "h.0..." */
        const char *prefix = rt_model_get(m, "transformer.wte.weight") ? "transformer." : "";
        if (strcmp(what, "lm_head.weight") == 0) prefix = "";
        if (layer < 0) snprintf(buf, n, "%s%s", prefix, what);
        else snprintf(buf, n, "%sh.%d.%s", prefix, layer, what);
    } else {
        if (layer < 0) snprintf(buf, n, "%s", what);
        else snprintf(buf, n, "model.layers.%d.%s", layer, what);
    }
    return buf;
}

/* Checks that the tensor exists with exactly this shape (d1 == 0: a vector of d0); a conv1d
 * weight [d0 = in, d1 = out] may also be quantized and then is [out, in] (arch_linear_layout). */
static int expect_as(const arch_config *c, const llmopt_model *m, int layer, const char *what, int64_t d0,
                     int64_t d1, int conv1d, llmopt_error *err) {
    char name[160];
    arch_tensor_name(c, m, layer, what, name, sizeof name);
    const llmopt_tensor *t = rt_model_get(m, name);
    if (!t) return error_set(err, LLMOPT_EFORMAT, "missing tensor '%s'", name);
    if (conv1d && d1 && arch_linear_layout(c, t) == LLMOPT_W_OUT_IN) { /* quantized Conv1D: [out, in] */
        int64_t tmp = d0;
        d0 = d1, d1 = tmp;
    }
    int ndim = d1 ? 2 : 1;
    if (t->ndim != ndim || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
        char got[96];
        if (t->ndim == 1) snprintf(got, sizeof got, "[%lld]", (long long)t->shape[0]);
        else snprintf(got, sizeof got, "[%lld, %lld%s]", (long long)t->shape[0], (long long)t->shape[1],
                      t->ndim > 2 ? ", ..." : "");
        return error_set(err, LLMOPT_EFORMAT, "tensor '%s' has shape %s, the config implies [%lld%s%lld]", name, got,
                         (long long)d0, d1 ? ", " : "", d1 ? (long long)d1 : 0LL);
    }
    const llmopt_dtype_traits *tr = rt_dtype_traits(t->dtype);
    /* weights may be of any known type (quantized ones need a kernel for it); vectors stay float */
    int is_float = t->dtype == LLMOPT_DTYPE_F32 || t->dtype == LLMOPT_DTYPE_F16 || t->dtype == LLMOPT_DTYPE_BF16;
    if (!tr || (!is_float && (ndim == 1 || !tr->is_quantized)))
        return error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s' has dtype %s, which the runtime does not run there",
                         name, tr ? tr->name : "?");
    return 0;
}

static int expect(const arch_config *c, const llmopt_model *m, int layer, const char *what, int64_t d0,
                  int64_t d1, llmopt_error *err) {
    return expect_as(c, m, layer, what, d0, d1, 0, err);
}

static int check_tensors(const arch_config *c, const llmopt_model *m, llmopt_error *err) {
    int64_t C = c->n_embd, F = c->n_ff, V = c->vocab, Q = (int64_t)c->n_head * c->head_dim;
    int64_t KV = (int64_t)c->n_kv_head * c->head_dim;
    int rc;
    if (c->family == ARCH_GPT2) {
        if ((rc = expect(c, m, -1, "wte.weight", V, C, err)) || (rc = expect(c, m, -1, "wpe.weight", c->n_ctx, C, err)) ||
            (rc = expect(c, m, -1, "ln_f.weight", C, 0, err)) || (rc = expect(c, m, -1, "ln_f.bias", C, 0, err)))
            return rc;
        if (!c->tied && (rc = expect(c, m, -1, "lm_head.weight", V, C, err))) return rc;
        for (int l = 0; l < c->n_layer; l++) {
            struct { const char *w; int64_t a, b; } t[] = {
                {"ln_1.weight", C, 0}, {"ln_1.bias", C, 0}, {"attn.c_attn.weight", C, 3 * C}, {"attn.c_attn.bias", 3 * C, 0},
                {"attn.c_proj.weight", C, C}, {"attn.c_proj.bias", C, 0}, {"ln_2.weight", C, 0}, {"ln_2.bias", C, 0},
                {"mlp.c_fc.weight", C, F}, {"mlp.c_fc.bias", F, 0}, {"mlp.c_proj.weight", F, C}, {"mlp.c_proj.bias", C, 0},
            };
            for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) /* the 2-D ones are Conv1D [in, out] */
                if ((rc = expect_as(c, m, l, t[i].w, t[i].a, t[i].b, 1, err))) return rc;
        }
        return 0;
    }
    if ((rc = expect(c, m, -1, "model.embed_tokens.weight", V, C, err)) || (rc = expect(c, m, -1, "model.norm.weight", C, 0, err)))
        return rc;
    if (!c->tied && (rc = expect(c, m, -1, "lm_head.weight", V, C, err))) return rc;
    for (int l = 0; l < c->n_layer; l++) {
        struct { const char *w; int64_t a, b; int on; } t[] = {
            {"input_layernorm.weight", C, 0, 1}, {"post_attention_layernorm.weight", C, 0, 1},
            {"self_attn.q_proj.weight", Q, C, 1}, {"self_attn.k_proj.weight", KV, C, 1},
            {"self_attn.v_proj.weight", KV, C, 1}, {"self_attn.o_proj.weight", C, Q, 1},
            {"self_attn.q_proj.bias", Q, 0, c->attn_bias}, {"self_attn.k_proj.bias", KV, 0, c->attn_bias},
            {"self_attn.v_proj.bias", KV, 0, c->attn_bias}, {"self_attn.o_proj.bias", C, 0, c->o_bias},
            {"mlp.gate_proj.weight", F, C, 1}, {"mlp.up_proj.weight", F, C, 1}, {"mlp.down_proj.weight", C, F, 1},
            {"mlp.gate_proj.bias", F, 0, c->mlp_bias}, {"mlp.up_proj.bias", F, 0, c->mlp_bias},
            {"mlp.down_proj.bias", C, 0, c->mlp_bias},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            if (t[i].on && (rc = expect(c, m, l, t[i].w, t[i].a, t[i].b, err))) return rc;
    }
    return 0;
}

int arch_from_model(const llmopt_model *m, arch_config *c, llmopt_error *err) {
    memset(c, 0, sizeof *c);
    const char *type = rt_model_cfg_get_str(m, "model_type");
    if (!type) type = rt_model_arch(m);
    int rc;
    if (strcmp(type, "gpt2") == 0) {
        c->family = ARCH_GPT2;
        rc = read_gpt2(m, c, err);
        if (!rc && c->n_head) c->head_dim = c->n_embd / c->n_head;
    } else if (strcmp(type, "llama") == 0 || strcmp(type, "mistral") == 0) {
        c->family = ARCH_LLAMA;
        rc = read_llama(m, c, err);
        if (!rc && strcmp(type, "mistral") == 0) rc = cap_context_at_window(m, c, err);
    } else if (strcmp(type, "qwen2") == 0) {
        /* transformers' Qwen2: Llama with biases on q/k/v (not o), its head size hidden / heads;
         * with use_sliding_window, layers from max_window_layers on use the window */
        c->family = ARCH_LLAMA;
        rc = read_llama(m, c, err);
        c->attn_bias = 1, c->o_bias = c->mlp_bias = 0;
        if (!rc && c->n_head > 0) c->head_dim = c->n_embd / c->n_head;
        int from = 0;
        if (!rc && get_bool(m, "use_sliding_window", 0) && !(rc = get_int(m, "max_window_layers", 0, &from, err)) &&
            from < c->n_layer)
            rc = cap_context_at_window(m, c, err);
    } else {
        return error_set(err, LLMOPT_EUNSUPPORTED, "config.json: model_type '%s' is not supported (gpt2, llama, mistral, qwen2)",
                         type);
    }
    if (rc) return rc;
    if (c->n_layer < 1 || c->n_embd < 1 || c->n_head < 1 || c->vocab < 1 || c->n_ff < 1 || c->n_ctx < 1)
        return error_set(err, LLMOPT_EFORMAT, "config.json: layers, hidden size, heads, vocab, MLP width and "
                         "context must all be positive");
    if (c->family == ARCH_GPT2 && c->n_embd % c->n_head != 0)
        return error_set(err, LLMOPT_EFORMAT, "config.json: n_head (%d) must divide n_embd (%d)", c->n_head, c->n_embd);
    if (c->n_kv_head < 1 || c->n_head % c->n_kv_head != 0)
        return error_set(err, LLMOPT_EFORMAT, "config.json: num_key_value_heads (%d) must divide num_attention_heads (%d)",
                         c->n_kv_head, c->n_head);
    if (c->head_dim < 2 || c->head_dim % 2 != 0)
        return error_set(err, LLMOPT_EFORMAT, "config.json: head dimension %d must be even and at least 2", c->head_dim);
    if ((int64_t)c->n_head * c->head_dim > ARCH_DIM_MAX)
        return error_set(err, LLMOPT_EFORMAT, "config.json: heads x head dimension (%d x %d) is over %d", c->n_head,
                         c->head_dim, ARCH_DIM_MAX);
    if (!(c->norm_eps > 0)) return error_set(err, LLMOPT_EFORMAT, "config.json: the norm epsilon must be positive");
    /* a tensor error names the checkpoint file it is about (the index, for a sharded model) */
    rc = check_tensors(c, m, err);
    if (rc && rt_model_source(m)) error_prefix(err, "%s", rt_model_source(m));
    return rc;
}
