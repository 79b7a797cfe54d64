/* The host API's model_arch_info: a plugin gets the architecture the runtime runs (tiny GPT-2
 * and Llama models built in memory), the rope frequencies with their scaling, and no more of the
 * struct than the struct_size it was built with. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tiny_models.h"

const llmopt_host_api *host_api_table(void);

static void llama_info_has_gqa_biases_and_scaled_rope(void **s) {
    (void)s;
    llmopt_model *m = tiny_llama(3);
    llmopt_arch_info a = {.struct_size = sizeof a};
    assert_int_equal(host_api_table()->model_arch_info(NULL, m, &a), 0);
    assert_int_equal(a.family, LLMOPT_ARCH_LLAMA);
    assert_int_equal(a.n_layer, 2);
    assert_int_equal(a.n_embd, 16);
    assert_int_equal(a.n_head, 4);
    assert_int_equal(a.n_kv_head, 2);
    assert_int_equal(a.head_dim, 4);
    assert_int_equal(a.n_ff, 24);
    assert_int_equal(a.vocab, VOCAB);
    assert_int_equal(a.act, LLMOPT_ACT_SILU);
    assert_true(a.attn_bias && a.o_bias && !a.mlp_bias && !a.tied);
    assert_true(fabsf(a.norm_eps - 1e-5f) < 1e-9f);
    assert_true(a.rope_scale == 2.0f);
    assert_int_equal(a.rope_n_freq, 2);
    for (int i = 0; i < 2; i++) assert_true(fabs(a.rope_freq[i] - pow(10000.0, -2.0 * i / 4)) < 1e-6);
    rt_model_unref(m);
}

static void gpt2_info_is_tied_with_gelu_and_no_rope(void **s) {
    (void)s;
    llmopt_model *m = tiny_gpt2(4, 2);
    llmopt_arch_info a = {.struct_size = sizeof a};
    assert_int_equal(host_api_table()->model_arch_info(NULL, m, &a), 0);
    assert_int_equal(a.family, LLMOPT_ARCH_GPT2);
    assert_int_equal(a.n_head, 2);
    assert_int_equal(a.n_kv_head, 2);
    assert_int_equal(a.head_dim, 8);
    assert_int_equal(a.act, LLMOPT_ACT_GELU_TANH);
    assert_true(a.tied && !a.attn_unscaled && !a.attn_scale_by_layer);
    assert_int_equal(a.rope_n_freq, 0);
    rt_model_unref(m);
}

static void an_older_plugins_struct_gets_only_its_own_fields(void **s) {
    (void)s;
    llmopt_model *m = tiny_llama(5);
    llmopt_arch_info a;
    memset(&a, 0x5a, sizeof a);
    a.struct_size = (uint32_t)offsetof(llmopt_arch_info, norm_eps); /* built before norm_eps existed */
    assert_int_equal(host_api_table()->model_arch_info(NULL, m, &a), 0);
    assert_int_equal(a.n_ctx, 16);
    const unsigned char *rest = (const unsigned char *)&a + offsetof(llmopt_arch_info, norm_eps);
    for (size_t i = 0; i < sizeof a - offsetof(llmopt_arch_info, norm_eps); i++) assert_int_equal(rest[i], 0x5a);
    a.struct_size = 0;
    assert_int_equal(host_api_table()->model_arch_info(NULL, m, &a), LLMOPT_EINVAL);
    rt_model_unref(m);
}

static void a_model_without_a_config_is_an_error(void **s) {
    (void)s;
    llmopt_model *m = rt_model_new("llama");
    llmopt_arch_info a = {.struct_size = sizeof a};
    assert_true(host_api_table()->model_arch_info(NULL, m, &a) != 0);
    rt_model_unref(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama_info_has_gqa_biases_and_scaled_rope),
        cmocka_unit_test(gpt2_info_is_tied_with_gelu_and_no_rope),
        cmocka_unit_test(an_older_plugins_struct_gets_only_its_own_fields),
        cmocka_unit_test(a_model_without_a_config_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
