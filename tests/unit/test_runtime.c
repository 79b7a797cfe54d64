/* Unit tests for the host runtime's dtypes, tensors, models and safetensors writer
 * (host/runtime). Each test states one behaviour. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "util/fs.h"

/* ---- dtypes ---- */

static void dtype_traits_table_has_sizes_and_names(void **state) {
    (void)state;
    static const struct { int dtype; const char *name; size_t size; } want[] = {
        {LLMOPT_DTYPE_F32, "f32", 4}, {LLMOPT_DTYPE_F16, "f16", 2}, {LLMOPT_DTYPE_BF16, "bf16", 2},
        {LLMOPT_DTYPE_I8, "i8", 1},   {LLMOPT_DTYPE_U8, "u8", 1},   {LLMOPT_DTYPE_I32, "i32", 4},
        {LLMOPT_DTYPE_I64, "i64", 8},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const llmopt_dtype_traits *tr = rt_dtype_traits(want[i].dtype);
        assert_non_null(tr);
        assert_int_equal(tr->struct_size, sizeof(llmopt_dtype_traits));
        assert_string_equal(tr->name, want[i].name);
        assert_int_equal(tr->type_size, want[i].size);
        assert_int_equal(tr->block_size, 1);
        assert_int_equal(tr->is_quantized, 0);
    }
}

static void dtype_names_round_trip(void **state) {
    (void)state;
    for (int d = 0; d < LLMOPT_DTYPE_COUNT; d++) {
        assert_int_equal(rt_dtype_from_name(rt_dtype_traits(d)->name), d);
        /* block-quantized types have no safetensors spelling; every plain one round-trips */
        if (rt_dtype_traits(d)->is_quantized) assert_null(rt_dtype_safetensors_name(d));
        else assert_int_equal(rt_dtype_from_safetensors_name(rt_dtype_safetensors_name(d)), d);
    }
    assert_int_equal(rt_dtype_from_name("q4_0x"), -1);
    assert_int_equal(rt_dtype_from_name(NULL), -1);
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_COUNT));
    assert_null(rt_dtype_traits(-1));
}

static void dtype_nbytes_multiplies_shape_by_size(void **state) {
    (void)state;
    int64_t s[2] = {3, 5};
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_F32, 2, s), 60);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_BF16, 2, s), 30);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_I64, 0, NULL), 8);  /* scalar */
}

static void dtype_nbytes_rejects_overflow_and_bad_shapes(void **state) {
    (void)state;
    int64_t huge[2] = {INT64_MAX, 2};
    int64_t big[4] = {1 << 20, 1 << 20, 1 << 20, 1 << 20};
    int64_t neg[2] = {4, -1};
    int64_t ok[2] = {4, 4};
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_F32, 2, huge), 0);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_U8, 4, big), 0);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_F32, 2, neg), 0);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_F32, LLMOPT_MAX_DIMS + 1, ok), 0);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_F32, -1, ok), 0);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_COUNT, 2, ok), 0);
}

/* ---- tensors ---- */

static void tensor_new_is_zeroed_aligned_and_shaped(void **state) {
    (void)state;
    int64_t s[2] = {7, 3};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F32, 2, s);
    assert_non_null(t);
    assert_int_equal(t->struct_size, sizeof(llmopt_tensor));
    assert_int_equal(t->device, LLMOPT_DEVICE_CPU);
    assert_int_equal(t->nbytes, 84);
    assert_int_equal((uintptr_t)t->data % 64, 0);
    assert_int_equal(t->shape[0], 7);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->shape[2], 1);
    assert_int_equal(t->shape[3], 1);
    assert_int_equal(rt_tensor_numel(t), 21);
    const unsigned char *b = t->data;
    for (size_t i = 0; i < t->nbytes; i++) assert_int_equal(b[i], 0);
    rt_tensor_unref(t);
}

static void tensor_new_rejects_bad_shape(void **state) {
    (void)state;
    int64_t neg[1] = {-3};
    int64_t huge[2] = {INT64_MAX, INT64_MAX};
    assert_null(rt_tensor_new(LLMOPT_DTYPE_F32, 1, neg));
    assert_null(rt_tensor_new(LLMOPT_DTYPE_F32, 2, huge));
    assert_null(rt_tensor_new(99, 1, neg));
}

static void tensor_new_allows_empty_tensor(void **state) {
    (void)state;
    int64_t s[2] = {0, 4};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F16, 2, s);
    assert_non_null(t);
    assert_int_equal(t->nbytes, 0);
    assert_non_null(t->data);
    rt_tensor_unref(t);
}

