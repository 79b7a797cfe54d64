/* Unit tests for GGUF (host/runtime/gguf.c): write -> parse keeps every key and tensor in llama.cpp's
 * names and layout; write -> load gives back the model bit for bit (permutations and transposes
 * undone) with a tokenizer that encodes as the original; one test per malformed file, each checking
 * the status and that the message names the file and the key or tensor. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include "testutil.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arch.h"
#include "runtime/gguf.h"
#include "runtime/runtime.h"
#include "runtime/tokenizer.h"
#include "util/fs.h"

/* ---- models made in memory ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint8_t rand_byte(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint8_t)(rng >> 24);
}

/* A tensor of random bytes (any dtype: the tests compare bits, not values). */
static void add_random(llmopt_model *m, const char *name, int dtype, int ndim, int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1};
    llmopt_tensor *t = rt_tensor_new(dtype, ndim, shape);
    assert_non_null(t);
    uint8_t *p = t->data;
    for (size_t i = 0; i < t->nbytes; i++) p[i] = rand_byte();
    if (dtype == LLMOPT_DTYPE_F32)  /* finite floats, so value comparisons elsewhere mean something */
        for (int64_t i = 0; i < rt_tensor_numel(t); i++) ((float *)p)[i] = (float)(rand_byte() - 128) / 64.0f;
    assert_int_equal(rt_model_set(m, name, t), 0);
    rt_tensor_unref(t);
}

static void set_config(llmopt_model *m, const char *cfg) {
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, cfg, strlen(cfg), &err), 0);
}

#define C 64
#define NH 4
#define NKV 2
#define D 16
#define FF 96
#define V 300

/* A 2-layer Llama with GQA, attention biases, mixed weight dtypes (f32, f16, bf16, q8_0, q4_0,
 * q4_1) and linear rope scaling. */
static llmopt_model *make_llama(void) {
    llmopt_model *m = rt_model_new("llama");
    set_config(m, "{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
                  "\"num_key_value_heads\": 2, \"num_hidden_layers\": 2, \"intermediate_size\": 96, "
                  "\"vocab_size\": 300, \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-5, "
                  "\"rope_theta\": 500000.0, \"attention_bias\": true, \"tie_word_embeddings\": false, "
                  "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}");
    add_random(m, "model.embed_tokens.weight", LLMOPT_DTYPE_F32, 2, V, C);
    add_random(m, "model.norm.weight", LLMOPT_DTYPE_F32, 1, C, 1);
    add_random(m, "lm_head.weight", LLMOPT_DTYPE_Q8_0, 2, V, C);
    int wt[] = {LLMOPT_DTYPE_Q8_0, LLMOPT_DTYPE_F16, LLMOPT_DTYPE_Q4_0, LLMOPT_DTYPE_Q4_1, LLMOPT_DTYPE_BF16, LLMOPT_DTYPE_F32};
    for (int l = 0; l < 2; l++) {
        char n[128];
#define W(what, dt, a, b) (snprintf(n, sizeof n, "model.layers.%d.%s", l, what), add_random(m, n, dt, 2, a, b))
#define B(what, a) (snprintf(n, sizeof n, "model.layers.%d.%s", l, what), add_random(m, n, LLMOPT_DTYPE_F32, 1, a, 1))
        W("self_attn.q_proj.weight", wt[l], NH * D, C);
        W("self_attn.k_proj.weight", wt[l + 1], NKV * D, C);
        W("self_attn.v_proj.weight", wt[l + 2], NKV * D, C);
        W("self_attn.o_proj.weight", wt[l + 3], C, NH * D);
        W("mlp.gate_proj.weight", wt[l + 4], FF, C);
        W("mlp.up_proj.weight", LLMOPT_DTYPE_F32, FF, C);
        W("mlp.down_proj.weight", wt[l], C, FF);
        B("self_attn.q_proj.bias", NH * D);
        B("self_attn.k_proj.bias", NKV * D);
        B("self_attn.v_proj.bias", NKV * D);
        B("self_attn.o_proj.bias", C);
        B("input_layernorm.weight", C);
        B("post_attention_layernorm.weight", C);
#undef W
#undef B
    }
    return m;
}

