/* Argument checks for the CPU kernels, shared by the reference and the fast paths so both
 * accept exactly the same calls: counts, dtypes, devices, shapes against the op contract in
 * llmopt/kernel_ops.h, storage large enough for the shape, and the aliasing rules. A bad call
 * returns LLMOPT_EINVAL before any output is written. */
#include "cpu.h"
#include "backward.h"

#include <math.h>

static int64_t elem_size(int dtype) {
    switch (dtype) {
    case LLMOPT_DTYPE_F32: case LLMOPT_DTYPE_I32: return 4;
    case LLMOPT_DTYPE_F16: case LLMOPT_DTYPE_BF16: return 2;
    case LLMOPT_DTYPE_U8: case LLMOPT_DTYPE_I8: return 1;
    default: return 0;
    }
}

static int64_t numel(const llmopt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static int64_t last_dim(const llmopt_tensor *t) { return t->shape[t->ndim - 1]; }

/* t is a CPU tensor of dtype with 1..4 dims, every dim >= 1, and storage covering its shape. */
static int tensor_ok(const llmopt_tensor *t, int dtype) {
    if (!t || t->device != LLMOPT_DEVICE_CPU || t->dtype != dtype) return 0;
    if (t->ndim < 1 || t->ndim > LLMOPT_MAX_DIMS || !t->data) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 1 || t->shape[i] > (INT64_MAX / 16) / n) return 0;
        n *= t->shape[i];
    }
    return (uint64_t)(n * elem_size(dtype)) <= (uint64_t)t->nbytes;
}

static int is_weight_dtype(int dtype) {
    return dtype == LLMOPT_DTYPE_F32 || dtype == LLMOPT_DTYPE_F16 || dtype == LLMOPT_DTYPE_BF16;
}

