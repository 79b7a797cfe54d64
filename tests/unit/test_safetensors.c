/* Unit tests for loading Hugging Face model directories (host/runtime/safetensors_read.c):
 * round trips with the writer, sharded checkpoints, the refcounted mapping, and one test per
 * malformed input, each checking the status and that the message names the file and field. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "runtime/runtime.h"
#include "util/fs.h"

/* ---- helpers ---- */

static char *make_tmpdir(void) { return make_test_dir("safetensors"); }

static void write_file(const char *dir, const char *name, const void *p, size_t n) {
    char *path = fs_join(dir, name);
    assert_int_equal(fs_write_atomic(path, p, n, NULL), 0);
    free(path);
}

static void write_text(const char *dir, const char *name, const char *text) {
    write_file(dir, name, text, strlen(text));
}

/* A safetensors file made by hand: 8-byte LE header length, header text as given, data. */
static void write_st(const char *dir, const char *name, const char *header, const void *data,
                     size_t dlen) {
    size_t hlen = strlen(header), n = 8 + hlen + dlen;
    unsigned char *buf = malloc(n);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    if (dlen) memcpy(buf + 8 + hlen, data, dlen);
    write_file(dir, name, buf, n);
    free(buf);
}

/* A fresh directory with a minimal config.json. */
static char *make_model_dir(void) {
    char *dir = make_tmpdir();
    write_text(dir, "config.json", "{\"model_type\": \"gpt2\", \"n_layer\": 1}");
    return dir;
}

static char *read_file(const char *dir, const char *name, size_t *len) {
    char *path = fs_join(dir, name), *buf = NULL;
    assert_int_equal(fs_read_all(path, &buf, len, NULL), 0);
    free(path);
    return buf;
}

/* The load fails with status, returns no model, and the message holds each non-NULL want. */
static void expect_load_fails(const char *dir, int status, const char *w1, const char *w2,
                              const char *w3) {
    llmopt_error err = {0};
    llmopt_model *m = rt_model_new("sentinel");
    llmopt_model *keep = m;
    assert_int_equal(rt_model_load(dir, &m, &err), status);
    assert_null(m);
    assert_int_equal(err.status, status);
    assert_null(strchr(err.msg, '\n'));
    const char *want[3] = {w1, w2, w3};
    for (int i = 0; i < 3; i++)
        if (want[i] && !strstr(err.msg, want[i])) fail_msg("'%s' not in message: %s", want[i], err.msg);
    rt_model_unref(keep);
}

/* model.safetensors with this header and dlen bytes of data must fail to load with EFORMAT and
 * a message naming the file and holding w1 and w2. */
static void expect_bad_header(const char *header, size_t dlen, const char *w1, const char *w2) {
    unsigned char data[256];
    memset(data, 0x5a, sizeof data);
    assert_true(dlen <= sizeof data);
    char *dir = make_model_dir();
    write_st(dir, "model.safetensors", header, data, dlen);
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors", w1, w2);
    remove_dir(dir);
}

/* A tensor whose bytes are a pattern that depends on seed. */
static llmopt_tensor *filled(int dtype, int ndim, const int64_t *shape, unsigned seed) {
    llmopt_tensor *t = rt_tensor_new(dtype, ndim, shape);
    assert_non_null(t);
    unsigned char *p = t->data;
    for (size_t i = 0; i < t->nbytes; i++) p[i] = (unsigned char)(seed + 37 * i);
    return t;
}

static void assert_tensors_equal(const llmopt_tensor *a, const llmopt_tensor *b) {
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->ndim, b->ndim);
    for (int d = 0; d < LLMOPT_MAX_DIMS; d++) assert_int_equal(a->shape[d], b->shape[d]);
    assert_int_equal(a->nbytes, b->nbytes);
    if (a->nbytes) assert_memory_equal(a->data, b->data, a->nbytes);
}

/* Same arch, same tensor names in the same order, same tensors. */
static void assert_models_equal(const llmopt_model *a, const llmopt_model *b) {
    assert_string_equal(rt_model_arch(a), rt_model_arch(b));
    assert_int_equal(rt_model_n_tensors(a), rt_model_n_tensors(b));
    for (size_t i = 0; i < rt_model_n_tensors(a); i++) {
        const char *name = rt_model_tensor_name(a, i);
        assert_string_equal(name, rt_model_tensor_name(b, i));
        assert_tensors_equal(rt_model_get(a, name), rt_model_get(b, name));
    }
}