static void tensor_ref_and_unref_count(void **state) {
    (void)state;
    int64_t s[1] = {4};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_I32, 1, s);
    assert_int_equal(rt_tensor_refcount(t), 1);
    assert_ptr_equal(rt_tensor_ref(t), t);
    assert_int_equal(rt_tensor_refcount(t), 2);
    rt_tensor_unref(t);
    assert_int_equal(rt_tensor_refcount(t), 1);
    rt_tensor_unref(t);
}

static void count_release(void *owner) { (*(int *)owner)++; }

static void tensor_wrap_releases_once_at_last_unref(void **state) {
    (void)state;
    float buf[6] = {1, 2, 3, 4, 5, 6};
    int released = 0;
    int64_t s[2] = {2, 3};
    llmopt_tensor *t = rt_tensor_wrap(LLMOPT_DTYPE_F32, 2, s, buf, sizeof buf, count_release, &released);
    assert_non_null(t);
    assert_ptr_equal(t->data, buf);
    rt_tensor_ref(t);
    rt_tensor_unref(t);
    assert_int_equal(released, 0);
    rt_tensor_unref(t);
    assert_int_equal(released, 1);
}

static void tensor_wrap_refuses_wrong_nbytes(void **state) {
    (void)state;
    float buf[6];
    int released = 0;
    int64_t s[2] = {2, 3};
    assert_null(rt_tensor_wrap(LLMOPT_DTYPE_F32, 2, s, buf, 20, count_release, &released));
    assert_int_equal(released, 0);
}

enum { REF_ITERS = 100000 };

static void *ref_unref_loop(void *arg) {
    const llmopt_tensor *t = arg;
    for (int i = 0; i < REF_ITERS; i++) {
        rt_tensor_ref(t);
        rt_tensor_unref(t);
    }
    for (int i = 0; i < REF_ITERS; i++) rt_tensor_ref(t);
    for (int i = 0; i < REF_ITERS; i++) rt_tensor_unref(t);
    return NULL;
}

static void tensor_refcount_is_thread_safe(void **state) {
    (void)state;
    int64_t s[1] = {16};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, ref_unref_loop, t), 0);
    assert_int_equal(pthread_create(&b, NULL, ref_unref_loop, t), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    assert_int_equal(rt_tensor_refcount(t), 1);
    rt_tensor_unref(t);
}

/* ---- models ---- */

static llmopt_tensor *filled(int dtype, int ndim, const int64_t *shape, unsigned char seed) {
    llmopt_tensor *t = rt_tensor_new(dtype, ndim, shape);
    unsigned char *b = t->data;
    for (size_t i = 0; i < t->nbytes; i++) b[i] = (unsigned char)(seed + i * 7);
    return t;
}

static void model_set_get_replace_remove(void **state) {
    (void)state;
    int64_t s[1] = {4};
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_tensor *a = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    llmopt_tensor *b = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    assert_string_equal(rt_model_arch(m), "gpt2");
    assert_int_equal(rt_model_set(m, "wte", a), 0);
    assert_int_equal(rt_model_set(m, "wpe", b), 0);
    assert_int_equal(rt_model_n_tensors(m), 2);
    assert_ptr_equal(rt_model_get(m, "wte"), a);
    assert_null(rt_model_get(m, "nope"));
    assert_int_equal(rt_tensor_refcount(a), 2);

    assert_int_equal(rt_model_set(m, "wte", b), 0);  /* replace keeps the position */
    assert_int_equal(rt_model_n_tensors(m), 2);
    assert_string_equal(rt_model_tensor_name(m, 0), "wte");
    assert_ptr_equal(rt_model_get(m, "wte"), b);
    assert_int_equal(rt_tensor_refcount(a), 1);

    assert_int_equal(rt_model_remove(m, "wte"), 0);
    assert_int_equal(rt_model_remove(m, "wte"), LLMOPT_ENOTFOUND);
    assert_int_equal(rt_model_n_tensors(m), 1);
    assert_string_equal(rt_model_tensor_name(m, 0), "wpe");
    assert_ptr_equal(rt_model_get(m, "wpe"), b);
    rt_model_unref(m);
    assert_int_equal(rt_tensor_refcount(b), 1);
    rt_tensor_unref(a);
    rt_tensor_unref(b);
}

