/* Architecture configs (GPT-2, Llama) read from config values and checked against tensors, and
 * the sampling chain of generation (gen_pick). Forward passes are checked against transformers
 * in tests/interop; here, the error paths and the sampling rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arch.h"
#include "runtime/generate.h"
#include "runtime/runtime.h"

static void put(llmopt_model *m, const char *name, int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F32, d1 ? 2 : 1, shape);
    assert_non_null(t);
    assert_int_equal(rt_model_set(m, name, t), 0);
    rt_tensor_unref(t);
}

/* A complete tiny Llama: hidden 8, 2 heads of 4, 1 kv head, MLP 12, vocab 10, 1 layer. */
static llmopt_model *tiny_llama(void) {
    llmopt_model *m = rt_model_new("llama");
    const char *cfg = "{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_attention_heads\": 2, "
                      "\"num_key_value_heads\": 1, \"intermediate_size\": 12, \"vocab_size\": 10, "
                      "\"num_hidden_layers\": 1, \"max_position_embeddings\": 16, \"rms_norm_eps\": 1e-5, "
                      "\"tie_word_embeddings\": false}";
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, cfg, strlen(cfg), &err), 0);
    put(m, "model.embed_tokens.weight", 10, 8);
    put(m, "model.norm.weight", 8, 0);
    put(m, "lm_head.weight", 10, 8);
    put(m, "model.layers.0.input_layernorm.weight", 8, 0);
    put(m, "model.layers.0.post_attention_layernorm.weight", 8, 0);
    put(m, "model.layers.0.self_attn.q_proj.weight", 8, 8);
    put(m, "model.layers.0.self_attn.k_proj.weight", 4, 8);
    put(m, "model.layers.0.self_attn.v_proj.weight", 4, 8);
    put(m, "model.layers.0.self_attn.o_proj.weight", 8, 8);
    put(m, "model.layers.0.mlp.gate_proj.weight", 12, 8);
    put(m, "model.layers.0.mlp.up_proj.weight", 12, 8);
    put(m, "model.layers.0.mlp.down_proj.weight", 8, 12);
    return m;
}

static void llama_config_is_read_with_defaults(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    arch_config c;
    llmopt_error err = {0};
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.family, ARCH_LLAMA);
    assert_int_equal(c.n_kv_head, 1);
    assert_int_equal(c.head_dim, 4);
    assert_true(c.rope_theta == 10000.0f); /* transformers' default */
    assert_true(c.rope_scale == 1.0f);
    assert_false(c.tied);
    rt_model_unref(m);
}

