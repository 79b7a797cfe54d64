/* The pieces the GPT-2 and Llama graphs share: weights from the checkpoint, positions and the
 * causal mask, the activations, the LM head and the graph's input and output. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "onnx_export.h"

#define A ox_api

const char *ox_tensor(llmopt_stage_ctx *ctx, const llmopt_model *m, ox_graph *g, ox_keep *keep, const char *name) {
    const llmopt_tensor *t = ox_f32(ctx, m, name, keep);
    return t ? ox_weight(g, name, t->data, t->ndim, t->shape) : NULL;
}

const char *ox_tensor_t(llmopt_stage_ctx *ctx, const llmopt_model *m, ox_graph *g, ox_keep *keep, const char *name) {
    /* the f32 values only until they are transposed: a half checkpoint's conversion is not kept */
    const llmopt_tensor *t = ox_f32_ref(ctx, m, name);
    if (!t) return NULL;
    if (t->ndim != 2) {
        A->tensor_unref(t);
        A->set_error(ctx, LLMOPT_EINVAL, "'%s' is not a matrix", name);
        return NULL;
    }
    const int64_t rows = t->shape[0], cols = t->shape[1], shape[2] = {cols, rows};
    llmopt_tensor *tt = A->tensor_new(LLMOPT_DTYPE_F32, 2, shape);
    if (!tt || ox_keep_add(ctx, keep, tt)) {
        if (tt) A->tensor_unref(tt);
        A->tensor_unref(t);
        A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        return NULL;
    }
    const float *src = t->data;
    float *dst = tt->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
    A->tensor_unref(t);
    char tname[512];
    snprintf(tname, sizeof tname, "%s.T", name);
    return ox_weight(g, tname, tt->data, 2, shape);
}

static const char *cache_name(char *buf, size_t n, int layer, int value, const char *prefix) {
    snprintf(buf, n, "%s.%d.%s", prefix, layer, value ? "value" : "key");
    return buf;
}

void ox_positions(ox_graph *g, ox_positions_out *o, const ox_opts *opts, int n_layer, int64_t kv_heads, int64_t head_dim,
                  int score_rank) {
    const int64_t ids_dims[2] = {-1, -1}, i0[1] = {0}, i1[1] = {1};
    const char *const ids_sym[2] = {"batch", "sequence"}, *const mask_sym[2] = {"batch", "total_sequence"};
    const int cache = opts->cache, masked = opts->masked;
    o->cache = cache, o->n_layer = n_layer, o->kv_heads = kv_heads, o->head_dim = head_dim;
    ox_input(g, "input_ids", OX_INT64, 2, ids_dims, ids_sym);
    if (masked) {
        ox_input(g, "attention_mask", OX_INT64, 2, ids_dims, mask_sym);
        ox_input(g, "position_ids", OX_INT64, 2, ids_dims, ids_sym);
    }
    const int64_t kv_dims[4] = {-1, kv_heads, -1, head_dim};
    const char *const kv_sym[4] = {"batch", NULL, "past_sequence", NULL};
    char name[64];
    for (int l = 0; cache && l < n_layer; l++)
        for (int v = 0; v < 2; v++) ox_input(g, cache_name(name, sizeof name, l, v, "past_key_values"), OX_FLOAT, 4, kv_dims, kv_sym);
    o->ids_shape = ox_op(g, "Shape", "ids_shape", "input_ids", NULL); /* [b, s] */
    const char *seq = ox_op(g, "Gather", "seq", o->ids_shape, ox_scalar_i64(g, "one", 1), NULL);
    ox_attr_int(g, "axis", 0);
    const char *past = ox_scalar_i64(g, "zero", 0);
    if (cache) {
        past = ox_op(g, "Gather", "past", ox_op(g, "Shape", "past_shape", "past_key_values.0.key", NULL),
                     ox_scalar_i64(g, "two", 2), NULL);
        ox_attr_int(g, "axis", 0);
    }
    const char *end = ox_op(g, "Add", "end", past, seq, NULL);
    const char *index = ox_op(g, "Range", "index", past, end, ox_scalar_i64(g, "one", 1), NULL); /* [s] */
    o->pos = masked ? "position_ids" : index;
    const char *keys = ox_op(g, "Range", "key_index", ox_scalar_i64(g, "zero", 0), end, ox_scalar_i64(g, "one", 1), NULL);
    /* 0 where the key is at or before the query in the sequence, float's lowest after it
     * (transformers' finfo.min) */
    const char *lowest = ox_const_f32(g, "lowest", -3.4028234663852886e38f), *zero = ox_const_f32(g, "zero", 0.0f);
    const char *q_idx = ox_op(g, "Unsqueeze", "qidx", index, ox_const_i64(g, "axes", i1, 1), NULL); /* [s, 1] */
    const char *k_idx = ox_op(g, "Unsqueeze", "kidx", keys, ox_const_i64(g, "axes", i0, 1), NULL);  /* [1, p + s] */
    o->mask = ox_op(g, "Where", "causal", ox_op(g, "Greater", "future", k_idx, q_idx, NULL), lowest, zero, NULL);
    if (masked) {
        /* padding keys masked too: [b, 1.., p + s] against the scores' [b, heads.., s, p + s]; the
         * smaller of the two masks (not their sum, which would reach -inf and give a row of
         * padding a NaN softmax rather than transformers' uniform one) */
        int64_t axes[3] = {1, 2, 3};
        const char *pad = ox_op(g, "Where", "pad", ox_op(g, "Equal", "is_pad", "attention_mask", ox_const_i64(g, "zero", i0, 1), NULL),
                                lowest, zero, NULL); /* [b, p + s] */
        pad = ox_op(g, "Unsqueeze", "pad_b", pad, ox_const_i64(g, "axes", axes, (size_t)(score_rank - 2)), NULL);
        o->mask = ox_op(g, "Min", "mask", o->mask, pad, NULL);
    }
}