static void model_keeps_order_and_finds_many_tensors(void **state) {
    (void)state;
    int64_t s[1] = {1};
    llmopt_model *m = rt_model_new("llama");
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_U8, 1, s);
    char name[64];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "model.layers.%d.weight", i);
        assert_int_equal(rt_model_set(m, name, t), 0);
    }
    for (int i = 0; i < 300; i += 2) {
        snprintf(name, sizeof name, "model.layers.%d.weight", i);
        assert_int_equal(rt_model_remove(m, name), 0);
    }
    assert_int_equal(rt_model_n_tensors(m), 150);
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "model.layers.%d.weight", i);
        if (i % 2) assert_ptr_equal(rt_model_get(m, name), t);
        else assert_null(rt_model_get(m, name));
    }
    assert_string_equal(rt_model_tensor_name(m, 0), "model.layers.1.weight");
    assert_string_equal(rt_model_tensor_name(m, 149), "model.layers.299.weight");
    assert_int_equal(rt_tensor_refcount(t), 151);
    rt_model_unref(m);
    rt_tensor_unref(t);
}

static void model_clone_shares_tensors(void **state) {
    (void)state;
    int64_t s[1] = {8};
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_tensor *a = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    rt_model_set(m, "a", a);
    llmopt_model *c = rt_model_clone(m);
    assert_non_null(c);
    assert_ptr_equal(rt_model_get(c, "a"), a);
    assert_int_equal(rt_tensor_refcount(a), 3);
    rt_model_unref(c);
    assert_int_equal(rt_tensor_refcount(a), 2);
    rt_model_unref(m);
    rt_tensor_unref(a);
}

static void model_set_on_clone_leaves_original(void **state) {
    (void)state;
    int64_t s[1] = {8};
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_tensor *a = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    llmopt_tensor *b = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    rt_model_set(m, "a", a);
    rt_model_cfg_set_num(m, "n_layer", 2);
    llmopt_model *c = rt_model_clone(m);
    rt_model_set(c, "a", b);
    rt_model_set(c, "extra", b);
    rt_model_cfg_set_num(c, "n_layer", 1);
    rt_model_add_provenance(c, "q8", "quantize.rtn");
    double v = 0;
    assert_ptr_equal(rt_model_get(m, "a"), a);
    assert_null(rt_model_get(m, "extra"));
    assert_int_equal(rt_model_n_tensors(m), 1);
    assert_int_equal(rt_model_cfg_get_num(m, "n_layer", &v), 0);
    assert_true(v == 2.0);
    assert_int_equal(rt_model_n_provenance(m), 0);
    assert_int_equal(rt_model_n_provenance(c), 1);
    rt_model_unref(c);
    rt_model_unref(m);
    rt_tensor_unref(a);
    rt_tensor_unref(b);
}

static void model_nbytes_counts_shared_tensors_once(void **state) {
    (void)state;
    int64_t s[2] = {10, 10};
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_tensor *wte = rt_tensor_new(LLMOPT_DTYPE_F32, 2, s);
    llmopt_tensor *ln = rt_tensor_new(LLMOPT_DTYPE_F16, 1, s);
    rt_model_set(m, "wte", wte);
    rt_model_set(m, "lm_head", wte);  /* tied */
    rt_model_set(m, "ln", ln);
    assert_int_equal(rt_model_nbytes(m), 400 + 20);
    rt_model_unref(m);
    rt_tensor_unref(wte);
    rt_tensor_unref(ln);
}

static void model_config_get_and_set(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2");
    double v = -1;
    assert_int_equal(rt_model_cfg_get_num(m, "n_embd", &v), LLMOPT_ENOTFOUND);
    assert_null(rt_model_cfg_get_str(m, "activation"));
    assert_int_equal(rt_model_cfg_set_num(m, "n_embd", 768), 0);
    assert_int_equal(rt_model_cfg_set_num(m, "eps", 1e-5), 0);
    assert_int_equal(rt_model_cfg_set_str(m, "activation", "gelu_new"), 0);
    assert_int_equal(rt_model_cfg_get_num(m, "n_embd", &v), 0);
    assert_true(v == 768.0);
    assert_int_equal(rt_model_cfg_get_num(m, "eps", &v), 0);
    assert_true(v == 1e-5);
    assert_string_equal(rt_model_cfg_get_str(m, "activation"), "gelu_new");
    /* a key of the other kind reads as absent */
    assert_null(rt_model_cfg_get_str(m, "n_embd"));
    assert_int_equal(rt_model_cfg_get_num(m, "activation", &v), LLMOPT_ENOTFOUND);
    rt_model_unref(m);
}