/* A 1-layer GPT-2 (Conv1D weights [in, out]) with f32 and f16 weights, tied embeddings. */
static llmopt_model *make_gpt2(void) {
    llmopt_model *m = rt_model_new("gpt2");
    set_config(m, "{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": 1, \"vocab_size\": 300, "
                  "\"n_positions\": 64, \"layer_norm_epsilon\": 1e-5}");
    add_random(m, "transformer.wte.weight", LLMOPT_DTYPE_F32, 2, V, C);
    add_random(m, "transformer.wpe.weight", LLMOPT_DTYPE_F16, 2, 64, C);
    add_random(m, "transformer.ln_f.weight", LLMOPT_DTYPE_F32, 1, C, 1);
    add_random(m, "transformer.ln_f.bias", LLMOPT_DTYPE_F32, 1, C, 1);
    struct { const char *n; int64_t a, b; int dt; } t[] = {
        {"ln_1.weight", C, 0, 0}, {"ln_1.bias", C, 0, 0}, {"ln_2.weight", C, 0, 0}, {"ln_2.bias", C, 0, 0},
        {"attn.c_attn.weight", C, 3 * C, LLMOPT_DTYPE_F16}, {"attn.c_attn.bias", 3 * C, 0, 0},
        {"attn.c_proj.weight", C, C, LLMOPT_DTYPE_F32}, {"attn.c_proj.bias", C, 0, 0},
        {"mlp.c_fc.weight", C, 4 * C, LLMOPT_DTYPE_BF16}, {"mlp.c_fc.bias", 4 * C, 0, 0},
        {"mlp.c_proj.weight", 4 * C, C, LLMOPT_DTYPE_F32}, {"mlp.c_proj.bias", C, 0, 0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char n[128];
        snprintf(n, sizeof n, "transformer.h.0.%s", t[i].n);
        add_random(m, n, t[i].b ? t[i].dt : LLMOPT_DTYPE_F32, t[i].b ? 2 : 1, t[i].a, t[i].b ? t[i].b : 1);
    }
    return m;
}

/* A byte-level BPE (GPT-2 style) that spells "hello world" in two tokens. */
static const char BYTE_LEVEL_TOKENIZER[] =
    "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 0, \"content\": \"<|endoftext|>\", \"single_word\": false, "
    "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}], \"normalizer\": null, "
    "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true}, "
    "\"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false, \"use_regex\": true}, "
    "\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true}, "
    "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null, "
    "\"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"vocab\": {\"<|endoftext|>\": 0, "
    "\"h\": 1, \"e\": 2, \"l\": 3, \"o\": 4, \"\xc4\xa0\": 5, \"w\": 6, \"r\": 7, \"d\": 8, \"he\": 9, \"ll\": 10, "
    "\"hell\": 11, \"hello\": 12, \"\xc4\xa0w\": 13, \"or\": 14, \"\xc4\xa0wor\": 15, \"ld\": 16, \"\xc4\xa0world\": 17}, "
    "\"merges\": [\"h e\", \"l l\", \"he ll\", \"hell o\", \"\xc4\xa0 w\", \"o r\", \"\xc4\xa0w or\", \"l d\", "
    "\"\xc4\xa0wor ld\"]}}";
static const char BYTE_LEVEL_CONFIG[] = "{\"bos_token\": \"<|endoftext|>\", \"eos_token\": \"<|endoftext|>\"}";

/* A Llama-style BPE with byte fallback: <unk> <s> </s>, 256 byte tokens, then pieces. */
static char *llama_tokenizer_json(void) {
    json_t *vocab = json_object(), *merges = json_array();
    const char *head[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) json_object_set_new(vocab, head[i], json_integer(i));
    for (int b = 0; b < 256; b++) {
        char k[8];
        snprintf(k, sizeof k, "<0x%02X>", b);
        json_object_set_new(vocab, k, json_integer(3 + b));
    }
    const char *pieces[] = {"\xe2\x96\x81", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "\xe2\x96\x81he", "\xe2\x96\x81hell",
                            "\xe2\x96\x81hello", "\xe2\x96\x81w", "or", "\xe2\x96\x81wor", "ld", "\xe2\x96\x81world"};
    for (int i = 0; i < 18; i++) json_object_set_new(vocab, pieces[i], json_integer(259 + i));
    const char *mg[] = {"h e", "l l", "\xe2\x96\x81 he", "\xe2\x96\x81he ll", "\xe2\x96\x81hell o", "\xe2\x96\x81 w", "o r",
                        "\xe2\x96\x81w or", "l d", "\xe2\x96\x81wor ld"};
    for (int i = 0; i < 10; i++) json_array_append_new(merges, json_string(mg[i]));
    json_t *model = json_pack("{s:s, s:s, s:b, s:b, s:o, s:o}", "type", "BPE", "unk_token", "<unk>", "fuse_unk", 1,
                              "byte_fallback", 1, "vocab", vocab, "merges", merges);
    json_t *added = json_array();
    for (int i = 0; i < 3; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", i, "content", head[i],
                                               "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1));
    json_t *root = json_pack(
        "{s:s, s:o, s:n, s:{s:s, s:s, s:s, s:b}, s:{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]}, "
        "s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[], s:{s:{s:s, s:[i], s:[s]}}}, s:o}",
        "version", "1.0", "added_tokens", added, "normalizer", "pre_tokenizer", "type", "Metaspace", "replacement",
        "\xe2\x96\x81", "prepend_scheme", "first", "split", 1, "decoder", "type", "Sequence", "decoders", "type", "Replace",
        "pattern", "String", "\xe2\x96\x81", "content", " ", "type", "ByteFallback", "type", "Fuse", "type", "Strip",
        "content", " ", "start", 1, "stop", 0, "post_processor", "type", "TemplateProcessing", "single", "SpecialToken",
        "id", "<s>", "type_id", 0, "Sequence", "id", "A", "type_id", 0, "pair", "special_tokens", "<s>", "id", "<s>", "ids",
        1, "tokens", "<s>", "model", model);
    assert_non_null(root);
    char *text = json_dumps(root, 0);
    json_decref(root);
    return text;
}
static const char LLAMA_CONFIG[] = "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\", "
                                   "\"add_bos_token\": true}";

/* ---- helpers ---- */

static char *tmp_path(char **dir, const char *name) {
    *dir = make_test_dir("gguf");
    return fs_join(*dir, name);
}

/* The file at path, parsed (buf must outlive f). */
static gguf_file *parse_file(const char *path, char **buf) {
    size_t len;
    llmopt_error err = {0};
    assert_int_equal(fs_read_all(path, buf, &len, NULL), 0);
    gguf_file *f = NULL;
    int rc = gguf_parse(path, (const uint8_t *)*buf, len, &f, &err);
    if (rc) fail_msg("%s", err.msg);
    return f;
}

static uint64_t key_u(const gguf_file *f, const char *key) {
    long i = gguf_find_key(f, key);
    if (i < 0) fail_msg("missing key %s", key);
    uint64_t v;
    assert_int_equal(gguf_get_u64(f, (size_t)i, &v), 0);
    return v;
}

static double key_f(const gguf_file *f, const char *key) {
    long i = gguf_find_key(f, key);
    if (i < 0) fail_msg("missing key %s", key);
    double v;
    assert_int_equal(gguf_get_f64(f, (size_t)i, &v), 0);
    return v;
}

static const char *key_s(const gguf_file *f, const char *key) {
    long i = gguf_find_key(f, key);
    if (i < 0) fail_msg("missing key %s", key);
    return gguf_get_str(f, (size_t)i, NULL);
}

/* Every tensor of a equals the one of the same name in b: dtype, shape and bytes. */
static void assert_same_tensors(const llmopt_model *a, const llmopt_model *b) {
    assert_int_equal(rt_model_n_tensors(a), rt_model_n_tensors(b));
    for (size_t i = 0; i < rt_model_n_tensors(a); i++) {
        const char *name = rt_model_tensor_name(a, i);
        const llmopt_tensor *x = rt_model_get(a, name), *y = rt_model_get(b, name);
        if (!y) fail_msg("tensor %s is missing after the round trip", name);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->ndim, y->ndim);
        assert_memory_equal(x->shape, y->shape, sizeof x->shape);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes) != 0) fail_msg("tensor %s differs after the round trip", name);
    }
}