static void assert_cfg_num_bits(const llmopt_model *m, const char *key, double want) {
    double v = 0;
    assert_int_equal(rt_model_cfg_get_num(m, key, &v), 0);
    assert_memory_equal(&v, &want, sizeof v);
}

/* A model with every saveable dtype, a 4-dim tensor, a scalar and an empty tensor. */
static llmopt_model *sample_model(void) {
    static const struct { const char *name; int dtype, ndim; int64_t shape[4]; } spec[] = {
        {"wte.weight", LLMOPT_DTYPE_F32, 2, {2, 3}},
        {"h.0.attn.c_attn.weight", LLMOPT_DTYPE_F16, 3, {4, 1, 2}},
        {"h.0.ln_1.bias", LLMOPT_DTYPE_BF16, 1, {5}},
        {"h.0.conv", LLMOPT_DTYPE_I8, 4, {2, 2, 2, 2}},
        {"empty", LLMOPT_DTYPE_U8, 2, {0, 3}},
        {"ids", LLMOPT_DTYPE_I32, 1, {3}},
        {"step", LLMOPT_DTYPE_I64, 0, {0}},
    };
    llmopt_model *m = rt_model_new("gpt2");
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        llmopt_tensor *t = filled(spec[i].dtype, spec[i].ndim, spec[i].shape, (unsigned)i * 11);
        assert_int_equal(rt_model_set(m, spec[i].name, t), 0);
        rt_tensor_unref(t);
    }
    assert_int_equal(rt_model_cfg_set_num(m, "n_embd", 768), 0);
    assert_int_equal(rt_model_cfg_set_num(m, "rope_theta", 10000.123456789), 0);
    assert_int_equal(rt_model_cfg_set_num(m, "layer_norm_epsilon", 1e-5), 0);
    assert_int_equal(rt_model_cfg_set_str(m, "activation_function", "gelu_new"), 0);
    assert_int_equal(rt_model_add_provenance(m, "q8", "quantize.rtn"), 0);
    return m;
}

/* ---- the quantization record in config.json ---- */

/* m with one GQ4 (group 32, sym) weight [4, 32], plus a q8_0 one when mixed, and the record a
 * GPTQ stage leaves; saved, its config.json's quantization_config parsed back. */
static json_t *saved_quantization_config(int mixed) {
    llmopt_model *m = rt_model_new("gpt2");
    const char *config = "{\"model_type\": \"gpt2\", \"n_layer\": 1}";
    assert_int_equal(rt_model_config_load(m, config, strlen(config), NULL), 0);
    int64_t shape[2] = {4, 32};
    llmopt_tensor *a = rt_tensor_new(LLMOPT_DTYPE_GQ(4, 32, 0), 2, shape), *b = rt_tensor_new(LLMOPT_DTYPE_Q8_0, 2, shape);
    assert_int_equal(rt_model_set(m, "h.0.attn.c_attn.weight", a), 0);
    if (mixed) assert_int_equal(rt_model_set(m, "h.0.mlp.c_fc.weight", b), 0);
    rt_tensor_unref(a);
    rt_tensor_unref(b);
    assert_int_equal(rt_model_cfg_set_json(m, "quantization_config",
                                           "{\"quant_method\": \"llmopt\", \"method\": \"gptq\", \"desc_act\": true, "
                                           "\"damp_percent\": 0.01, \"bits\": 99}"), 0);
    char *cfg = rt_model_cfg_get_json(m, "quantization_config");
    assert_non_null(strstr(cfg, "\"desc_act\":true"));
    free(cfg);
    char *dir = make_tmpdir();
    llmopt_error err = {0};
    assert_int_equal(rt_model_save(m, dir, &err), 0);
    size_t len;
    char *text = read_file(dir, "config.json", &len);
    json_t *root = json_loads(text, 0, NULL), *q = json_incref(json_object_get(root, "quantization_config"));
    assert_non_null(q);
    json_decref(root);
    free(text);
    remove_dir(dir);
    rt_model_unref(m);
    return q;
}