static void set_cfg(llmopt_model *m, const char *key, const char *json) {
    json_t *v = json_loads(json, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    json_object_set_new(rt_model_config_json(m), key, v);
}

/* arch_from_model fails with status and a message holding text; m stays (expect_error drops it). */
static void expect_error_kept(const llmopt_model *m, int status, const char *text) {
    arch_config c;
    llmopt_error err = {0};
    assert_int_equal(arch_from_model(m, &c, &err), status);
    if (!strstr(err.msg, text)) fail_msg("message '%s' lacks '%s'", err.msg, text);
}

static void expect_error(llmopt_model *m, int status, const char *text) {
    expect_error_kept(m, status, text);
    rt_model_unref(m);
}

static void kv_heads_that_do_not_divide_heads_are_refused(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    set_cfg(m, "num_key_value_heads", "3");
    expect_error(m, LLMOPT_EFORMAT, "num_key_value_heads (3) must divide num_attention_heads (2)");
}

static void unknown_model_type_is_refused(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    set_cfg(m, "model_type", "\"bert\"");
    expect_error(m, LLMOPT_EUNSUPPORTED, "model_type 'bert' is not supported");
}

static void missing_field_is_named(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    json_object_del(rt_model_config_json(m), "hidden_size");
    expect_error(m, LLMOPT_EFORMAT, "missing integer field 'hidden_size'");
}

static void tensor_shape_disagreeing_with_config_names_file_and_tensor(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    assert_int_equal(rt_model_set_source(m, "/models/tiny/model.safetensors"), 0);
    put(m, "model.layers.0.self_attn.k_proj.weight", 8, 8); /* config implies [4, 8] */
    expect_error(m, LLMOPT_EFORMAT, "/models/tiny/model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' "
                 "has shape [8, 8], the config implies [4, 8]");
}

static void missing_tensor_names_file_and_tensor(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    assert_int_equal(rt_model_set_source(m, "/models/tiny/model.safetensors.index.json"), 0);
    rt_model_remove(m, "model.layers.0.mlp.up_proj.weight");
    expect_error(m, LLMOPT_EFORMAT, "/models/tiny/model.safetensors.index.json: missing tensor "
                 "'model.layers.0.mlp.up_proj.weight'");
}

static void missing_tensor_of_a_model_made_in_memory_names_the_tensor(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama(); /* no file to name */
    rt_model_remove(m, "model.layers.0.mlp.up_proj.weight");
    arch_config c;
    llmopt_error err = {0};
    assert_int_equal(arch_from_model(m, &c, &err), LLMOPT_EFORMAT);
    assert_string_equal(err.msg, "missing tensor 'model.layers.0.mlp.up_proj.weight'");
    rt_model_unref(m);
}

static void tied_llama_needs_no_lm_head(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    set_cfg(m, "tie_word_embeddings", "true");
    rt_model_remove(m, "lm_head.weight");
    arch_config c;
    llmopt_error err = {0};
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_true(c.tied);
    rt_model_unref(m);
}

static void rope_scaling_linear_is_read_and_others_refused(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    set_cfg(m, "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}");
    arch_config c;
    llmopt_error err = {0};
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_true(c.rope_scale == 2.0f);
    assert_int_equal(c.rope_n_freq, 0);
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}");
    expect_error_kept(m, LLMOPT_EUNSUPPORTED, "rope_scaling type 'yarn' is not supported");
    set_cfg(m, "rope_scaling", "{\"type\": \"linear\"}");
    expect_error_kept(m, LLMOPT_EFORMAT, "rope_scaling.factor is missing");
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"default\"}");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_true(c.rope_scale == 1.0f && c.rope_n_freq == 0);
    rt_model_unref(m);
}

/* Mistral's sliding window: sequences up to the window attend as causal attention does, so the
 * context is the window; no window (null) leaves max_position_embeddings. */
static void mistral_context_stops_at_its_sliding_window(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    arch_config c;
    llmopt_error err = {0};
    set_cfg(m, "model_type", "\"mistral\"");
    set_cfg(m, "sliding_window", "8");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.n_ctx, 8);
    set_cfg(m, "sliding_window", "null");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.n_ctx, 16);
    set_cfg(m, "sliding_window", "4096");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.n_ctx, 16);
    set_cfg(m, "sliding_window", "-3");
    expect_error_kept(m, LLMOPT_EFORMAT, "'sliding_window' must be an integer");
    set_cfg(m, "model_type", "\"llama\"");
    set_cfg(m, "sliding_window", "8"); /* not Mistral: ignored, as transformers' Llama does */
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.n_ctx, 16);
    rt_model_unref(m);
}

/* Llama 3.1's rope_scaling: head size 4 has two pairs, at wavelengths 2 pi and 2 pi * 100. */
static void rope_scaling_llama3_gives_a_frequency_table(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    arch_config c;
    llmopt_error err = {0};
    /* original context 64: 6.28 is below 64 / 4 (kept), 628 above 64 / 1 (divided by factor) */
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 4.0, \"low_freq_factor\": 1.0, "
                               "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.rope_n_freq, 2);
    assert_true(c.rope_scale == 1.0f);
    assert_float_equal(c.rope_inv_freq[0], 1.0f, 0);
    assert_float_equal(c.rope_inv_freq[1], 0.0025f, 1e-9f);
    /* original context 1024: 628 lies between 1024 / 4 and 1024 / 1, on the ramp */
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 4.0, \"low_freq_factor\": 1.0, "
                               "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 1024}");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    double wavelen = 2 * 3.141592653589793 * 100, smooth = (1024 / wavelen - 1) / 3;
    assert_float_equal(c.rope_inv_freq[1], 0.01 * ((1 - smooth) / 4 + smooth), 1e-9);
    assert_true(c.rope_inv_freq[1] > 0.0025f && c.rope_inv_freq[1] < 0.01f);
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"high_freq_factor\": 4.0, "
                               "\"original_max_position_embeddings\": 8192}");
    expect_error_kept(m, LLMOPT_EFORMAT, "rope_scaling.low_freq_factor is missing");
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0, "
                               "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}");
    expect_error_kept(m, LLMOPT_EFORMAT, "high_freq_factor (4) must be above low_freq_factor (4)");
    set_cfg(m, "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": -8.0, \"low_freq_factor\": 1.0, "
                               "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}");
    expect_error_kept(m, LLMOPT_EFORMAT, "rope_scaling.factor must be a positive number");
    rt_model_unref(m);
}