/* ---- write -> parse ---- */

static void written_llama_has_the_architecture_keys(void **state) {
    (void)state;
    llmopt_model *m = make_llama();
    char *dir, *path = tmp_path(&dir, "m.gguf"), *buf = NULL;
    llmopt_error err = {0};
    assert_int_equal(gguf_write(m, path, &err), 0);
    gguf_file *f = parse_file(path, &buf);
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_alignment(f), 32);
    assert_string_equal(key_s(f, "general.architecture"), "llama");
    assert_int_equal(key_u(f, "general.alignment"), 32);
    assert_int_equal(key_u(f, "llama.block_count"), 2);
    assert_int_equal(key_u(f, "llama.embedding_length"), C);
    assert_int_equal(key_u(f, "llama.feed_forward_length"), FF);
    assert_int_equal(key_u(f, "llama.attention.head_count"), NH);
    assert_int_equal(key_u(f, "llama.attention.head_count_kv"), NKV);
    assert_int_equal(key_u(f, "llama.context_length"), 128);
    assert_int_equal(key_u(f, "llama.rope.dimension_count"), D);
    assert_int_equal(key_u(f, "llama.vocab_size"), V);
    assert_true(key_f(f, "llama.rope.freq_base") == 500000.0);
    assert_true(key_f(f, "llama.attention.layer_norm_rms_epsilon") == (double)1e-5f);
    assert_string_equal(key_s(f, "llama.rope.scaling.type"), "linear");
    assert_true(key_f(f, "llama.rope.scaling.factor") == 2.0);
    assert_int_equal(key_u(f, "general.quantization_version"), 2);
    assert_int_equal(gguf_find_key(f, "tokenizer.ggml.model"), -1);  /* the model has no tokenizer.json */
    gguf_file_free(f);
    free(buf);
    free(path);
    remove_dir(dir);
    rt_model_unref(m);
}