static void one_dtype_keeps_the_stages_method_record_and_recomputes_the_summary(void **state) {
    (void)state;
    json_t *q = saved_quantization_config(0);
    assert_string_equal(json_string_value(json_object_get(q, "method")), "gptq");
    assert_true(json_is_true(json_object_get(q, "desc_act")));
    assert_true(json_real_value(json_object_get(q, "damp_percent")) == 0.01);
    assert_int_equal(json_integer_value(json_object_get(q, "bits")), 4);  /* from the tensor, not the record */
    assert_int_equal(json_integer_value(json_object_get(q, "group_size")), 32);
    assert_string_equal(json_string_value(json_object_get(q, "dtype")), "gq4g32s");
    json_decref(q);
}

static void mixed_dtypes_drop_the_method_record(void **state) {
    (void)state;
    json_t *q = saved_quantization_config(1);
    assert_string_equal(json_string_value(json_object_get(q, "quant_method")), "llmopt");
    assert_null(json_object_get(q, "method"));
    assert_null(json_object_get(q, "desc_act"));
    assert_null(json_object_get(q, "bits"));
    assert_int_equal(json_object_size(json_object_get(q, "tensor_dtypes")), 2);
    json_decref(q);
}

static void cfg_json_refuses_text_that_is_not_json_and_removes_with_null(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2");
    assert_int_equal(rt_model_cfg_set_json(m, "k", "{\"a\": "), LLMOPT_EINVAL);
    assert_null(rt_model_cfg_get_json(m, "k"));
    assert_int_equal(rt_model_cfg_set_json(m, "k", "[1, 2]"), 0);
    char *t = rt_model_cfg_get_json(m, "k");
    assert_string_equal(t, "[1,2]");
    free(t);
    assert_int_equal(rt_model_cfg_set_json(m, "k", NULL), 0);
    assert_null(rt_model_cfg_get_json(m, "k"));
    rt_model_unref(m);
}

/* ---- round trips ---- */

static void save_then_load_gives_same_tensors_and_config(void **state) {
    (void)state;
    llmopt_model *m = sample_model();
    char *dir = make_tmpdir();
    llmopt_error err = {0};
    assert_int_equal(rt_model_save(m, dir, &err), 0);

    llmopt_model *back = NULL;
    assert_int_equal(rt_model_load(dir, &back, &err), 0);
    assert_non_null(back);
    assert_models_equal(m, back);
    assert_cfg_num_bits(back, "n_embd", 768);
    assert_cfg_num_bits(back, "rope_theta", 10000.123456789);
    assert_cfg_num_bits(back, "layer_norm_epsilon", 1e-5);
    assert_string_equal(rt_model_cfg_get_str(back, "activation_function"), "gelu_new");
    assert_string_equal(rt_model_cfg_get_str(back, "model_type"), "gpt2");
    assert_int_equal(rt_model_n_provenance(back), 1);
    assert_string_equal(rt_model_provenance_uses(back, 0), "quantize.rtn");

    rt_model_unref(back);
    rt_model_unref(m);
    remove_dir(dir);
}