const char *ox_cached(ox_graph *g, const ox_positions_out *o, int layer, int value, const char *fresh) {
    if (!o->cache) return fresh;
    char past[64], present[64];
    const char *all = ox_op(g, "Concat", "cat", cache_name(past, sizeof past, layer, value, "past_key_values"), fresh, NULL);
    ox_attr_int(g, "axis", 2);
    ox_name_last(g, cache_name(present, sizeof present, layer, value, "present"));
    return ox_failed(g) ? all : ox_last_output(g);
}

void ox_cache_outputs(ox_graph *g, const ox_positions_out *o) {
    const int64_t dims[4] = {-1, o->kv_heads, -1, o->head_dim};
    const char *const sym[4] = {"batch", NULL, "total_sequence", NULL};
    char name[64];
    for (int l = 0; o->cache && l < o->n_layer; l++)
        for (int v = 0; v < 2; v++) ox_output(g, cache_name(name, sizeof name, l, v, "present"), OX_FLOAT, 4, dims, sym);
}

const char *ox_activation(ox_graph *g, int act, const char *x) {
    if (act == LLMOPT_ACT_SILU) return ox_op(g, "Mul", "silu", x, ox_op(g, "Sigmoid", "sig", x, NULL), NULL);
    const char *half = ox_const_f32(g, "half", 0.5f), *one = ox_const_f32(g, "one", 1.0f);
    if (act == LLMOPT_ACT_GELU_TANH) { /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
        const char *x3 = ox_op(g, "Mul", "x3", ox_op(g, "Mul", "x2", x, x, NULL), x, NULL);
        const char *in = ox_op(g, "Add", "inner", x, ox_op(g, "Mul", "cx3", x3, ox_const_f32(g, "c", 0.044715f), NULL), NULL);
        const char *t = ox_op(g, "Tanh", "tanh", ox_op(g, "Mul", "scaled", in, ox_const_f32(g, "k", 0.7978845608028654f), NULL),
                              NULL);
        return ox_op(g, "Mul", "gelu", ox_op(g, "Mul", "halfx", x, half, NULL), ox_op(g, "Add", "onep", t, one, NULL), NULL);
    }
    /* gelu with erf: 0.5 x (1 + erf(x / sqrt 2)) */
    const char *e = ox_op(g, "Erf", "erf", ox_op(g, "Mul", "xs", x, ox_const_f32(g, "r2", 0.7071067811865476f), NULL), NULL);
    return ox_op(g, "Mul", "gelu", ox_op(g, "Mul", "halfx", x, half, NULL), ox_op(g, "Add", "onep", e, one, NULL), NULL);
}

const char *ox_transpose(ox_graph *g, const char *x, const int64_t *perm, size_t n) {
    const char *y = ox_op(g, "Transpose", "t", x, NULL);
    ox_attr_ints(g, "perm", perm, n);
    return y;
}

const char *ox_slice_last(ox_graph *g, const char *x, int64_t from, int64_t to) {
    const int64_t a[1] = {from}, b[1] = {to}, axes[1] = {-1};
    return ox_op(g, "Slice", "slice", x, ox_const_i64(g, "starts", a, 1), ox_const_i64(g, "ends", b, 1),
                 ox_const_i64(g, "axes", axes, 1), NULL);
}

void ox_logits(ox_graph *g, const char *x, const char *head, const char *ids_shape, int64_t d, int64_t vocab, int last) {
    /* x [b, s, d] (or its last position, [b, 1, d]) as [b*s, d] times head [V, d] transposed
     * (Gemm transB: a tied embedding's values are stored once), back to [b, s, V] */
    const int64_t flat[2] = {-1, d}, v[1] = {vocab}, minus1[1] = {-1}, big[1] = {INT64_MAX}, one[1] = {1}, i0[1] = {0};
    const char *rows = ids_shape;
    if (last) {
        x = ox_op(g, "Slice", "last", x, ox_const_i64(g, "starts", minus1, 1), ox_const_i64(g, "ends", big, 1),
                  ox_const_i64(g, "axes", one, 1), NULL);
        const char *b = ox_op(g, "Slice", "batch", ids_shape, ox_const_i64(g, "starts", i0, 1), ox_const_i64(g, "ends", one, 1),
                              NULL);
        rows = ox_op(g, "Concat", "rows", b, ox_const_i64(g, "one", one, 1), NULL);
        ox_attr_int(g, "axis", 0);
    }
    const char *x2 = ox_op(g, "Reshape", "flat", x, ox_const_i64(g, "flat", flat, 2), NULL);
    const char *y = ox_op(g, "Gemm", "head", x2, head, NULL);
    ox_attr_int(g, "transB", 1);
    const char *shape = ox_op(g, "Concat", "logits_shape", rows, ox_const_i64(g, "vocab", v, 1), NULL);
    ox_attr_int(g, "axis", 0);
    ox_op(g, "Reshape", "logits", y, shape, NULL);
    ox_name_last(g, "logits");
    const int64_t dims[3] = {-1, last ? 1 : -1, vocab};
    const char *const sym[3] = {"batch", "sequence", NULL};
    ox_output(g, "logits", OX_FLOAT, 3, dims, sym);
}