static void written_tensors_have_llama_cpp_names_types_dims_and_layout(void **state) {
    (void)state;
    llmopt_model *m = make_llama();
    char *dir, *path = tmp_path(&dir, "m.gguf"), *buf = NULL;
    assert_int_equal(gguf_write(m, path, NULL), 0);
    gguf_file *f = parse_file(path, &buf);
    assert_int_equal(gguf_n_tensors(f), rt_model_n_tensors(m));
    struct { const char *gguf, *hf; uint32_t type; } want[] = {
        {"token_embd.weight", "model.embed_tokens.weight", GGML_TYPE_F32},
        {"output.weight", "lm_head.weight", GGML_TYPE_Q8_0},
        {"blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", GGML_TYPE_F16},
        {"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", GGML_TYPE_F16},
        {"blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", GGML_TYPE_Q4_0},
        {"blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight", GGML_TYPE_Q4_1},
        {"blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", GGML_TYPE_BF16},
        {"blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight", GGML_TYPE_F16},
        {"blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", GGML_TYPE_F32},
        {"blk.1.attn_norm.weight", "model.layers.1.input_layernorm.weight", GGML_TYPE_F32},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        long k = gguf_find_tensor(f, want[i].gguf);
        if (k < 0) fail_msg("no tensor %s", want[i].gguf);
        const gguf_tensor_info *ti = gguf_tensor(f, (size_t)k);
        const llmopt_tensor *t = rt_model_get(m, want[i].hf);
        assert_int_equal(ti->type, want[i].type);
        assert_int_equal(ti->n_dims, t->ndim);
        assert_int_equal(ti->ne[0], t->shape[t->ndim - 1]);  /* ne[0] is the row length */
        if (t->ndim == 2) assert_int_equal(ti->ne[1], t->shape[0]);
        assert_int_equal(ti->nbytes, t->nbytes);
        assert_int_equal((ti->offset - gguf_data_offset(f)) % 32, 0);
        if (!strstr(want[i].gguf, "attn_q") && !strstr(want[i].gguf, "attn_k"))
            assert_memory_equal(buf + ti->offset, t->data, t->nbytes);
    }
    /* q rows of head h: HF [x0 .. x7, y0 .. y7] -> GGUF [x0, y0, x1, y1, ...] (llama.cpp's permute) */
    const gguf_tensor_info *q = gguf_tensor(f, (size_t)gguf_find_tensor(f, "blk.0.attn_q.weight"));
    const llmopt_tensor *hq = rt_model_get(m, "model.layers.0.self_attn.q_proj.weight");
    size_t row = hq->nbytes / (size_t)hq->shape[0];
    for (int h = 0; h < NH; h++)
        for (int j = 0; j < D / 2; j++)
            for (int s = 0; s < 2; s++)
                assert_memory_equal(buf + q->offset + (size_t)(h * D + 2 * j + s) * row,
                                    (const uint8_t *)hq->data + (size_t)(h * D + s * D / 2 + j) * row, row);
    const gguf_tensor_info *kb = gguf_tensor(f, (size_t)gguf_find_tensor(f, "blk.1.attn_k.bias"));
    const float *hk = rt_model_get(m, "model.layers.1.self_attn.k_proj.bias")->data;
    const uint8_t *gk = (const uint8_t *)buf + kb->offset;
    for (int h = 0; h < NKV; h++)  /* biases follow their rows; k uses the kv head count */
        for (int j = 0; j < D / 2; j++) assert_memory_equal(gk + 4 * (h * D + 2 * j + 1), &hk[h * D + D / 2 + j], 4);
    gguf_file_free(f);
    free(buf);
    free(path);
    remove_dir(dir);
    rt_model_unref(m);
}

static void written_gpt2_transposes_conv1d_and_writes_the_tied_output(void **state) {
    (void)state;
    llmopt_model *m = make_gpt2();
    char *dir, *path = tmp_path(&dir, "m.gguf"), *buf = NULL;
    assert_int_equal(gguf_write(m, path, NULL), 0);
    gguf_file *f = parse_file(path, &buf);
    assert_string_equal(key_s(f, "general.architecture"), "gpt2");
    assert_int_equal(key_u(f, "gpt2.block_count"), 1);
    assert_int_equal(key_u(f, "gpt2.context_length"), 64);
    assert_true(key_f(f, "gpt2.attention.layer_norm_epsilon") == (double)1e-5f);
    const gguf_tensor_info *qkv = gguf_tensor(f, (size_t)gguf_find_tensor(f, "blk.0.attn_qkv.weight"));
    const llmopt_tensor *w = rt_model_get(m, "transformer.h.0.attn.c_attn.weight");  /* [in C, out 3C] */
    assert_int_equal(qkv->type, GGML_TYPE_F16);
    assert_int_equal(qkv->ne[0], C);       /* rows of `in` */
    assert_int_equal(qkv->ne[1], 3 * C);   /* one per output */
    const uint16_t *g = (const uint16_t *)(buf + qkv->offset), *h = w->data;
    for (int o = 0; o < 3 * C; o++)
        for (int i = 0; i < C; i++) assert_int_equal(g[o * C + i], h[i * 3 * C + o]);
    long out = gguf_find_tensor(f, "output.weight"), emb = gguf_find_tensor(f, "token_embd.weight");
    assert_true(out >= 0 && emb >= 0);
    assert_memory_equal(buf + gguf_tensor(f, (size_t)out)->offset, buf + gguf_tensor(f, (size_t)emb)->offset,
                        gguf_tensor(f, (size_t)emb)->nbytes);
    gguf_file_free(f);
    free(buf);
    free(path);
    remove_dir(dir);
    rt_model_unref(m);
}

/* ---- write -> load ---- */

static void round_trip(llmopt_model *m) {
    char *dir, *path = tmp_path(&dir, "m.gguf");
    llmopt_error err = {0};
    llmopt_model *back = NULL;
    assert_int_equal(gguf_write(m, path, &err), 0);
    int rc = rt_model_load(path, &back, &err);  /* through the .gguf hook */
    if (rc) fail_msg("%s", err.msg);
    assert_string_equal(rt_model_arch(back), rt_model_arch(m));
    assert_same_tensors(m, back);
    const char *keys[] = {"hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
                          "vocab_size", "max_position_embeddings", "n_embd", "n_head", "n_layer", "n_positions"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        double a, b;
        if (rt_model_cfg_get_num(m, keys[i], &a) != 0) continue;
        assert_int_equal(rt_model_cfg_get_num(back, keys[i], &b), 0);
        assert_true(a == b);
    }
    rt_model_unref(back);
    free(path);
    remove_dir(dir);
}

static void llama_round_trips_bit_for_bit(void **state) {
    (void)state;
    llmopt_model *m = make_llama();
    round_trip(m);
    rt_model_unref(m);
}