static void load_save_load_is_bit_exact(void **state) {
    (void)state;
    llmopt_model *m = sample_model();
    char *d1 = make_tmpdir(), *d2 = make_tmpdir();
    llmopt_error err = {0};
    assert_int_equal(rt_model_save(m, d1, &err), 0);
    llmopt_model *l1 = NULL, *l2 = NULL;
    assert_int_equal(rt_model_load(d1, &l1, &err), 0);
    assert_int_equal(rt_model_save(l1, d2, &err), 0);
    assert_int_equal(rt_model_load(d2, &l2, &err), 0);

    static const char *files[] = {"model.safetensors", "config.json"};
    for (int i = 0; i < 2; i++) {
        size_t n1 = 0, n2 = 0;
        char *b1 = read_file(d1, files[i], &n1), *b2 = read_file(d2, files[i], &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(b1, b2, n1);
        free(b1);
        free(b2);
    }
    assert_models_equal(l1, l2);

    rt_model_unref(l2);
    rt_model_unref(l1);
    rt_model_unref(m);
    remove_dir(d1);
    remove_dir(d2);
}

static void loaded_tensors_point_into_one_mapping_in_offset_order(void **state) {
    (void)state;
    /* header order c, a, b; data order a (0..8), b (8..12), c (12..14) */
    char *dir = make_model_dir();
    const unsigned char data[14] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
    write_st(dir, "model.safetensors",
             "{\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[12,14]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
             data, sizeof data);
    llmopt_model *m = NULL;
    llmopt_error err = {0};
    assert_int_equal(rt_model_load(dir, &m, &err), 0);
    assert_int_equal(rt_model_n_tensors(m), 3);
    assert_string_equal(rt_model_tensor_name(m, 0), "a");
    assert_string_equal(rt_model_tensor_name(m, 1), "b");
    assert_string_equal(rt_model_tensor_name(m, 2), "c");
    const llmopt_tensor *a = rt_model_get(m, "a"), *c = rt_model_get(m, "c");
    assert_memory_equal(c->data, data + 12, 2);
    assert_int_equal((const char *)c->data - (const char *)a->data, 12);  /* no copies */
    rt_model_unref(m);
    remove_dir(dir);
}

static void tensor_data_outlives_its_model(void **state) {
    (void)state;
    llmopt_model *m = sample_model();
    char *dir = make_tmpdir();
    assert_int_equal(rt_model_save(m, dir, NULL), 0);
    llmopt_model *back = NULL;
    assert_int_equal(rt_model_load(dir, &back, NULL), 0);
    const llmopt_tensor *t = rt_tensor_ref(rt_model_get(back, "wte.weight"));
    assert_int_equal(rt_tensor_refcount(t), 2);
    rt_model_unref(back);  /* the mapping must stay: t still points into it */
    assert_int_equal(rt_tensor_refcount(t), 1);
    remove_dir(dir);       /* even the file is gone */
    assert_tensors_equal(t, rt_model_get(m, "wte.weight"));
    rt_tensor_unref(t);
    rt_model_unref(m);
}

/* Resident pages of this process, from /proc/self/statm. */
static long resident_pages(void) {
    long size = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &size, &res), 2);
    fclose(f);
    return res;
}

/* rt_tensor_evict drops a mapped tensor's pages from the resident set (what a trainer does
 * after copying the weights to f32) and the bytes read back the same; a heap tensor is left
 * alone (its pages are the only copy). */
static void evicted_mapped_tensor_leaves_the_resident_set_and_reads_back_the_same(void **state) {
    (void)state;
    enum { N = 4 << 20 }; /* 16 MB of f32 */
    float *w = malloc((size_t)N * sizeof *w);
    for (int i = 0; i < N; i++) w[i] = (float)(i % 1000) * 0.5f;
    char header[128];
    snprintf(header, sizeof header, "{\"w\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%zu]}}", N,
             (size_t)N * sizeof *w);
    /* spaces after the JSON (as safetensors writers pad) put the data on an 8-byte boundary */
    for (size_t len = strlen(header); (8 + len) % 8 != 0; len++) header[len] = ' ', header[len + 1] = '\0';
    char *dir = make_model_dir();
    write_st(dir, "model.safetensors", header, w, (size_t)N * sizeof *w);
    llmopt_model *m = NULL;
    assert_int_equal(rt_model_load(dir, &m, NULL), 0);
    const llmopt_tensor *t = rt_model_get(m, "w");
    volatile float sum = 0;
    for (int i = 0; i < N; i += 1024) sum += ((const float *)t->data)[i]; /* fault every page in */
    long before = resident_pages();
    rt_tensor_evict(t);
    long after = resident_pages(), page = sysconf(_SC_PAGESIZE);
    /* the kernel's RSS counters are per-CPU and read approximately: most of the 16 MB, not all */
    assert_true((before - after) * page >= (long)N * (long)sizeof *w * 3 / 4);
    assert_memory_equal(t->data, w, (size_t)N * sizeof *w);
    llmopt_tensor *h = rt_tensor_f32_copy(t);
    rt_tensor_evict(h);
    assert_memory_equal(h->data, w, (size_t)N * sizeof *w);
    rt_tensor_unref(h);
    rt_model_unref(m);
    remove_dir(dir);
    free(w);
}

