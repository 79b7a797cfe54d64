/* Tiny random GPT-2 and Llama models built by hand in memory, for tests of the runtime that runs
 * them (training, device placement). Include after cmocka.h. */
#ifndef TESTS_UNIT_TINY_MODELS_H
#define TESTS_UNIT_TINY_MODELS_H

#include <stdio.h>
#include <string.h>

#include "runtime/runtime.h"

#ifndef VOCAB
#define VOCAB 23 /* vocabulary of the tiny models */
#endif

static uint64_t g_rng;

static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return lo + (hi - lo) * (float)((double)((g_rng * 2685821657736338717ull) >> 40) / 16777216.0);
}

static void put(llmopt_model *m, const char *name, int64_t d0, int64_t d1, float lo, float hi) {
    int64_t shape[2] = {d0, d1};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F32, d1 ? 2 : 1, shape);
    assert_non_null(t);
    float *v = t->data;
    for (int64_t i = 0; i < rt_tensor_numel(t); i++) v[i] = frand(lo, hi);
    assert_int_equal(rt_model_set(m, name, t), 0);
    rt_tensor_unref(t);
}

static void config(llmopt_model *m, const char *json) {
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, json, strlen(json), &err), 0);
}

/* GPT-2: n_layer layers, width C, 2 heads, MLP 4C, 16 positions, tied embeddings. */
static llmopt_model *gpt2_of_width(uint64_t seed, int n_layer, int C) {
    g_rng = seed;
    llmopt_model *m = rt_model_new("gpt2");
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"gpt2\", \"n_layer\": %d, \"n_embd\": %d, \"n_head\": 2, "
             "\"vocab_size\": %d, \"n_positions\": 16}", n_layer, C, VOCAB);
    config(m, cfg);
    put(m, "wte.weight", VOCAB, C, -0.3f, 0.3f);
    put(m, "wpe.weight", 16, C, -0.1f, 0.1f);
    for (int l = 0; l < n_layer; l++) {
        char n[96];
#define P(what, a, b, lo, hi) (snprintf(n, sizeof n, "h.%d.%s", l, what), put(m, n, a, b, lo, hi))
        P("ln_1.weight", C, 0, 0.8f, 1.2f), P("ln_1.bias", C, 0, -0.1f, 0.1f);
        P("attn.c_attn.weight", C, 3 * C, -0.3f, 0.3f), P("attn.c_attn.bias", 3 * C, 0, -0.1f, 0.1f);
        P("attn.c_proj.weight", C, C, -0.3f, 0.3f), P("attn.c_proj.bias", C, 0, -0.1f, 0.1f);
        P("ln_2.weight", C, 0, 0.8f, 1.2f), P("ln_2.bias", C, 0, -0.1f, 0.1f);
        P("mlp.c_fc.weight", C, 4 * C, -0.3f, 0.3f), P("mlp.c_fc.bias", 4 * C, 0, -0.1f, 0.1f);
        P("mlp.c_proj.weight", 4 * C, C, -0.2f, 0.2f), P("mlp.c_proj.bias", C, 0, -0.1f, 0.1f);
#undef P
    }
    put(m, "ln_f.weight", C, 0, 0.8f, 1.2f);
    put(m, "ln_f.bias", C, 0, -0.1f, 0.1f);
    return m;
}

/* GPT-2: 2 layers, width 16, 2 heads, MLP 64, 16 positions, tied embeddings. */
static llmopt_model *tiny_gpt2(uint64_t seed, int n_layer) { return gpt2_of_width(seed, n_layer, 16); }

/* Llama: 2 layers, width 16, 4 query heads and 2 kv heads of 4, MLP 24, attention biases,
 * linear rope scaling 2, untied head. */
static llmopt_model *tiny_llama(uint64_t seed) {
    g_rng = seed;
    llmopt_model *m = rt_model_new("llama");
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", \"hidden_size\": 16, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"intermediate_size\": 24, \"vocab_size\": %d, \"num_hidden_layers\": 2, "
             "\"max_position_embeddings\": 16, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": false, "
             "\"attention_bias\": true, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", VOCAB);
    config(m, cfg);
    put(m, "model.embed_tokens.weight", VOCAB, 16, -0.3f, 0.3f);
    put(m, "model.norm.weight", 16, 0, 0.8f, 1.2f);
    put(m, "lm_head.weight", VOCAB, 16, -0.3f, 0.3f);
    for (int l = 0; l < 2; l++) {
        char n[96];
#define P(what, a, b, lo, hi) (snprintf(n, sizeof n, "model.layers.%d.%s", l, what), put(m, n, a, b, lo, hi))
        P("input_layernorm.weight", 16, 0, 0.8f, 1.2f), P("post_attention_layernorm.weight", 16, 0, 0.8f, 1.2f);
        P("self_attn.q_proj.weight", 16, 16, -0.3f, 0.3f), P("self_attn.q_proj.bias", 16, 0, -0.1f, 0.1f);
        P("self_attn.k_proj.weight", 8, 16, -0.3f, 0.3f), P("self_attn.k_proj.bias", 8, 0, -0.1f, 0.1f);
        P("self_attn.v_proj.weight", 8, 16, -0.3f, 0.3f), P("self_attn.v_proj.bias", 8, 0, -0.1f, 0.1f);
        P("self_attn.o_proj.weight", 16, 16, -0.3f, 0.3f), P("self_attn.o_proj.bias", 16, 0, -0.1f, 0.1f);
        P("mlp.gate_proj.weight", 24, 16, -0.3f, 0.3f), P("mlp.up_proj.weight", 24, 16, -0.3f, 0.3f);
        P("mlp.down_proj.weight", 16, 24, -0.3f, 0.3f);
#undef P
    }
    return m;
}

#endif