static void model_provenance_appears_in_config_dump(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2");
    rt_model_cfg_set_num(m, "n_embd", 768);
    rt_model_add_provenance(m, "q8", "quantize.rtn");
    rt_model_add_provenance(m, "heal", "finetune.lora");
    assert_int_equal(rt_model_n_provenance(m), 2);
    assert_string_equal(rt_model_provenance_stage(m, 1), "heal");
    assert_string_equal(rt_model_provenance_uses(m, 1), "finetune.lora");
    assert_null(rt_model_provenance_stage(m, 2));

    char *text = rt_model_config_dump(m);
    assert_non_null(text);
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "n_embd")), 768);  /* stays an int */
    assert_string_equal(json_string_value(json_object_get(j, "model_type")), "gpt2");
    json_t *p = json_object_get(j, "llmopt_provenance");
    assert_int_equal(json_array_size(p), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(p, 0), "uses")), "quantize.rtn");

    /* and loading that text back gives the same config and provenance */
    llmopt_model *back = rt_model_new("gpt2");
    assert_int_equal(rt_model_config_load(back, text, strlen(text), NULL), 0);
    double v = 0;
    assert_int_equal(rt_model_cfg_get_num(back, "n_embd", &v), 0);
    assert_true(v == 768.0);
    assert_int_equal(rt_model_n_provenance(back), 2);
    assert_string_equal(rt_model_provenance_stage(back, 0), "q8");
    json_decref(j);
    free(text);
    rt_model_unref(back);
    rt_model_unref(m);
}

static void model_config_load_rejects_non_object(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_error err = {0};
    assert_int_equal(rt_model_config_load(m, "[1,2]", 5, &err), LLMOPT_EFORMAT);
    assert_int_equal(rt_model_config_load(m, "{bad", 4, &err), LLMOPT_EFORMAT);
    assert_true(strlen(err.msg) > 0);
    rt_model_unref(m);
}

/* ---- safetensors save ---- */

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/llmopt-test-runtime-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    char *out = malloc(strlen(d) + 1);
    strcpy(out, d);
    return out;
}

static void save_writes_safetensors_header_and_data(void **state) {
    (void)state;
    int64_t s2[2] = {3, 5}, s1[1] = {7};
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_tensor *a = filled(LLMOPT_DTYPE_F32, 2, s2, 1);
    llmopt_tensor *b = filled(LLMOPT_DTYPE_BF16, 1, s1, 50);
    llmopt_tensor *c = filled(LLMOPT_DTYPE_I64, 0, NULL, 99);
    rt_model_set(m, "h.0.attn.weight", a);
    rt_model_set(m, "ln_f.bias", b);
    rt_model_set(m, "step", c);
    rt_model_cfg_set_num(m, "n_layer", 1);

    char *root = make_tmpdir();
    char *dir = fs_join(root, "out/model");  /* created by save */
    llmopt_error err = {0};
    assert_int_equal(rt_model_save(m, dir, &err), 0);

    char *path = fs_join(dir, "model.safetensors");
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(fs_read_all(path, &buf, &len, NULL), 0);
    assert_true(len >= 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | (unsigned char)buf[i];
    assert_int_equal((8 + n) % 8, 0);
    assert_int_equal(len, 8 + n + 60 + 14 + 8);
    json_t *h = json_loadb(buf + 8, n, 0, NULL);
    assert_non_null(h);
    assert_string_equal(json_string_value(json_object_get(json_object_get(h, "__metadata__"), "format")), "pt");

    static const struct { const char *name, *dtype; size_t ndim; int64_t dim0; } want[] = {
        {"h.0.attn.weight", "F32", 2, 3}, {"ln_f.bias", "BF16", 1, 7}, {"step", "I64", 0, 0},
    };
    const llmopt_tensor *ts[3] = {a, b, c};
    const char *data = buf + 8 + n;
    json_int_t off = 0;
    for (int i = 0; i < 3; i++) {
        json_t *e = json_object_get(h, want[i].name);
        assert_non_null(e);
        assert_string_equal(json_string_value(json_object_get(e, "dtype")), want[i].dtype);
        json_t *shape = json_object_get(e, "shape");
        assert_int_equal(json_array_size(shape), want[i].ndim);
        if (want[i].ndim) assert_int_equal(json_integer_value(json_array_get(shape, 0)), want[i].dim0);
        json_t *offs = json_object_get(e, "data_offsets");
        json_int_t begin = json_integer_value(json_array_get(offs, 0));
        json_int_t end = json_integer_value(json_array_get(offs, 1));
        assert_int_equal(begin, off);
        assert_int_equal(end - begin, ts[i]->nbytes);
        assert_memory_equal(data + begin, ts[i]->data, ts[i]->nbytes);
        off = end;
    }
    json_decref(h);
    free(buf);

    char *cfg_path = fs_join(dir, "config.json");
    assert_int_equal(fs_read_all(cfg_path, &buf, &len, NULL), 0);
    json_t *cfg = json_loads(buf, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(cfg, "model_type")), "gpt2");
    assert_int_equal(json_integer_value(json_object_get(cfg, "n_layer")), 1);
    json_decref(cfg);
    free(buf);

    fs_rmtree(root);
    free(cfg_path);
    free(path);
    free(dir);
    free(root);
    rt_model_unref(m);
    rt_tensor_unref(a);
    rt_tensor_unref(b);
    rt_tensor_unref(c);
}