static void sharded_index_loads_every_shard_in_file_order(void **state) {
    (void)state;
    char *dir = make_model_dir();
    const unsigned char d1[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, d2[3] = {21, 22, 23};
    write_st(dir, "model-00001-of-00002.safetensors",
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
             d1, sizeof d1);
    write_st(dir, "model-00002-of-00002.safetensors",
             "{\"c\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}", d2, sizeof d2);
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":15},\"weight_map\":{"
               "\"a\":\"model-00001-of-00002.safetensors\","
               "\"c\":\"model-00002-of-00002.safetensors\","
               "\"b\":\"model-00001-of-00002.safetensors\"}}");
    llmopt_model *m = NULL;
    llmopt_error err = {0};
    assert_int_equal(rt_model_load(dir, &m, &err), 0);
    assert_string_equal(rt_model_arch(m), "gpt2");
    assert_int_equal(rt_model_n_tensors(m), 3);
    assert_string_equal(rt_model_tensor_name(m, 0), "b");
    assert_string_equal(rt_model_tensor_name(m, 1), "a");
    assert_string_equal(rt_model_tensor_name(m, 2), "c");
    assert_memory_equal(rt_model_get(m, "b")->data, d1, 8);
    assert_memory_equal(rt_model_get(m, "a")->data, d1 + 8, 4);
    assert_memory_equal(rt_model_get(m, "c")->data, d2, 3);
    rt_model_unref(m);
    remove_dir(dir);
}

/* ---- the in-memory parser (the fuzzing entry point) ---- */

static const char small_header[] =
    "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
    "\"y\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[8,10]}}";

static unsigned char *small_file(size_t *len) {
    size_t hlen = strlen(small_header);
    *len = 8 + hlen + 10;
    unsigned char *buf = calloc(1, *len);
    buf[0] = (unsigned char)hlen;
    memcpy(buf + 8, small_header, hlen);
    return buf;
}

static void parse_header_lists_tensors_with_file_offsets(void **state) {
    (void)state;
    size_t len = 0, n = 0;
    unsigned char *buf = small_file(&len);
    rt_safetensors_entry *es = NULL;
    assert_int_equal(rt_safetensors_parse_header("mem", buf, len, &es, &n, NULL), 0);
    assert_int_equal(n, 2);
    size_t data = 8 + strlen(small_header);
    assert_string_equal(es[0].name, "x");
    assert_int_equal(es[0].offset, data);
    assert_int_equal(es[0].nbytes, 8);
    assert_string_equal(es[1].name, "y");
    assert_int_equal(es[1].dtype, LLMOPT_DTYPE_BF16);
    assert_int_equal(es[1].ndim, 0);
    assert_int_equal(es[1].offset, data + 8);
    rt_safetensors_free(es, n);
    free(buf);
}

static void parse_header_rejects_every_truncation(void **state) {
    (void)state;
    size_t len = 0;
    unsigned char *full = small_file(&len);
    for (size_t cut = 0; cut < len; cut++) {
        /* an exact-size copy, so ASan catches any read past the end */
        unsigned char *buf = malloc(cut ? cut : 1);
        memcpy(buf, full, cut);
        rt_safetensors_entry *es = NULL;
        size_t n = 1;
        llmopt_error err = {0};
        assert_int_equal(rt_safetensors_parse_header("mem", buf, cut, &es, &n, &err), LLMOPT_EFORMAT);
        assert_null(es);
        assert_int_equal(n, 0);
        assert_non_null(strstr(err.msg, "mem"));
        free(buf);
    }
    free(full);
}

/* ---- malformed files: one test each ---- */

static void file_shorter_than_8_bytes_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    write_file(dir, "model.safetensors", "\x05\0\0\0\0", 5);
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors", "5 bytes", NULL);
    remove_dir(dir);
}

static void empty_file_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    write_file(dir, "model.safetensors", "", 0);
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors", "0 bytes", NULL);
    remove_dir(dir);
}

static void header_length_beyond_file_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    unsigned char buf[12] = {0xe8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};  /* 1000 */
    write_file(dir, "model.safetensors", buf, sizeof buf);
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors",
                      "header length 1000 goes beyond the file's 12 bytes", NULL);
    remove_dir(dir);
}

static void huge_header_length_does_not_wrap(void **state) {
    (void)state;
    char *dir = make_model_dir();
    unsigned char buf[10] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    write_file(dir, "model.safetensors", buf, sizeof buf);
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors", "18446744073709551615", NULL);
    remove_dir(dir);
}

static void header_that_is_not_json_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"x\": [1, 2", 0, "not valid JSON", "line 1, column");
}

static void header_that_is_not_an_object_is_refused(void **state) {
    (void)state;
    expect_bad_header("[1, 2]  ", 0, "header is not a JSON object", NULL);
}

static void duplicate_tensor_names_are_refused(void **state) {
    (void)state;
    expect_bad_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                      2, "duplicate", NULL);
}

static void metadata_must_be_an_object_of_strings(void **state) {
    (void)state;
    expect_bad_header("{\"__metadata__\":{\"format\":1}}", 0, "'__metadata__'", NULL);
}