static void gpt2_round_trips_bit_for_bit(void **state) {
    (void)state;
    llmopt_model *m = make_gpt2();
    round_trip(m);
    rt_model_unref(m);
}

static void loaded_config_keeps_rope_and_tying(void **state) {
    (void)state;
    llmopt_model *m = make_llama(), *back = NULL;
    char *dir, *path = tmp_path(&dir, "m.gguf");
    assert_int_equal(gguf_write(m, path, NULL), 0);
    assert_int_equal(gguf_load(path, &back, NULL), 0);
    json_t *cfg = rt_model_config_json(back);
    assert_true(json_real_value(json_object_get(json_object_get(cfg, "rope_scaling"), "factor")) == 2.0);
    assert_true(json_number_value(json_object_get(cfg, "rope_theta")) == 500000.0);
    assert_true(json_is_false(json_object_get(cfg, "tie_word_embeddings")));
    assert_string_equal(rt_model_cfg_get_str(back, "model_type"), "llama");
    rt_model_unref(back);
    rt_model_unref(m);
    free(path);
    remove_dir(dir);
}

/* make_llama with llama3 rope scaling (Llama 3.1's keys) in place of its linear one. */
static llmopt_model *make_llama3(double factor, double lo, double hi, int ctx) {
    llmopt_model *m = make_llama();
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"num_hidden_layers\": 2, \"intermediate_size\": 96, "
             "\"vocab_size\": 300, \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-5, "
             "\"rope_theta\": 500000.0, \"attention_bias\": true, \"tie_word_embeddings\": false, "
             "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %g, \"low_freq_factor\": %g, "
             "\"high_freq_factor\": %g, \"original_max_position_embeddings\": %d}}", factor, lo, hi, ctx);
    set_config(m, cfg);
    return m;
}

static void expect_same_rope(const llmopt_model *a, const llmopt_model *b) {
    arch_config ca, cb;
    assert_int_equal(arch_from_model(a, &ca, NULL), 0);
    assert_int_equal(arch_from_model(b, &cb, NULL), 0);
    assert_int_equal(cb.rope_n_freq, D / 2);
    assert_int_equal(ca.rope_n_freq, cb.rope_n_freq);
    for (int i = 0; i < ca.rope_n_freq; i++) assert_float_equal(cb.rope_inv_freq[i], ca.rope_inv_freq[i], 1e-6 * ca.rope_inv_freq[i]);
}

/* GGUF keeps llama3 rope scaling as rope_freqs.weight (llama.cpp's converter does); loading
 * finds the rope_scaling that gives those factors: Llama 3's own keys back as they were, others
 * as keys that give the same frequencies. */
static void llama3_rope_scaling_round_trips_through_rope_freqs(void **state) {
    (void)state;
    char *dir, *path = tmp_path(&dir, "m.gguf");
    llmopt_model *m = make_llama3(8.0, 1.0, 4.0, 8192), *back = NULL;
    assert_int_equal(gguf_write(m, path, NULL), 0);
    gguf_file *f = NULL;
    char *buf = NULL;
    size_t len;
    assert_int_equal(fs_read_all(path, &buf, &len, NULL), 0);
    llmopt_error err = {0};
    assert_int_equal(gguf_parse(path, (const uint8_t *)buf, len, &f, &err), 0);
    long t = gguf_find_tensor(f, "rope_freqs.weight");
    assert_true(t >= 0);
    assert_int_equal(gguf_tensor(f, (size_t)t)->ne[0], D / 2);
    assert_true(gguf_find_key(f, "llama.rope.scaling.type") < 0);
    float *div = (float *)(buf + gguf_tensor(f, (size_t)t)->offset); /* from the start of the file */
    gguf_file_free(f);
    assert_int_equal(gguf_load(path, &back, &err), 0);
    json_t *rs = json_object_get(rt_model_config_json(back), "rope_scaling");
    assert_string_equal(json_string_value(json_object_get(rs, "rope_type")), "llama3");
    assert_true(json_number_value(json_object_get(rs, "factor")) == 8.0);
    assert_true(json_number_value(json_object_get(rs, "low_freq_factor")) == 1.0);
    assert_true(json_number_value(json_object_get(rs, "high_freq_factor")) == 4.0);
    assert_true(json_integer_value(json_object_get(rs, "original_max_position_embeddings")) == 8192);
    assert_null(rt_model_get(back, "rope_freqs.weight"));
    expect_same_rope(m, back);
    rt_model_unref(back);
    /* factors no llama3 scaling gives: one below 1, one off the ramp at a long wavelength */
    float keep = div[0];
    div[0] = 0.5f;
    assert_int_equal(gguf_load_mem("bad.gguf", (const uint8_t *)buf, len, &back, &err), LLMOPT_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "bad.gguf: tensor 'rope_freqs.weight': factor 0 is 0.5"));
    div[0] = keep;
    div[D / 2 - 1] = 3.0f;
    assert_int_equal(gguf_load_mem("bad.gguf", (const uint8_t *)buf, len, &back, &err), LLMOPT_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "rope factors that llama3 rope scaling does not give"));
    assert_null(back);
    free(buf);
    rt_model_unref(m);
    /* other keys: the frequencies survive */
    m = make_llama3(4.0, 2.0, 16.0, 20000);
    assert_int_equal(gguf_write(m, path, NULL), 0);
    assert_int_equal(gguf_load(path, &back, &err), 0);
    expect_same_rope(m, back);
    rt_model_unref(back);
    rt_model_unref(m);
    free(path);
    remove_dir(dir);
}