/* Qwen2: Llama with q/k/v biases (each required) and no o bias; its head size is hidden / heads
 * whatever head_dim says (transformers 4.47's Qwen2Attention); a sliding window some layers use
 * caps the context. */
static void qwen2_needs_qkv_biases_and_no_o_bias(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    arch_config c;
    llmopt_error err = {0};
    set_cfg(m, "model_type", "\"qwen2\"");
    expect_error_kept(m, LLMOPT_EFORMAT, "self_attn.q_proj.bias"); /* a missing tensor: the checkpoint is malformed */
    put(m, "model.layers.0.self_attn.q_proj.bias", 8, 0);
    put(m, "model.layers.0.self_attn.k_proj.bias", 4, 0);
    put(m, "model.layers.0.self_attn.v_proj.bias", 4, 0);
    set_cfg(m, "head_dim", "2");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_true(c.attn_bias && !c.o_bias && !c.mlp_bias);
    assert_int_equal(c.head_dim, 4);
    set_cfg(m, "use_sliding_window", "true");
    set_cfg(m, "sliding_window", "8");
    set_cfg(m, "max_window_layers", "1"); /* the one layer is below it: no layer slides */
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.n_ctx, 16);
    set_cfg(m, "max_window_layers", "0");
    assert_int_equal(arch_from_model(m, &c, &err), 0);
    assert_int_equal(c.n_ctx, 8);
    rt_model_unref(m);
}

/* GPT-2's scale_attn_weights and scale_attn_by_inverse_layer_idx, as transformers applies them. */
static void attention_scale_follows_gpt2s_options(void **state) {
    (void)state;
    arch_config c = {.family = ARCH_GPT2, .head_dim = 16};
    assert_float_equal(arch_attn_scale(&c, 3), 0.25f, 0);
    c.attn_scale_by_layer = 1;
    assert_float_equal(arch_attn_scale(&c, 0), 0.25f, 0);
    assert_float_equal(arch_attn_scale(&c, 3), 0.0625f, 0);
    c.attn_unscaled = 1;
    assert_float_equal(arch_attn_scale(&c, 1), 0.5f, 0);
}

static void gpt2_config_defaults_mlp_to_four_times_width(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2");
    const char *cfg = "{\"model_type\": \"gpt2\", \"n_layer\": 0, \"n_embd\": 8, \"n_head\": 2, \"vocab_size\": 5, "
                      "\"n_positions\": 4, \"n_inner\": null}";
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, cfg, strlen(cfg), &err), 0);
    expect_error(m, LLMOPT_EFORMAT, "must all be positive"); /* n_layer 0 */
}

static void dimension_beyond_the_limit_is_refused_before_any_product_overflows(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2"); /* 4 * n_embd, the MLP width default, would overflow int */
    const char *cfg = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 700000000, \"n_head\": 2, "
                      "\"vocab_size\": 5}";
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, cfg, strlen(cfg), &err), 0);
    expect_error(m, LLMOPT_EFORMAT, "'n_embd' must be an integer from 0 to 16777216, got 7e+08");
}

static void heads_times_head_dim_beyond_the_limit_is_refused(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama();
    set_cfg(m, "num_attention_heads", "65536");
    set_cfg(m, "num_key_value_heads", "1");
    set_cfg(m, "head_dim", "65536");
    expect_error(m, LLMOPT_EFORMAT, "heads x head dimension (65536 x 65536) is over 16777216");
}

