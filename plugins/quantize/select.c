/* Layer selection for the quantize stages (include / exclude globs over checkpoint names) and
 * the small tensor helpers every stage shares. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quantize.h"

#define A qz_api

int qz_glob(const char *p, const char *s) {
    /* iterative matcher with one backtrack point: linear in practice, no recursion */
    const char *star = NULL, *retry = NULL;
    while (*s) {
        if (*p == '*') {
            star = ++p;
            retry = s;
        } else if (*p == '?' || *p == *s) {
            p++, s++;
        } else if (star) {
            p = star;
            s = ++retry;
        } else {
            return 0;
        }
    }
    while (*p == '*') p++;
    return *p == '\0';
}

static int is_float(int dt) { return dt == LLMOPT_DTYPE_F32 || dt == LLMOPT_DTYPE_F16 || dt == LLMOPT_DTYPE_BF16; }

static int candidate(const llmopt_model *m, const char *name, int weights_only) {
    const llmopt_tensor *t = A->model_get(m, name);
    if (!t || !is_float(t->dtype)) return 0;
    if (!weights_only) return 1;
    size_t n = strlen(name);
    return t->ndim == 2 && n > 7 && strcmp(name + n - 7, ".weight") == 0;
}

static int any_match(llmopt_stage_ctx *ctx, const char *param, const char *name) {
    size_t n = A->param_list_len(ctx, param);
    for (size_t i = 0; i < n; i++)
        if (qz_glob(A->param_list_at(ctx, param, i), name)) return 1;
    return 0;
}

int qz_select(llmopt_stage_ctx *ctx, const llmopt_model *m, int weights_only, qz_selection *sel) {
    memset(sel, 0, sizeof *sel);
    size_t nt = A->model_n_tensors(m), n_inc = A->param_list_len(ctx, "include");
    /* every include pattern must name something: a typo should not quietly quantize nothing */
    for (size_t i = 0; i < n_inc; i++) {
        const char *pat = A->param_list_at(ctx, "include", i);
        int hit = 0;
        for (size_t k = 0; !hit && k < nt; k++) {
            const char *name = A->model_tensor_name(m, k);
            hit = candidate(m, name, weights_only) && qz_glob(pat, name);
        }
        if (!hit)
            return A->set_error(ctx, LLMOPT_EINVAL, "include pattern '%s' matches no %s of the model", pat,
                                weights_only ? "2-D float weight (*.weight)" : "float tensor");
    }
    sel->names = calloc(nt ? nt : 1, sizeof *sel->names);
    if (!sel->names) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (size_t k = 0; k < nt; k++) {
        const char *name = A->model_tensor_name(m, k);
        if (!candidate(m, name, weights_only)) continue;
        if (n_inc && !any_match(ctx, "include", name)) continue;
        if (any_match(ctx, "exclude", name)) continue;
        sel->names[sel->n++] = name;
    }
    if (sel->n == 0) {
        qz_selection_free(sel);
        return A->set_error(ctx, LLMOPT_EINVAL, "include/exclude select no %s of the model",
                            weights_only ? "2-D float weight (*.weight)" : "float tensor");
    }
    return 0;
}

void qz_selection_free(qz_selection *sel) {
    free(sel->names);
    memset(sel, 0, sizeof *sel);
}

int qz_linear_dims(const llmopt_model *m, const char *name, int64_t *rows, int64_t *cols) {
    int layout = A->model_linear_layout(m, name);
    const llmopt_tensor *t = A->model_get(m, name);
    if (layout < 0 || !t) return LLMOPT_EINVAL;
    int in_out = layout == LLMOPT_W_IN_OUT;
    *rows = t->shape[in_out ? 1 : 0];
    *cols = t->shape[in_out ? 0 : 1];
    return layout;
}

/* dst[c][r] = src[r][c] for an R x C f32 matrix */
static void transpose_f32(float *dst, const float *src, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) dst[c * R + r] = src[r * C + c];
}

float *qz_linear_f32(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *name, int64_t *rows, int64_t *cols) {
    int layout = qz_linear_dims(m, name, rows, cols);
    if (layout < 0) {
        A->set_error(ctx, LLMOPT_EINVAL, "'%s' is not a 2-D weight of the model", name);
        return NULL;
    }
    float *v = qz_weight_f32(ctx, A->model_get(m, name));
    if (!v || layout == LLMOPT_W_OUT_IN) return v;
    float *t = malloc((size_t)(*rows * *cols) * sizeof *t);
    if (t) transpose_f32(t, v, *cols, *rows); /* stored [in, out] = [cols, rows] */
    else A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    free(v);
    return t;
}

int qz_linear_set(llmopt_stage_ctx *ctx, llmopt_model *m, const char *name, const float *w, int64_t rows, int64_t cols,
                  int layout, int dtype) {
    const llmopt_dtype_traits *tr = A->dtype_traits(dtype);
    if (layout == LLMOPT_W_OUT_IN || (tr && tr->is_quantized)) {
        int64_t shape[2] = {rows, cols};
        return qz_set_from_f32(ctx, m, name, w, 2, shape, dtype);
    }
    float *t = malloc((size_t)(rows * cols) * sizeof *t);
    if (!t) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    transpose_f32(t, w, rows, cols);
    int64_t shape[2] = {cols, rows};
    int rc = qz_set_from_f32(ctx, m, name, t, 2, shape, dtype);
    free(t);
    return rc;
}