/* The rebuilt tokenizer.json encodes as the original. */
static void tokenizer_survives(llmopt_model *m, const char *json, const char *config, const char *text, const char *model_kind) {
    assert_int_equal(rt_model_set_file(m, "tokenizer.json", json, strlen(json)), 0);
    assert_int_equal(rt_model_set_file(m, "tokenizer_config.json", config, strlen(config)), 0);
    char *dir, *path = tmp_path(&dir, "m.gguf"), *buf = NULL;
    llmopt_error err = {0};
    assert_int_equal(gguf_write(m, path, &err), 0);
    gguf_file *f = parse_file(path, &buf);
    assert_string_equal(key_s(f, "tokenizer.ggml.model"), model_kind);
    assert_int_equal(gguf_arr_n(f, (size_t)gguf_find_key(f, "tokenizer.ggml.tokens")), V);  /* padded to the vocab */
    gguf_file_free(f);
    free(buf);
    llmopt_model *back = NULL;
    int rc = gguf_load(path, &back, &err);
    if (rc) fail_msg("%s", err.msg);
    size_t len, clen;
    const char *tj = rt_model_get_file(back, "tokenizer.json", &len), *tc = rt_model_get_file(back, "tokenizer_config.json", &clen);
    assert_non_null(tj);
    tok_tokenizer *a = NULL, *b = NULL;
    assert_int_equal(tok_load_mem("orig", json, strlen(json), config, strlen(config), NULL, 0, &a, &err), 0);
    rc = tok_load_mem("rebuilt", tj, len, tc, clen, NULL, 0, &b, &err);
    if (rc) fail_msg("%s", err.msg);
    int32_t *x = NULL, *y = NULL;
    size_t nx, ny;
    assert_int_equal(tok_encode(a, text, strlen(text), 1, &x, &nx, NULL), 0);
    assert_int_equal(tok_encode(b, text, strlen(text), 1, &y, &ny, NULL), 0);
    assert_int_equal(nx, ny);
    assert_memory_equal(x, y, nx * sizeof *x);
    assert_int_equal(tok_bos(a), tok_bos(b));
    assert_int_equal(tok_eos(a), tok_eos(b));
    free(x);
    free(y);
    tok_free(a);
    tok_free(b);
    rt_model_unref(back);
    free(path);
    remove_dir(dir);
}

static void byte_level_tokenizer_survives_the_round_trip(void **state) {
    (void)state;
    llmopt_model *m = make_gpt2();
    tokenizer_survives(m, BYTE_LEVEL_TOKENIZER, BYTE_LEVEL_CONFIG, "hello world<|endoftext|>hello", "gpt2");
    rt_model_unref(m);
}

static void byte_fallback_tokenizer_survives_the_round_trip(void **state) {
    (void)state;
    llmopt_model *m = make_llama();
    char *json = llama_tokenizer_json();
    tokenizer_survives(m, json, LLAMA_CONFIG, "hello world \xc3\xa9!", "llama");
    free(json);
    rt_model_unref(m);
}

static void quantized_gpt2_conv1d_weights_round_trip_as_out_in_rows(void **state) {
    (void)state;
    llmopt_model *m = make_gpt2(); /* quantized Conv1D weights are [out, in], as GGUF stores them */
    add_random(m, "transformer.h.0.mlp.c_fc.weight", LLMOPT_DTYPE_Q8_0, 2, 4 * C, C);
    add_random(m, "transformer.h.0.attn.c_attn.weight", LLMOPT_DTYPE_Q4_0, 2, 3 * C, C);
    round_trip(m);
    rt_model_unref(m);
}

static void quantized_conv1d_weight_in_the_float_layout_is_refused_on_write(void **state) {
    (void)state;
    llmopt_model *m = make_gpt2();
    add_random(m, "transformer.h.0.mlp.c_fc.weight", LLMOPT_DTYPE_Q8_0, 2, C, 4 * C); /* [in, out]: not a layout */
    char *dir, *path = tmp_path(&dir, "m.gguf");
    llmopt_error err = {0};
    assert_int_equal(gguf_write(m, path, &err), LLMOPT_EFORMAT);
    assert_non_null(strstr(err.msg, "transformer.h.0.mlp.c_fc.weight"));
    assert_non_null(strstr(err.msg, "the config implies [256, 64]"));
    assert_false(fs_exists(path));
    free(path);
    remove_dir(dir);
    rt_model_unref(m);
}

/* ---- malformed files, made by hand ---- */

typedef struct bb {
    uint8_t p[4096];
    size_t n;
} bb;

static void put(bb *b, uint64_t v, int n) {
    for (int i = 0; i < n; i++) b->p[b->n++] = (uint8_t)(v >> (8 * i));
}
static void put_str(bb *b, const char *s) {
    put(b, strlen(s), 8);
    memcpy(b->p + b->n, s, strlen(s));
    b->n += strlen(s);
}