/* A complete tiny GPT-2: width 32, 2 heads, MLP 128, vocab 10, 1 layer; c_fc of dtype fc_dtype,
 * given in the layout arch_linear_layout asks of it. */
static llmopt_model *tiny_gpt2(int fc_dtype) {
    llmopt_model *m = rt_model_new("gpt2");
    const char *cfg = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 32, \"n_head\": 2, \"vocab_size\": 10, "
                      "\"n_positions\": 16}";
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, cfg, strlen(cfg), &err), 0);
    put(m, "transformer.wte.weight", 10, 32), put(m, "transformer.wpe.weight", 16, 32);
    put(m, "transformer.ln_f.weight", 32, 0), put(m, "transformer.ln_f.bias", 32, 0);
    const char *vec[] = {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_proj.bias"};
    char n[96];
    for (size_t i = 0; i < 6; i++) {
        snprintf(n, sizeof n, "transformer.h.0.%s", vec[i]);
        put(m, n, 32, 0);
    }
    put(m, "transformer.h.0.attn.c_attn.weight", 32, 96), put(m, "transformer.h.0.attn.c_attn.bias", 96, 0);
    put(m, "transformer.h.0.attn.c_proj.weight", 32, 32);
    put(m, "transformer.h.0.mlp.c_fc.bias", 128, 0), put(m, "transformer.h.0.mlp.c_proj.weight", 128, 32);
    int64_t in_out[2] = {32, 128}, out_in[2] = {128, 32};
    llmopt_tensor *fc = rt_tensor_new(fc_dtype, 2, fc_dtype == LLMOPT_DTYPE_F32 ? in_out : out_in);
    assert_non_null(fc);
    assert_int_equal(rt_model_set(m, "transformer.h.0.mlp.c_fc.weight", fc), 0);
    rt_tensor_unref(fc);
    return m;
}

static void gpt2_conv1d_weights_are_in_out_while_float_and_out_in_once_quantized(void **state) {
    (void)state;
    const char *fc = "transformer.h.0.mlp.c_fc.weight";
    for (int q = 0; q < 2; q++) {
        llmopt_model *m = tiny_gpt2(q ? LLMOPT_DTYPE_Q8_0 : LLMOPT_DTYPE_F32);
        arch_config c;
        llmopt_error err = {0};
        if (arch_from_model(m, &c, &err)) fail_msg("%s", err.msg);
        assert_int_equal(arch_linear_layout(&c, rt_model_get(m, fc)), q ? LLMOPT_W_OUT_IN : LLMOPT_W_IN_OUT);
        assert_int_equal(arch_model_linear_layout(m, fc), q ? LLMOPT_W_OUT_IN : LLMOPT_W_IN_OUT);
        assert_int_equal(arch_model_linear_layout(m, "transformer.h.0.attn.c_attn.weight"), LLMOPT_W_IN_OUT);
        assert_int_equal(arch_model_linear_layout(m, "transformer.wte.weight"), LLMOPT_W_OUT_IN);
        assert_int_equal(arch_model_linear_layout(m, "transformer.ln_f.weight"), LLMOPT_EINVAL); /* 1-D */
        assert_int_equal(arch_model_linear_layout(m, "nope"), LLMOPT_EINVAL);
        rt_model_unref(m);
    }
    llmopt_model *m = tiny_llama();
    assert_int_equal(arch_model_linear_layout(m, "model.layers.0.mlp.up_proj.weight"), LLMOPT_W_OUT_IN);
    rt_model_unref(m);
}

static void quantized_conv1d_weight_in_the_float_layout_is_named(void **state) {
    (void)state;
    llmopt_model *m = tiny_gpt2(LLMOPT_DTYPE_F32);
    int64_t in_out[2] = {32, 128};
    llmopt_tensor *fc = rt_tensor_new(LLMOPT_DTYPE_Q8_0, 2, in_out);
    assert_int_equal(rt_model_set(m, "transformer.h.0.mlp.c_fc.weight", fc), 0);
    rt_tensor_unref(fc);
    expect_error(m, LLMOPT_EFORMAT, "tensor 'transformer.h.0.mlp.c_fc.weight' has shape [32, 128], the config implies [128, 32]");
}

/* ---- sampling ---- */