int qz_quantize_linear(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const char *name, int dtype) {
    const llmopt_tensor *t = A->model_get(in, name);
    if (A->model_linear_layout(in, name) == LLMOPT_W_OUT_IN) {
        llmopt_tensor *q = NULL;
        int rc = A->tensor_convert(ctx, t, dtype, &q);
        if (rc) return rc;
        rc = A->model_set(out, name, q);
        A->tensor_unref(q);
        return rc ? A->set_error(ctx, rc, "cannot set tensor '%s'", name) : 0;
    }
    int64_t rows, cols;
    float *w = qz_linear_f32(ctx, in, name, &rows, &cols);
    if (!w) return LLMOPT_EFAIL;
    int rc = qz_linear_set(ctx, out, name, w, rows, cols, LLMOPT_W_OUT_IN, dtype);
    free(w);
    return rc;
}

float *qz_weight_f32(llmopt_stage_ctx *ctx, const llmopt_tensor *w) {
    llmopt_tensor *f = NULL;
    if (A->tensor_convert(ctx, w, LLMOPT_DTYPE_F32, &f)) return NULL;
    size_t n = (size_t)A->tensor_numel(f);
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (v) memcpy(v, f->data, n * sizeof *v);
    else A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    A->tensor_unref(f);
    return v;
}

int qz_set_from_f32(llmopt_stage_ctx *ctx, llmopt_model *m, const char *name, const float *v, int ndim,
                    const int64_t *shape, int dtype) {
    llmopt_tensor *f = A->tensor_new(LLMOPT_DTYPE_F32, ndim, shape), *t = NULL;
    if (!f) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory for '%s'", name);
    memcpy(f->data, v, f->nbytes);
    int rc = A->tensor_convert(ctx, f, dtype, &t);
    A->tensor_unref(f);
    if (rc) return rc;
    rc = A->model_set(m, name, t);
    A->tensor_unref(t);
    return rc ? A->set_error(ctx, rc, "cannot set tensor '%s'", name) : 0;
}

int qz_check_rows(llmopt_stage_ctx *ctx, const llmopt_model *m, const qz_selection *sel, int dtype) {
    const llmopt_dtype_traits *tr = A->dtype_traits(dtype);
    if (!tr) {
        if (LLMOPT_DTYPE_IS_GQ(dtype) || (dtype & LLMOPT_DTYPE_GQ_FLAG))
            return A->set_error(ctx, LLMOPT_EINVAL, "no %d-bit type with groups of %d: group * bits must be a multiple of 8",
                                LLMOPT_DTYPE_GQ_BITS(dtype), LLMOPT_DTYPE_GQ_GROUP(dtype));
        return A->set_error(ctx, LLMOPT_EINVAL, "unknown quantized type");
    }
    for (size_t i = 0; i < sel->n; i++) {
        int64_t rows = 0, cols = 0;
        qz_linear_dims(m, sel->names[i], &rows, &cols);
        if (cols % tr->block_size != 0)
            return A->set_error(ctx, LLMOPT_EINVAL,
                                "tensor '%s' (%lld outputs x %lld inputs): group size %lld does not divide its rows of %lld "
                                "(%s); pick a group size that does, or exclude the tensor",
                                sel->names[i], (long long)rows, (long long)cols, (long long)tr->block_size,
                                (long long)cols, tr->name);
    }
    return 0;
}

int qz_group_dtype(llmopt_stage_ctx *ctx, int64_t cols) {
    int64_t g = A->param_int(ctx, "group_size");
    return LLMOPT_DTYPE_GQ((int)A->param_int(ctx, "bits"), (int)(g ? g : cols), !A->param_bool(ctx, "sym"));
}

int qz_validate_group(llmopt_stage_ctx *ctx) {
    int64_t bits = A->param_int(ctx, "bits"), g = A->param_int(ctx, "group_size");
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
        return A->set_error(ctx, LLMOPT_EINVAL, "bits is %lld; 2, 3, 4 or 8 expected", (long long)bits);
    if (g && (g * bits) % 8 != 0)
        return A->set_error(ctx, LLMOPT_EINVAL, "group_size %lld x %lld bits is not a whole number of bytes",
                            (long long)g, (long long)bits);
    return 0;
}

/* ---- GQ blocks: f16 scale, (asym) f16 zero, codes little-endian at bit i * bits ---- */

float qz_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float f;
    if (exp == 0) f = ldexpf((float)man, -24);
    else if (exp == 31) f = man ? NAN : INFINITY;
    else f = ldexpf((float)(man | 0x400), (int)exp - 25);
    uint32_t u;
    memcpy(&u, &f, 4);
    u |= sign;
    memcpy(&f, &u, 4);
    return f;
}

void qz_gq_params(int dtype, const uint8_t *b, float *scale, float *offset) {
    uint16_t h;
    memcpy(&h, b, 2);
    *scale = qz_f16_to_f32(h);
    if (LLMOPT_DTYPE_GQ_ASYM(dtype)) {
        memcpy(&h, b + 2, 2);
        *offset = qz_f16_to_f32(h);
    } else {
        *offset = (float)(1 << (LLMOPT_DTYPE_GQ_BITS(dtype) - 1));
    }
}

void qz_gq_set_code(uint8_t *codes, int64_t i, int bits, unsigned q) {
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    for (int k = 0; k < bits; k++, bit++) {
        uint8_t m = (uint8_t)(1u << (bit & 7));
        codes[bit >> 3] = (uint8_t)((codes[bit >> 3] & ~m) | ((q >> k & 1) ? m : 0));
    }
}

unsigned qz_gq_code(const uint8_t *codes, int64_t i, int bits) {
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    unsigned q = 0;
    for (int k = 0; k < bits; k++, bit++) q |= (unsigned)(codes[bit >> 3] >> (bit & 7) & 1) << k;
    return q;
}