/* What the file holds; each test changes one thing. */
typedef struct spec {
    uint32_t version;
    uint64_t n_tensors_override;  /* 0: the real count */
    uint64_t str_len_override;    /* 0: the real length of general.architecture's value */
    int bad_array_type;           /* adds a key "test.list" holding an array of this type, when non-zero */
    uint32_t type_b;              /* tensor 'b''s ggml type */
    uint64_t off_b;
    uint64_t ne_a[2];
    uint32_t ndims_a;
} spec;

static spec good(void) {
    return (spec){.version = 3, .type_b = GGML_TYPE_F32, .off_b = 128, .ne_a = {32, 1}, .ndims_a = 1};
}

/* Header, general.architecture = "llama", tensors a (f32) at 0 and b at off_b, 256 data bytes. */
static size_t build(const spec *s, bb *b) {
    b->n = 0;
    memcpy(b->p, "GGUF", 4);
    b->n = 4;
    put(b, s->version, 4);
    put(b, s->n_tensors_override ? s->n_tensors_override : 2, 8);
    put(b, s->bad_array_type ? 2 : 1, 8);
    put_str(b, "general.architecture");
    put(b, GGUF_TYPE_STRING, 4);
    put(b, s->str_len_override ? s->str_len_override : 5, 8);
    memcpy(b->p + b->n, "llama", 5);
    b->n += 5;
    if (s->bad_array_type) {
        put_str(b, "test.list");
        put(b, GGUF_TYPE_ARRAY, 4);
        put(b, (uint64_t)s->bad_array_type, 4);
        put(b, 1, 8);
        put(b, 0, 4);
    }
    put_str(b, "a");
    put(b, s->ndims_a, 4);
    for (uint32_t d = 0; d < s->ndims_a; d++) put(b, s->ne_a[d], 8);
    put(b, GGML_TYPE_F32, 4);
    put(b, 0, 8);
    put_str(b, "b");
    put(b, 1, 4);
    put(b, 32, 8);
    put(b, s->type_b, 4);
    put(b, s->off_b, 8);
    while (b->n % 32) b->p[b->n++] = 0;
    memset(b->p + b->n, 0, 256);
    b->n += 256;
    return b->n;
}

/* gguf_parse of the buffer fails with status, and the message names the file and each want. */
static void expect_parse_fails(const bb *b, size_t len, int status, const char *w1, const char *w2) {
    llmopt_error err = {0};
    gguf_file *f = (gguf_file *)1;
    assert_int_equal(gguf_parse("bad.gguf", b->p, len, &f, &err), status);
    assert_null(f);
    assert_int_equal(err.status, status);
    if (!strstr(err.msg, "bad.gguf")) fail_msg("message does not name the file: %s", err.msg);
    if (w1 && !strstr(err.msg, w1)) fail_msg("message lacks '%s': %s", w1, err.msg);
    if (w2 && !strstr(err.msg, w2)) fail_msg("message lacks '%s': %s", w2, err.msg);
    assert_null(strchr(err.msg, '\n'));
}

static void the_hand_made_file_is_valid(void **state) {
    (void)state;
    bb b;
    spec s = good();
    size_t n = build(&s, &b);
    gguf_file *f = NULL;
    llmopt_error err = {0};
    assert_int_equal(gguf_parse("good.gguf", b.p, n, &f, &err), 0);
    assert_int_equal(gguf_n_tensors(f), 2);
    assert_int_equal(gguf_tensor(f, 1)->offset, gguf_data_offset(f) + 128);
    assert_string_equal(key_s(f, "general.architecture"), "llama");
    gguf_file_free(f);
}

static void bad_magic_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    size_t n = build(&s, &b);
    b.p[0] = 'X';
    expect_parse_fails(&b, n, LLMOPT_EFORMAT, "magic", NULL);
}

static void version_1_is_unsupported(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.version = 1;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EUNSUPPORTED, "version", "1");
}

static void version_4_is_unsupported(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.version = 4;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EUNSUPPORTED, "version", "4");
}

static void truncated_header_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    build(&s, &b);
    expect_parse_fails(&b, 20, LLMOPT_EFORMAT, "header", NULL);
    expect_parse_fails(&b, 40, LLMOPT_EFORMAT, "tensor_count", "cannot fit");  /* counts the rest cannot hold */
    expect_parse_fails(&b, 100, LLMOPT_EFORMAT, "tensor 'a'", "beyond the end");  /* cut inside a tensor info */
}

static void string_longer_than_the_file_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.str_len_override = 1ull << 40;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "general.architecture", "beyond the end");
}

static void absurd_tensor_count_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.n_tensors_override = 1ull << 50;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "tensor_count", NULL);
}

static void array_of_unknown_type_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.bad_array_type = 77;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "test.list", "77");
}

static void unknown_tensor_type_is_unsupported(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.type_b = 1000;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EUNSUPPORTED, "tensor 'b'", "1000");
}

static void misaligned_tensor_offset_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.off_b = 132;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "tensor 'b'", "alignment");
}

static void tensor_data_beyond_the_file_is_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.off_b = 4096;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "tensor 'b'", "beyond");
}

static void overlapping_tensors_are_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.off_b = 0;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "'a' and 'b' overlap", NULL);
}

static void dims_whose_product_overflows_are_refused(void **state) {
    (void)state;
    bb b;
    spec s = good();
    s.ndims_a = 2;
    s.ne_a[0] = 1ull << 40;
    s.ne_a[1] = 1ull << 40;
    expect_parse_fails(&b, build(&s, &b), LLMOPT_EFORMAT, "tensor 'a'", "too large");
}