static void entry_that_is_not_an_object_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\": 3}", 0, "tensor 'w'", "not an object");
}

static void entry_without_dtype_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor 'w'",
                      "missing 'dtype'");
}

static void entry_without_shape_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "tensor 'w'",
                      "missing 'shape'");
}

static void entry_without_data_offsets_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "tensor 'w'",
                      "missing 'data_offsets'");
}

static void unknown_dtype_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"x\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                      "tensor 'x': unknown dtype 'F8_E4M3'", NULL);
}

static void negative_shape_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                      "tensor 'w'", "'shape' must be a list of non-negative integers");
}

static void non_integer_shape_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 2,
                      "tensor 'w'", "'shape' must be a list of non-negative integers");
}

static void shape_with_too_many_dims_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                      "tensor 'w'", "'shape' has 5 dims, more than 4");
}

static void shape_too_large_to_count_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                      "\"data_offsets\":[0,0]}}", 0, "tensor 'w'", "too large");
}

static void data_offsets_of_three_integers_are_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 2,
                      "tensor 'w'", "'data_offsets' must be two integers");
}

static void data_offsets_with_begin_after_end_are_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,1]}}", 2,
                      "tensor 'w'", "'data_offsets' must be two integers");
}

static void data_offsets_beyond_the_data_are_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,100]}}", 16,
                      "tensor 'w'", "end 100 goes beyond the data's 16 bytes");
}

static void byte_size_differing_from_shape_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 16,
                      "tensor 'w'", "hold 16 bytes but F32 [2, 3] needs 24");
}

static void overlapping_tensors_are_refused_naming_both(void **state) {
    (void)state;
    expect_bad_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}",
                      12, "'a' and 'b' overlap", "[0, 8) and [4, 12)");
}

static void empty_tensors_overlap_nothing(void **state) {
    (void)state;
    char *dir = make_model_dir();
    const unsigned char data[4] = {1, 2, 3, 4};
    write_st(dir, "model.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0,7],\"data_offsets\":[2,2]}}",
             data, sizeof data);
    llmopt_model *m = NULL;
    assert_int_equal(rt_model_load(dir, &m, NULL), 0);
    assert_int_equal(rt_model_n_tensors(m), 2);
    assert_int_equal(rt_model_get(m, "e")->nbytes, 0);
    rt_model_unref(m);
    remove_dir(dir);
}

static void empty_tensor_name_is_refused(void **state) {
    (void)state;
    expect_bad_header("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                      "empty name", NULL);
}

/* ---- malformed directories ---- */

static void index_tensor_missing_from_its_shard_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    const unsigned char data[1] = {7};
    write_st(dir, "model-00001-of-00001.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", data, 1);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"model-00001-of-00001.safetensors\","
               "\"lm_head.weight\":\"model-00001-of-00001.safetensors\"}}");
    expect_load_fails(dir, LLMOPT_EFORMAT, "model-00001-of-00001.safetensors",
                      "tensor 'lm_head.weight'", "model.safetensors.index.json");
    remove_dir(dir);
}

static void missing_shard_file_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    const unsigned char data[1] = {7};
    write_st(dir, "model-00001-of-00002.safetensors",
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", data, 1);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
               "\"b\":\"model-00002-of-00002.safetensors\"}}");
    expect_load_fails(dir, LLMOPT_ENOTFOUND, "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", NULL);
    remove_dir(dir);
}

static void index_shard_outside_the_directory_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../x.safetensors\"}}");
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors.index.json", "weight_map 'a'", NULL);
    remove_dir(dir);
}

static void index_without_weight_map_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    write_text(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_load_fails(dir, LLMOPT_EFORMAT, "model.safetensors.index.json", "'weight_map'", NULL);
    remove_dir(dir);
}

static void tensor_in_two_shards_is_refused(void **state) {
    (void)state;
    char *dir = make_model_dir();
    const unsigned char data[1] = {7};
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    write_st(dir, "s1.safetensors", h, data, 1);
    write_st(dir, "s2.safetensors", h, data, 1);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_load_fails(dir, LLMOPT_EFORMAT, "s2.safetensors", "tensor 'a'", NULL);
    remove_dir(dir);
}

static void missing_config_is_not_found(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    expect_load_fails(dir, LLMOPT_ENOTFOUND, "config.json", NULL, NULL);
    remove_dir(dir);
}