static int same_shape(const llmopt_tensor *a, const llmopt_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* The byte ranges of a and b intersect. */
static int overlaps(const llmopt_tensor *a, const llmopt_tensor *b) {
    const char *a0 = a->data, *b0 = b->data;
    const char *a1 = a0 + numel(a) * elem_size(a->dtype), *b1 = b0 + numel(b) * elem_size(b->dtype);
    return a0 < b1 && b0 < a1;
}

/* out may be in itself (same pointer, same size) but must not partly overlap it. */
static int alias_ok(const llmopt_tensor *out, const llmopt_tensor *in) {
    return !overlaps(out, in) || (out->data == in->data && numel(out) == numel(in));
}

/* An op parameter struct at least as large as the one this plugin was built with. */
#define PARAMS_OK(p, type) ((p) && ((const type *)(p))->struct_size >= sizeof(type))

int cpu_check_matmul(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                     const void *params, cpu_mm_dims *d) {
    if (!in || (n_in != 2 && n_in != 3) || !params) return LLMOPT_EINVAL;
    const llmopt_op_matmul *p = params;
    if (p->struct_size < LLMOPT_OP_MATMUL_V0_SIZE) return LLMOPT_EINVAL;
    d->precision = p->struct_size >= sizeof *p ? p->precision : LLMOPT_MATMUL_HIGHEST;
    if (d->precision != LLMOPT_MATMUL_HIGHEST && d->precision != LLMOPT_MATMUL_MEDIUM) return LLMOPT_EINVAL;
    const llmopt_tensor *x = in[0], *w = in[1], *b = n_in == 3 ? in[2] : NULL;
    if (!tensor_ok(x, LLMOPT_DTYPE_F32) || !w || !is_weight_dtype(w->dtype) || !tensor_ok(w, w->dtype))
        return LLMOPT_EINVAL;
    if (w->ndim != 2 || (p->w_layout != LLMOPT_W_OUT_IN && p->w_layout != LLMOPT_W_IN_OUT))
        return LLMOPT_EINVAL;
    d->K = last_dim(x);
    d->M = numel(x) / d->K;
    d->layout = p->w_layout;
    d->accumulate = p->accumulate != 0;
    int64_t wk = p->w_layout == LLMOPT_W_OUT_IN ? w->shape[1] : w->shape[0];
    d->N = p->w_layout == LLMOPT_W_OUT_IN ? w->shape[0] : w->shape[1];
    if (wk != d->K) return LLMOPT_EINVAL;
    if (n_in == 3 && !b) return LLMOPT_EINVAL;
    d->has_bias = b != NULL;
    if (b && (!tensor_ok(b, LLMOPT_DTYPE_F32) || numel(b) != d->N || overlaps(out, b))) return LLMOPT_EINVAL;
    if (!tensor_ok(out, LLMOPT_DTYPE_F32) || last_dim(out) != d->N || numel(out) != d->M * d->N)
        return LLMOPT_EINVAL;
    if (overlaps(out, x) || overlaps(out, w)) return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_embedding(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                        cpu_rows *d) {
    if (!in || n_in != 2) return LLMOPT_EINVAL;
    const llmopt_tensor *table = in[0], *ids = in[1];
    if (!table || !is_weight_dtype(table->dtype) || !tensor_ok(table, table->dtype) || table->ndim != 2)
        return LLMOPT_EINVAL;
    if (!tensor_ok(ids, LLMOPT_DTYPE_I32) || !tensor_ok(out, LLMOPT_DTYPE_F32)) return LLMOPT_EINVAL;
    int64_t V = table->shape[0], C = table->shape[1], T = numel(ids);
    if (last_dim(out) != C || numel(out) != T * C || overlaps(out, table) || overlaps(out, ids))
        return LLMOPT_EINVAL;
    const int32_t *id = ids->data;
    for (int64_t t = 0; t < T; t++)
        if (id[t] < 0 || id[t] >= V) return LLMOPT_EINVAL;
    d->rows = T;
    d->cols = C;
    return 0;
}

int cpu_check_norm(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                   const void *params, int with_beta, cpu_rows *d) {
    if (!in || n_in < 2 || n_in > (with_beta ? 3 : 2) || !PARAMS_OK(params, llmopt_op_norm))
        return LLMOPT_EINVAL;
    float eps = ((const llmopt_op_norm *)params)->eps;
    if (!(eps >= 0.0f) || !isfinite(eps)) return LLMOPT_EINVAL;
    const llmopt_tensor *x = in[0];
    if (!tensor_ok(x, LLMOPT_DTYPE_F32) || !tensor_ok(out, LLMOPT_DTYPE_F32) || !same_shape(x, out))
        return LLMOPT_EINVAL;
    d->cols = last_dim(x);
    d->rows = numel(x) / d->cols;
    for (int i = 1; i < n_in; i++)
        if (!tensor_ok(in[i], LLMOPT_DTYPE_F32) || numel(in[i]) != d->cols || overlaps(out, in[i]))
            return LLMOPT_EINVAL;
    return overlaps(out, x) ? LLMOPT_EINVAL : 0;
}

int cpu_check_rope(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                   const void *params) {
    if (!in || (n_in != 1 && n_in != 2) || !PARAMS_OK(params, llmopt_op_rope)) return LLMOPT_EINVAL;
    const llmopt_op_rope *p = params;
    const llmopt_tensor *x = in[0];
    if (!tensor_ok(x, LLMOPT_DTYPE_F32) || x->ndim != 3 || !tensor_ok(out, LLMOPT_DTYPE_F32) ||
        !same_shape(x, out) || !alias_ok(out, x))
        return LLMOPT_EINVAL;
    if (p->n_past < 0 || p->rot_dim < 0 || p->rot_dim % 2 != 0 || p->rot_dim > x->shape[2])
        return LLMOPT_EINVAL;
    if (n_in == 2) { /* the frequency table */
        const llmopt_tensor *f = in[1];
        if (!tensor_ok(f, LLMOPT_DTYPE_F32) || f->ndim != 1 || f->shape[0] != p->rot_dim / 2 || overlaps(out, f))
            return LLMOPT_EINVAL;
    }
    if (!(p->theta > 0.0f) || !isfinite(p->theta) || !(p->scale > 0.0f) || !isfinite(p->scale))
        return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_attention(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                        const void *params, cpu_attn_dims *d) {
    if (!in || n_in != 3 || !PARAMS_OK(params, llmopt_op_attention)) return LLMOPT_EINVAL;
    const llmopt_op_attention *p = params;
    const llmopt_tensor *q = in[0], *k = in[1], *v = in[2];
    if (!tensor_ok(q, LLMOPT_DTYPE_F32) || !tensor_ok(k, LLMOPT_DTYPE_F32) ||
        !tensor_ok(v, LLMOPT_DTYPE_F32) || !tensor_ok(out, LLMOPT_DTYPE_F32))
        return LLMOPT_EINVAL;
    if (q->ndim != 3 || k->ndim != 3 || !same_shape(k, v) || !same_shape(q, out)) return LLMOPT_EINVAL;
    d->T = q->shape[0];
    d->Hq = q->shape[1];
    d->D = q->shape[2];
    d->S = k->shape[0];
    d->Hkv = k->shape[1];
    if (k->shape[2] != d->D || d->Hq % d->Hkv != 0 || p->n_past < 0 || d->S < p->n_past + d->T)
        return LLMOPT_EINVAL;
    if (!isfinite(p->scale)) return LLMOPT_EINVAL;
    if (overlaps(out, q) || overlaps(out, k) || overlaps(out, v)) return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_elementwise(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                          int n_ops, int64_t *n) {
    if (!in || n_in != n_ops || !tensor_ok(out, LLMOPT_DTYPE_F32)) return LLMOPT_EINVAL;
    for (int i = 0; i < n_in; i++)
        if (!tensor_ok(in[i], LLMOPT_DTYPE_F32) || !same_shape(in[i], out) || !alias_ok(out, in[i]))
            return LLMOPT_EINVAL;
    *n = numel(out);
    return 0;
}

int cpu_check_softmax(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, cpu_rows *d) {
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 1, &n);
    if (rc) return rc;
    d->cols = last_dim(out);
    d->rows = n / d->cols;
    return 0;
}

int cpu_check_cross_entropy(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                            const void *params, cpu_rows *d) {
    if (!in || n_in != 2 || !PARAMS_OK(params, llmopt_op_cross_entropy)) return LLMOPT_EINVAL;
    const llmopt_tensor *logits = in[0], *targets = in[1];
    if (!tensor_ok(logits, LLMOPT_DTYPE_F32) || !tensor_ok(targets, LLMOPT_DTYPE_I32) ||
        !tensor_ok(out, LLMOPT_DTYPE_F32))
        return LLMOPT_EINVAL;
    d->cols = last_dim(logits);
    d->rows = numel(logits) / d->cols;
    if (numel(targets) != d->rows || numel(out) != d->rows) return LLMOPT_EINVAL;
    if (overlaps(out, logits) || overlaps(out, targets)) return LLMOPT_EINVAL;
    int32_t ignore = ((const llmopt_op_cross_entropy *)params)->ignore_index;
    const int32_t *tg = targets->data;
    for (int64_t t = 0; t < d->rows; t++)
        if (tg[t] != ignore && (tg[t] < 0 || tg[t] >= d->cols)) return LLMOPT_EINVAL;
    return 0;
}

/* ---- backward ops and adamw (declared in backward.h) ---- */

/* An optional output passed in a params struct: an f32 tensor of n elements overlapping none
 * of the inputs nor out. */
static int grad_out_ok(const llmopt_tensor *g, int64_t n, const llmopt_tensor *const *in, int n_in,
                       const llmopt_tensor *out) {
    if (!tensor_ok(g, LLMOPT_DTYPE_F32) || numel(g) != n) return 0;
    for (int i = 0; i < n_in; i++)
        if (overlaps(g, in[i])) return 0;
    return !(out && out->data && overlaps(g, out));
}

int cpu_check_matmul_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                              const void *params, cpu_mm_dims *d, int *want_dx) {
    if (!in || n_in != 3 || !out || !params) return LLMOPT_EINVAL;
    const llmopt_op_matmul_backward *p = params;
    if (p->struct_size < LLMOPT_OP_MATMUL_BACKWARD_V0_SIZE) return LLMOPT_EINVAL;
    d->precision = p->struct_size >= sizeof *p ? p->precision : LLMOPT_MATMUL_HIGHEST;
    if (d->precision != LLMOPT_MATMUL_HIGHEST && d->precision != LLMOPT_MATMUL_MEDIUM) return LLMOPT_EINVAL;
    const llmopt_tensor *x = in[0], *w = in[1], *dy = in[2];
    if (!tensor_ok(x, LLMOPT_DTYPE_F32) || !w || !is_weight_dtype(w->dtype) || !tensor_ok(w, w->dtype) ||
        w->ndim != 2 || !tensor_ok(dy, LLMOPT_DTYPE_F32))
        return LLMOPT_EINVAL;
    if (p->w_layout != LLMOPT_W_OUT_IN && p->w_layout != LLMOPT_W_IN_OUT) return LLMOPT_EINVAL;
    d->K = last_dim(x);
    d->M = numel(x) / d->K;
    d->layout = p->w_layout;
    d->accumulate = p->accumulate_dx != 0;
    d->has_bias = p->db != NULL;
    int64_t wk = p->w_layout == LLMOPT_W_OUT_IN ? w->shape[1] : w->shape[0];
    d->N = p->w_layout == LLMOPT_W_OUT_IN ? w->shape[0] : w->shape[1];
    if (wk != d->K || last_dim(dy) != d->N || numel(dy) != d->M * d->N) return LLMOPT_EINVAL;
    *want_dx = out->data != NULL;
    if (*want_dx && (!tensor_ok(out, LLMOPT_DTYPE_F32) || last_dim(out) != d->K || numel(out) != d->M * d->K ||
                     overlaps(out, x) || overlaps(out, w) || overlaps(out, dy)))
        return LLMOPT_EINVAL;
    if (p->dw && (w->dtype != LLMOPT_DTYPE_F32 || !grad_out_ok(p->dw, d->N * d->K, in, n_in, out) ||
                  !same_shape(p->dw, w)))
        return LLMOPT_EINVAL;
    if (p->db && (!grad_out_ok(p->db, d->N, in, n_in, out) || (p->dw && overlaps(p->db, p->dw))))
        return LLMOPT_EINVAL;
    if (!*want_dx && !p->dw && !p->db) return LLMOPT_EINVAL; /* nothing to compute */
    return 0;
}

int cpu_check_norm_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                            const void *params, int with_beta, cpu_rows *d) {
    if (!in || n_in != 3 || !PARAMS_OK(params, llmopt_op_norm_backward)) return LLMOPT_EINVAL;
    const llmopt_op_norm_backward *p = params;
    if (!(p->eps >= 0.0f) || !isfinite(p->eps)) return LLMOPT_EINVAL;
    const llmopt_tensor *x = in[0], *gamma = in[1], *dy = in[2];
    if (!tensor_ok(x, LLMOPT_DTYPE_F32) || !tensor_ok(dy, LLMOPT_DTYPE_F32) || !same_shape(x, dy) ||
        !tensor_ok(out, LLMOPT_DTYPE_F32) || !same_shape(x, out))
        return LLMOPT_EINVAL;
    d->cols = last_dim(x);
    d->rows = numel(x) / d->cols;
    if (!tensor_ok(gamma, LLMOPT_DTYPE_F32) || numel(gamma) != d->cols) return LLMOPT_EINVAL;
    if (overlaps(out, x) || overlaps(out, gamma) || overlaps(out, dy)) return LLMOPT_EINVAL;
    if (!p->dgamma || !grad_out_ok(p->dgamma, d->cols, in, n_in, out)) return LLMOPT_EINVAL;
    if (with_beta ? (!p->dbeta || !grad_out_ok(p->dbeta, d->cols, in, n_in, out) || overlaps(p->dbeta, p->dgamma))
                  : p->dbeta != NULL)
        return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_attention_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                 const void *params, cpu_attn_dims *d) {
    if (!in || n_in != 4 || !PARAMS_OK(params, llmopt_op_attention_backward)) return LLMOPT_EINVAL;
    const llmopt_op_attention_backward *p = params;
    const llmopt_tensor *q = in[0], *k = in[1], *v = in[2], *dy = in[3];
    for (int i = 0; i < 4; i++)
        if (!tensor_ok(in[i], LLMOPT_DTYPE_F32) || in[i]->ndim != 3) return LLMOPT_EINVAL;
    if (!same_shape(k, v) || !same_shape(q, dy) || !tensor_ok(out, LLMOPT_DTYPE_F32) || !same_shape(q, out))
        return LLMOPT_EINVAL;
    d->T = q->shape[0], d->Hq = q->shape[1], d->D = q->shape[2];
    d->S = k->shape[0], d->Hkv = k->shape[1];
    if (d->S != d->T || k->shape[2] != d->D || d->Hq % d->Hkv != 0 || !isfinite(p->scale)) return LLMOPT_EINVAL;
    for (int i = 0; i < 4; i++)
        if (overlaps(out, in[i])) return LLMOPT_EINVAL;
    if (!p->dk || !p->dv || !same_shape(p->dk, k) || !same_shape(p->dv, k) ||
        !grad_out_ok(p->dk, numel(k), in, n_in, out) || !grad_out_ok(p->dv, numel(k), in, n_in, out) ||
        overlaps(p->dk, p->dv))
        return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_swiglu_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                              const void *params, int64_t *n) {
    if (!PARAMS_OK(params, llmopt_op_swiglu_backward)) return LLMOPT_EINVAL;
    int rc = cpu_check_elementwise(in, n_in, out, 3, n);
    if (rc) return rc;
    /* dup is written element by element after every input of that element is read, so it may
     * be one of the inputs exactly, but not out */
    const llmopt_tensor *dup = ((const llmopt_op_swiglu_backward *)params)->dup;
    if (!tensor_ok(dup, LLMOPT_DTYPE_F32) || !same_shape(dup, out) || overlaps(dup, out)) return LLMOPT_EINVAL;
    for (int i = 0; i < n_in; i++)
        if (!alias_ok(dup, in[i])) return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_embedding_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                 cpu_rows *d, int64_t *V) {
    if (!in || n_in != 2) return LLMOPT_EINVAL;
    const llmopt_tensor *ids = in[0], *dy = in[1];
    if (!tensor_ok(ids, LLMOPT_DTYPE_I32) || !tensor_ok(dy, LLMOPT_DTYPE_F32) || !tensor_ok(out, LLMOPT_DTYPE_F32) ||
        out->ndim != 2)
        return LLMOPT_EINVAL;
    *V = out->shape[0];
    d->cols = out->shape[1];
    d->rows = numel(ids);
    if (last_dim(dy) != d->cols || numel(dy) != d->rows * d->cols || overlaps(out, ids) || overlaps(out, dy))
        return LLMOPT_EINVAL;
    const int32_t *id = ids->data;
    for (int64_t t = 0; t < d->rows; t++)
        if (id[t] < 0 || id[t] >= *V) return LLMOPT_EINVAL;
    return 0;
}

/* The logits, targets and dlogits of a cross-entropy gradient; in_place: out may be the logits. */
static int check_ce_grad(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, int32_t ignore,
                         float scale, int in_place, cpu_rows *d) {
    if (!in || n_in != 2) return LLMOPT_EINVAL;
    const llmopt_tensor *logits = in[0], *targets = in[1];
    if (!tensor_ok(logits, LLMOPT_DTYPE_F32) || !tensor_ok(targets, LLMOPT_DTYPE_I32) ||
        !tensor_ok(out, LLMOPT_DTYPE_F32) || !same_shape(out, logits) || !isfinite(scale))
        return LLMOPT_EINVAL;
    d->cols = last_dim(logits);
    d->rows = numel(logits) / d->cols;
    if (numel(targets) != d->rows || (in_place ? !alias_ok(out, logits) : overlaps(out, logits)) ||
        overlaps(out, targets))
        return LLMOPT_EINVAL;
    const int32_t *tg = targets->data;
    for (int64_t t = 0; t < d->rows; t++)
        if (tg[t] != ignore && (tg[t] < 0 || tg[t] >= d->cols)) return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_cross_entropy_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                     const void *params, cpu_rows *d) {
    if (!PARAMS_OK(params, llmopt_op_cross_entropy_backward)) return LLMOPT_EINVAL;
    const llmopt_op_cross_entropy_backward *p = params;
    return check_ce_grad(in, n_in, out, p->ignore_index, p->scale, 0, d);
}

int cpu_check_cross_entropy_fused(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                  const void *params, cpu_rows *d) {
    if (!PARAMS_OK(params, llmopt_op_cross_entropy_fused)) return LLMOPT_EINVAL;
    const llmopt_op_cross_entropy_fused *p = params;
    int rc = check_ce_grad(in, n_in, out, p->ignore_index, p->scale, 1, d);
    if (rc) return rc;
    const llmopt_tensor *l = p->losses;
    if (!tensor_ok(l, LLMOPT_DTYPE_F32) || numel(l) != d->rows || overlaps(l, in[0]) || overlaps(l, in[1]) ||
        overlaps(l, out))
        return LLMOPT_EINVAL;
    return 0;
}

/* adamw's and adamw_8bit's step and hyperparameters */
static int adamw_hyper_ok(int32_t step, float lr, float b1, float b2, float eps, float wd, float gs) {
    return step >= 1 && b1 >= 0.0f && b1 < 1.0f && b2 >= 0.0f && b2 < 1.0f && eps >= 0.0f && isfinite(eps) &&
           isfinite(lr) && isfinite(wd) && isfinite(gs);
}

int cpu_check_adamw(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, const void *params,
                    int64_t *n) {
    if (!in || n_in != 1 || !PARAMS_OK(params, llmopt_op_adamw)) return LLMOPT_EINVAL;
    const llmopt_op_adamw *p = params;
    if (!tensor_ok(in[0], LLMOPT_DTYPE_F32) || !tensor_ok(out, LLMOPT_DTYPE_F32) || numel(out) != numel(in[0]) ||
        overlaps(out, in[0]))
        return LLMOPT_EINVAL;
    *n = numel(out);
    if (!p->m || !p->v || !grad_out_ok(p->m, *n, in, n_in, out) || !grad_out_ok(p->v, *n, in, n_in, out) ||
        overlaps(p->m, p->v))
        return LLMOPT_EINVAL;
    return adamw_hyper_ok(p->step, p->lr, p->beta1, p->beta2, p->eps, p->weight_decay, p->grad_scale) ? 0 : LLMOPT_EINVAL;
}

int cpu_check_adamw_8bit(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, const void *params,
                         int64_t *n) {
    if (!in || n_in != 1 || !PARAMS_OK(params, llmopt_op_adamw_8bit)) return LLMOPT_EINVAL;
    const llmopt_op_adamw_8bit *p = params;
    if (!tensor_ok(in[0], LLMOPT_DTYPE_F32) || !tensor_ok(out, LLMOPT_DTYPE_F32) || numel(out) != numel(in[0]) ||
        overlaps(out, in[0]))
        return LLMOPT_EINVAL;
    *n = numel(out);
    int64_t blocks = (*n + LLMOPT_ADAMW8_BLOCK - 1) / LLMOPT_ADAMW8_BLOCK;
    const llmopt_tensor *st[4] = {p->m, p->v, p->m_absmax, p->v_absmax};
    for (int i = 0; i < 4; i++) {
        if (!(i < 2 ? tensor_ok(st[i], LLMOPT_DTYPE_U8) && numel(st[i]) == *n
                    : tensor_ok(st[i], LLMOPT_DTYPE_F32) && numel(st[i]) == blocks))
            return LLMOPT_EINVAL;
        if (overlaps(st[i], in[0]) || overlaps(st[i], out)) return LLMOPT_EINVAL;
        for (int k = 0; k < i; k++)
            if (overlaps(st[i], st[k])) return LLMOPT_EINVAL;
    }
    return adamw_hyper_ok(p->step, p->lr, p->beta1, p->beta2, p->eps, p->weight_decay, p->grad_scale) ? 0 : LLMOPT_EINVAL;
}