static void greedy_picks_the_first_maximum(void **state) {
    (void)state;
    float logits[5] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
    gen_params p = {.greedy = 1};
    uint64_t rng = 1;
    assert_int_equal(gen_pick(logits, 5, &p, NULL, 0, &rng), 1);
}

static void repetition_penalty_divides_positive_and_multiplies_negative(void **state) {
    (void)state;
    float logits[3] = {2.0f, -1.0f, 1.5f};
    int32_t hist[3] = {0, 1, 0};
    gen_params p = {.greedy = 1, .repetition_penalty = 2.0f};
    uint64_t rng = 1;
    /* 2.0/2 = 1.0 < 1.5: token 2 wins; token 1 becomes -2 */
    assert_int_equal(gen_pick(logits, 3, &p, hist, 3, &rng), 2);
    assert_true(logits[0] == 1.0f && logits[1] == -2.0f && logits[2] == 1.5f);
}

static void top_k_1_and_tiny_top_p_sample_the_argmax(void **state) {
    (void)state;
    gen_params k1 = {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f, .repetition_penalty = 1.0f};
    gen_params p0 = {.temperature = 1.0f, .top_k = 0, .top_p = 0.01f, .repetition_penalty = 1.0f};
    uint64_t rng = 42;
    for (int i = 0; i < 50; i++) {
        float a[4] = {0.0f, 0.3f, 0.2f, 0.1f}, b[4] = {0.0f, 0.3f, 0.2f, 0.1f};
        assert_int_equal(gen_pick(a, 4, &k1, NULL, 0, &rng), 1);
        assert_int_equal(gen_pick(b, 4, &p0, NULL, 0, &rng), 1);
    }
}

static void sampling_is_deterministic_per_seed_and_follows_probabilities(void **state) {
    (void)state;
    gen_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .repetition_penalty = 1.0f};
    uint64_t r1 = 7, r2 = 7;
    int counts[2] = {0, 0};
    for (int i = 0; i < 4000; i++) {
        float a[2] = {0.0f, 1.0986123f}, b[2] = {0.0f, 1.0986123f}; /* p = 1/4, 3/4 */
        int32_t x = gen_pick(a, 2, &p, NULL, 0, &r1);
        assert_int_equal(x, gen_pick(b, 2, &p, NULL, 0, &r2));
        counts[x]++;
    }
    assert_in_range(counts[1], 2800, 3200);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama_config_is_read_with_defaults),
        cmocka_unit_test(kv_heads_that_do_not_divide_heads_are_refused),
        cmocka_unit_test(unknown_model_type_is_refused),
        cmocka_unit_test(dimension_beyond_the_limit_is_refused_before_any_product_overflows),
        cmocka_unit_test(heads_times_head_dim_beyond_the_limit_is_refused),
        cmocka_unit_test(gpt2_conv1d_weights_are_in_out_while_float_and_out_in_once_quantized),
        cmocka_unit_test(quantized_conv1d_weight_in_the_float_layout_is_named),
        cmocka_unit_test(missing_field_is_named),
        cmocka_unit_test(tensor_shape_disagreeing_with_config_names_file_and_tensor),
        cmocka_unit_test(missing_tensor_names_file_and_tensor),
        cmocka_unit_test(missing_tensor_of_a_model_made_in_memory_names_the_tensor),
        cmocka_unit_test(tied_llama_needs_no_lm_head),
        cmocka_unit_test(rope_scaling_linear_is_read_and_others_refused),
        cmocka_unit_test(rope_scaling_llama3_gives_a_frequency_table),
        cmocka_unit_test(mistral_context_stops_at_its_sliding_window),
        cmocka_unit_test(attention_scale_follows_gpt2s_options),
        cmocka_unit_test(qwen2_needs_qkv_biases_and_no_o_bias),
        cmocka_unit_test(gpt2_config_defaults_mlp_to_four_times_width),
        cmocka_unit_test(greedy_picks_the_first_maximum),
        cmocka_unit_test(repetition_penalty_divides_positive_and_multiplies_negative),
        cmocka_unit_test(top_k_1_and_tiny_top_p_sample_the_argmax),
        cmocka_unit_test(sampling_is_deterministic_per_seed_and_follows_probabilities),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