static void missing_model_file_is_not_found(void **state) {
    (void)state;
    char *dir = make_model_dir();
    expect_load_fails(dir, LLMOPT_ENOTFOUND, "model.safetensors", NULL, NULL);
    remove_dir(dir);
}

static void config_that_is_not_json_is_refused_with_its_position(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    write_text(dir, "config.json", "{\n  \"model_type\": \"gpt2\",\n  oops\n}");
    expect_load_fails(dir, LLMOPT_EFORMAT, "config.json", "line 3, column", NULL);
    remove_dir(dir);
}

static void config_without_model_type_is_refused(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    write_text(dir, "config.json", "{\"model_type\": 3}");
    expect_load_fails(dir, LLMOPT_EFORMAT, "config.json", "'model_type'", NULL);
    remove_dir(dir);
}

static void config_that_is_not_an_object_is_refused(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    write_text(dir, "config.json", "[\"gpt2\"]");
    expect_load_fails(dir, LLMOPT_EFORMAT, "config.json", "JSON object", NULL);
    remove_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(save_then_load_gives_same_tensors_and_config),
        cmocka_unit_test(load_save_load_is_bit_exact),
        cmocka_unit_test(loaded_tensors_point_into_one_mapping_in_offset_order),
        cmocka_unit_test(tensor_data_outlives_its_model),
        cmocka_unit_test(evicted_mapped_tensor_leaves_the_resident_set_and_reads_back_the_same),
        cmocka_unit_test(sharded_index_loads_every_shard_in_file_order),
        cmocka_unit_test(parse_header_lists_tensors_with_file_offsets),
        cmocka_unit_test(parse_header_rejects_every_truncation),
        cmocka_unit_test(file_shorter_than_8_bytes_is_refused),
        cmocka_unit_test(empty_file_is_refused),
        cmocka_unit_test(header_length_beyond_file_is_refused),
        cmocka_unit_test(huge_header_length_does_not_wrap),
        cmocka_unit_test(header_that_is_not_json_is_refused),
        cmocka_unit_test(header_that_is_not_an_object_is_refused),
        cmocka_unit_test(duplicate_tensor_names_are_refused),
        cmocka_unit_test(metadata_must_be_an_object_of_strings),
        cmocka_unit_test(entry_that_is_not_an_object_is_refused),
        cmocka_unit_test(entry_without_dtype_is_refused),
        cmocka_unit_test(entry_without_shape_is_refused),
        cmocka_unit_test(entry_without_data_offsets_is_refused),
        cmocka_unit_test(unknown_dtype_is_refused),
        cmocka_unit_test(negative_shape_is_refused),
        cmocka_unit_test(non_integer_shape_is_refused),
        cmocka_unit_test(shape_with_too_many_dims_is_refused),
        cmocka_unit_test(shape_too_large_to_count_is_refused),
        cmocka_unit_test(data_offsets_of_three_integers_are_refused),
        cmocka_unit_test(data_offsets_with_begin_after_end_are_refused),
        cmocka_unit_test(data_offsets_beyond_the_data_are_refused),
        cmocka_unit_test(byte_size_differing_from_shape_is_refused),
        cmocka_unit_test(overlapping_tensors_are_refused_naming_both),
        cmocka_unit_test(empty_tensors_overlap_nothing),
        cmocka_unit_test(empty_tensor_name_is_refused),
        cmocka_unit_test(index_tensor_missing_from_its_shard_is_refused),
        cmocka_unit_test(missing_shard_file_is_refused),
        cmocka_unit_test(index_shard_outside_the_directory_is_refused),
        cmocka_unit_test(index_without_weight_map_is_refused),
        cmocka_unit_test(tensor_in_two_shards_is_refused),
        cmocka_unit_test(missing_config_is_not_found),
        cmocka_unit_test(missing_model_file_is_not_found),
        cmocka_unit_test(config_that_is_not_json_is_refused_with_its_position),
        cmocka_unit_test(config_without_model_type_is_refused),
        cmocka_unit_test(config_that_is_not_an_object_is_refused),
        cmocka_unit_test(one_dtype_keeps_the_stages_method_record_and_recomputes_the_summary),
        cmocka_unit_test(mixed_dtypes_drop_the_method_record),
        cmocka_unit_test(cfg_json_refuses_text_that_is_not_json_and_removes_with_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