static void tensor_type_llmopt_cannot_run_is_unsupported_on_load(void **state) {
    (void)state;
    /* a valid llama GGUF whose embedding is i16 (a ggml type llmopt has no dtype for): the parser
     * accepts it, the loader names it */
    llmopt_model *m = make_llama();
    char *dir, *path = tmp_path(&dir, "m.gguf"), *buf = NULL;
    assert_int_equal(gguf_write(m, path, NULL), 0);
    size_t len;
    assert_int_equal(fs_read_all(path, &buf, &len, NULL), 0);
    const char *needle = "token_embd.weight";  /* its tensor info: name, n_dims, ne[2], type */
    char *at = NULL;
    for (size_t i = 0; !at && i + strlen(needle) <= len; i++)
        if (memcmp(buf + i, needle, strlen(needle)) == 0 && buf[i - 8] == (char)strlen(needle)) at = buf + i;
    assert_non_null(at);
    uint8_t *type = (uint8_t *)at + strlen(needle) + 4 + 2 * 8;
    assert_int_equal(type[0], GGML_TYPE_F32);
    type[0] = 25;  /* i16: the file stays consistent, half the bytes */
    assert_int_equal(fs_write_atomic(path, buf, len, NULL), 0);
    llmopt_model *back = NULL;
    llmopt_error err = {0};
    assert_int_equal(gguf_load(path, &back, &err), LLMOPT_EUNSUPPORTED);
    assert_null(back);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "token_embd.weight"));
    assert_non_null(strstr(err.msg, "i16"));
    free(buf);
    free(path);
    remove_dir(dir);
    rt_model_unref(m);
}

static void zero_kv_heads_are_refused_on_load_not_divided_by(void **state) {
    (void)state;
    /* fuzz_gguf's regress-permute-zero-rows: k rows are un-permuted per kv head, so a
     * head_count_kv of 0 (or a k weight of 0 rows) was a division by zero in the loader */
    llmopt_model *m = make_llama();
    char *dir, *path = tmp_path(&dir, "m.gguf"), *buf = NULL;
    assert_int_equal(gguf_write(m, path, NULL), 0);
    size_t len;
    assert_int_equal(fs_read_all(path, &buf, &len, NULL), 0);
    const char *key = "llama.attention.head_count_kv";  /* key, then u32 type and u32 value */
    char *at = NULL;
    for (size_t i = 8; !at && i + strlen(key) + 8 <= len; i++)
        if (memcmp(buf + i, key, strlen(key)) == 0 && buf[i - 8] == (char)strlen(key)) at = buf + i;
    assert_non_null(at);
    uint8_t *v = (uint8_t *)at + strlen(key) + 4;
    assert_int_not_equal(v[0], 0);
    memset(v, 0, 4);
    llmopt_model *back = NULL;
    llmopt_error err = {0};
    assert_int_equal(gguf_load_mem("zero-kv.gguf", (const uint8_t *)buf, len, &back, &err), LLMOPT_EFORMAT);
    assert_null(back);
    assert_non_null(strstr(err.msg, "zero-kv.gguf"));
    assert_non_null(strstr(err.msg, "attn_k.weight"));
    assert_non_null(strstr(err.msg, "0 heads"));
    free(buf);
    free(path);
    remove_dir(dir);
    rt_model_unref(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(written_llama_has_the_architecture_keys),
        cmocka_unit_test(written_tensors_have_llama_cpp_names_types_dims_and_layout),
        cmocka_unit_test(written_gpt2_transposes_conv1d_and_writes_the_tied_output),
        cmocka_unit_test(llama_round_trips_bit_for_bit),
        cmocka_unit_test(gpt2_round_trips_bit_for_bit),
        cmocka_unit_test(loaded_config_keeps_rope_and_tying),
        cmocka_unit_test(llama3_rope_scaling_round_trips_through_rope_freqs),
        cmocka_unit_test(byte_level_tokenizer_survives_the_round_trip),
        cmocka_unit_test(byte_fallback_tokenizer_survives_the_round_trip),
        cmocka_unit_test(quantized_gpt2_conv1d_weights_round_trip_as_out_in_rows),
        cmocka_unit_test(quantized_conv1d_weight_in_the_float_layout_is_refused_on_write),
        cmocka_unit_test(the_hand_made_file_is_valid),
        cmocka_unit_test(bad_magic_is_refused),
        cmocka_unit_test(version_1_is_unsupported),
        cmocka_unit_test(version_4_is_unsupported),
        cmocka_unit_test(truncated_header_is_refused),
        cmocka_unit_test(string_longer_than_the_file_is_refused),
        cmocka_unit_test(absurd_tensor_count_is_refused),
        cmocka_unit_test(array_of_unknown_type_is_refused),
        cmocka_unit_test(unknown_tensor_type_is_unsupported),
        cmocka_unit_test(misaligned_tensor_offset_is_refused),
        cmocka_unit_test(tensor_data_beyond_the_file_is_refused),
        cmocka_unit_test(overlapping_tensors_are_refused),
        cmocka_unit_test(dims_whose_product_overflows_are_refused),
        cmocka_unit_test(tensor_type_llmopt_cannot_run_is_unsupported_on_load),
        cmocka_unit_test(zero_kv_heads_are_refused_on_load_not_divided_by),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