static void save_refuses_non_cpu_tensor_and_leaves_no_file(void **state) {
    (void)state;
    int64_t s[1] = {4};
    llmopt_model *m = rt_model_new("gpt2");
    llmopt_tensor *ok = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    llmopt_tensor *gpu = rt_tensor_new(LLMOPT_DTYPE_F32, 1, s);
    gpu->device = LLMOPT_DEVICE_CUDA;
    rt_model_set(m, "ok", ok);
    rt_model_set(m, "on_gpu", gpu);

    char *root = make_tmpdir();
    llmopt_error err = {0};
    assert_int_equal(rt_model_save(m, root, &err), LLMOPT_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "on_gpu"));
    char *path = fs_join(root, "model.safetensors");
    char *cfg = fs_join(root, "config.json");
    assert_false(fs_exists(path));
    assert_false(fs_exists(cfg));

    gpu->device = LLMOPT_DEVICE_CPU;  /* so the unref frees it as the heap tensor it is */
    fs_rmtree(root);
    free(cfg);
    free(path);
    free(root);
    rt_model_unref(m);
    rt_tensor_unref(ok);
    rt_tensor_unref(gpu);
}

static void save_into_unwritable_place_fails_cleanly(void **state) {
    (void)state;
    llmopt_model *m = rt_model_new("gpt2");
    char *root = make_tmpdir();
    char *file = fs_join(root, "plain-file");
    assert_int_equal(fs_write_atomic(file, "x", 1, NULL), 0);
    llmopt_error err = {0};
    assert_int_equal(rt_model_save(m, file, &err), LLMOPT_EIO);  /* a file, not a directory */
    assert_true(strlen(err.msg) > 0);
    fs_rmtree(root);
    free(file);
    free(root);
    rt_model_unref(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dtype_traits_table_has_sizes_and_names),
        cmocka_unit_test(dtype_names_round_trip),
        cmocka_unit_test(dtype_nbytes_multiplies_shape_by_size),
        cmocka_unit_test(dtype_nbytes_rejects_overflow_and_bad_shapes),
        cmocka_unit_test(tensor_new_is_zeroed_aligned_and_shaped),
        cmocka_unit_test(tensor_new_rejects_bad_shape),
        cmocka_unit_test(tensor_new_allows_empty_tensor),
        cmocka_unit_test(tensor_ref_and_unref_count),
        cmocka_unit_test(tensor_wrap_releases_once_at_last_unref),
        cmocka_unit_test(tensor_wrap_refuses_wrong_nbytes),
        cmocka_unit_test(tensor_refcount_is_thread_safe),
        cmocka_unit_test(model_set_get_replace_remove),
        cmocka_unit_test(model_keeps_order_and_finds_many_tensors),
        cmocka_unit_test(model_clone_shares_tensors),
        cmocka_unit_test(model_set_on_clone_leaves_original),
        cmocka_unit_test(model_nbytes_counts_shared_tensors_once),
        cmocka_unit_test(model_config_get_and_set),
        cmocka_unit_test(model_provenance_appears_in_config_dump),
        cmocka_unit_test(model_config_load_rejects_non_object),
        cmocka_unit_test(save_writes_safetensors_header_and_data),
        cmocka_unit_test(save_refuses_non_cpu_tensor_and_leaves_no_file),
        cmocka_unit_test(save_into_unwritable_place_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
