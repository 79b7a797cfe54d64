/* Fast CPU kernels for every op but matmul (matmul.c): the reference math, split over the host's
 * compute threads (llmopt_host_api.parallel_for) by rows or element ranges, with the inner dot
 * products, axpys and f16/bf16 row conversions taken from the SIMD table chosen at init.
 * Also the portable ("generic") SIMD table: plain loops the compiler can vectorise. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- the generic SIMD table ---- */

static float generic_dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = cpu_lanes_sum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void generic_axpy(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void generic_f16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    cpu_row_to_f32(dst, src, LLMOPT_DTYPE_F16, n);
}

static void generic_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    cpu_row_to_f32(dst, src, LLMOPT_DTYPE_BF16, n);
}

static void generic_vexp(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = expf(fminf(fmaxf(x[i], CPU_EXP_LO), CPU_EXP_HI));
}

static void generic_adamw(const cpu_adamw_k *k, const float *grad, float *param, float *m, float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] * k->grad_scale;
        m[i] = k->b1 * m[i] + (1.0f - k->b1) * g;
        v[i] = k->b2 * v[i] + (1.0f - k->b2) * g * g;
        param[i] *= k->decay;
        param[i] -= k->step_size * m[i] / (sqrtf(v[i]) / k->bc2_sqrt + k->eps);
    }
}

static float half_f32(uint16_t h, int bf16) { return bf16 ? cpu_bf16_to_f32(h) : cpu_f16_to_f32(h); }

static float generic_dot_half(const float *a, const uint16_t *b, int64_t n, int bf16) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * half_f32(b[i + j], bf16);
    float s = cpu_lanes_sum(acc);
    for (; i < n; i++) s += a[i] * half_f32(b[i], bf16);
    return s;
}

static void generic_axpy_half(float *y, const float *a, const uint16_t *w, int64_t ldw, int rows, int64_t n, int bf16) {
    for (int r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++) y[i] += a[r] * half_f32(w[r * ldw + i], bf16);
}

static void generic_a8_codes(const int32_t *base, const float *thr, uint32_t cells, const float *x, uint8_t *out,
                             int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        uint32_t c = bits >> 15, mag = c & 0xffffu;
        c = (c & 0x10000u) | (mag < cells ? mag : cells - 1);
        out[i] = (uint8_t)(base[c] + (thr[c] <= x[i]));
    }
}

const cpu_simd cpu_simd_generic = {"generic", generic_dot, generic_axpy, generic_f16_to_f32,
                                   generic_bf16_to_f32, generic_vexp, generic_adamw, generic_dot_half,
                                   generic_axpy_half, generic_a8_codes, NULL};

/* Rows per parallel_for chunk so a chunk holds about 16K elements of work. */
static int64_t row_grain(int64_t cols) { return cols >= 16384 ? 1 : 16384 / cols; }

/* ---- embedding ---- */

typedef struct emb_job { const llmopt_tensor *table; const int32_t *ids; float *out; int64_t C; } emb_job;

static void emb_rows(void *arg, int64_t begin, int64_t end) {
    const emb_job *j = arg;
    int dt = j->table->dtype;
    for (int64_t t = begin; t < end; t++) {
        float *o = j->out + t * j->C;
        int64_t row = (int64_t)j->ids[t] * j->C;
        if (dt == LLMOPT_DTYPE_F32) memcpy(o, (const float *)j->table->data + row, (size_t)j->C * sizeof(float));
        else if (dt == LLMOPT_DTYPE_F16) cpu_isa->f16_to_f32(o, (const uint16_t *)j->table->data + row, j->C);
        else cpu_isa->bf16_to_f32(o, (const uint16_t *)j->table->data + row, j->C);
    }
}

int cpu_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // table is (V,C), ids is (T), out is (T,C)
    (void)p;
    cpu_rows d;
    int rc = cpu_check_embedding(in, n_in, out, &d);
    if (rc) return rc;
    emb_job j = {in[0], in[1]->data, out->data, d.cols};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), emb_rows, &j);
    return 0;
}

/* ---- layernorm, rmsnorm ---- */

typedef struct norm_job { const float *x, *gamma, *beta; float *out; int64_t C; float eps; } norm_job;

static void layernorm_rows(void *arg, int64_t begin, int64_t end) {
    const norm_job *j = arg;
    int64_t C = j->C;
    for (int64_t m = begin; m < end; m++) {
        const float *x = j->x + m * C;
        float *o = j->out + m * C;
        /* one running sum each, in order (cpu_sum's lanes are for the backward): the int8 paths
         * quantize these outputs, and the interop tests hold them to references that sum so */
        float mean = 0.0f;
        for (int64_t c = 0; c < C; c++) mean += x[c];
        mean /= (float)C;
        float var = 0.0f;
        for (int64_t c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + j->eps);
        if (j->beta)
            for (int64_t c = 0; c < C; c++) o[c] = (x[c] - mean) * rstd * j->gamma[c] + j->beta[c];
        else
            for (int64_t c = 0; c < C; c++) o[c] = (x[c] - mean) * rstd * j->gamma[c];
    }
}

int cpu_layernorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,C), gamma is (C), beta is (C) or absent, out is (M,C)
    cpu_rows d;
    int rc = cpu_check_norm(in, n_in, out, p, 1, &d);
    if (rc) return rc;
    norm_job j = {in[0]->data, in[1]->data, n_in == 3 ? in[2]->data : NULL, out->data, d.cols,
                  ((const llmopt_op_norm *)p)->eps};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), layernorm_rows, &j);
    return 0;
}

static void rmsnorm_rows(void *arg, int64_t begin, int64_t end) {
    const norm_job *j = arg;
    int64_t C = j->C;
    for (int64_t m = begin; m < end; m++) {
        const float *x = j->x + m * C;
        float *o = j->out + m * C;
        float rstd = 1.0f / sqrtf(cpu_isa->dot(x, x, C) / (float)C + j->eps);
        for (int64_t c = 0; c < C; c++) o[c] = x[c] * rstd * j->gamma[c];
    }
}

int cpu_rmsnorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,C), gamma is (C), out is (M,C)
    cpu_rows d;
    int rc = cpu_check_norm(in, n_in, out, p, 0, &d);
    if (rc) return rc;
    norm_job j = {in[0]->data, in[1]->data, NULL, out->data, d.cols, ((const llmopt_op_norm *)p)->eps};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), rmsnorm_rows, &j);
    return 0;
}

/* ---- rope ---- */

typedef struct rope_job {
    const float *x;
    const float *freq; /* in[1], or NULL: theta's frequencies */
    float *out;
    int64_t H, D;
    const llmopt_op_rope *r;
    float sin_sign; /* +1 rotates by the angle; -1 by its negative, the inverse (rope's gradient) */
} rope_job;

static void rope_rows(void *arg, int64_t begin, int64_t end) {
    const rope_job *j = arg;
    int64_t H = j->H, D = j->D, half = j->r->rot_dim / 2;
    for (int64_t t = begin; t < end; t++) {
        double pos = (double)(j->r->n_past + t) / j->r->scale;
        /* one angle per (t, i), applied to every head */
        for (int64_t i = 0; i < half; i++) {
            double angle = pos * (j->freq ? (double)j->freq[i] : pow(j->r->theta, -2.0 * (double)i / (double)j->r->rot_dim));
            float cos_a = (float)cos(angle), sin_a = j->sin_sign * (float)sin(angle);
            for (int64_t h = 0; h < H; h++) {
                const float *x = j->x + (t * H + h) * D;
                float *o = j->out + (t * H + h) * D;
                float x1 = x[i], x2 = x[i + half];
                o[i] = x1 * cos_a - x2 * sin_a;
                o[i + half] = x2 * cos_a + x1 * sin_a;
            }
        }
        if (j->out != j->x && j->r->rot_dim < D)
            for (int64_t h = 0; h < H; h++)
                memcpy(j->out + (t * H + h) * D + j->r->rot_dim, j->x + (t * H + h) * D + j->r->rot_dim,
                       (size_t)(D - j->r->rot_dim) * sizeof(float));
    }
}

int cpu_rope_rotate(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p, float sin_sign) {
    // x is (T,H,D), out is (T,H,D) and may be x
    int rc = cpu_check_rope(in, n_in, out, p);
    if (rc) return rc;
    rope_job j = {in[0]->data, n_in == 2 ? in[1]->data : NULL, out->data, in[0]->shape[1], in[0]->shape[2], p, sin_sign};
    cpu_api->parallel_for(in[0]->shape[0], row_grain(j.H * j.D), rope_rows, &j);
    return 0;
}

int cpu_rope(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    return cpu_rope_rotate(in, n_in, out, p, 1.0f);
}

/* ---- attention ---- */

/* Sums in eight lanes, added pairwise at the end: one running sum is an add's latency per value
 * and the compiler may not reorder it (layernorm backward's mean and variance were 2.6% of a
 * kjv-tiny step). sq_dev: the sum of (x - mean)^2. */
float cpu_sum(const float *x, int64_t n) {
    float a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += x[i + k];
    for (; i < n; i++) a[i % 8] += x[i];
    return cpu_lanes_sum(a);
}

float cpu_sq_dev_sum(const float *x, int64_t n, float mean) {
    float a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += (x[i + k] - mean) * (x[i + k] - mean);
    for (; i < n; i++) a[i % 8] += (x[i] - mean) * (x[i] - mean);
    return cpu_lanes_sum(a);
}

/* Eight running maxima: one chain of compares is a compare's latency per value, and the
 * compiler may not reorder it (2.4% of a kjv-tiny step, cross-entropy and attention). Lane by
 * lane the compiler vectorizes it; NaNs are skipped as by one chain. */
float cpu_row_max(const float *x, int64_t n) {
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    for (int k = 1; k < 8; k++) m[0] = m[k] > m[0] ? m[k] : m[0];
    return m[0];
}

/* Sum of exp(x[i] - shift) over n values through the SIMD table's vexp (eight partial sums); with
 * out, the exps are also stored there, else they go through a stack buffer a chunk at a time.
 * Cross-entropy's rows (50257 logits for GPT-2) called libm expf once per value. */
#define EXP_CHUNK 512
float cpu_exp_shift_sum(const float *x, int64_t n, float shift, float *out) {
    float buf[EXP_CHUNK], acc[8] = {0};
    for (int64_t i0 = 0; i0 < n; i0 += EXP_CHUNK) {
        const int64_t c = n - i0 < EXP_CHUNK ? n - i0 : EXP_CHUNK;
        float *e = out ? out + i0 : buf;
        for (int64_t i = 0; i < c; i++) e[i] = x[i0 + i] - shift;
        cpu_isa->vexp(e, c);
        int64_t i = 0;
        for (; i + 8 <= c; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += e[i + k];
        for (; i < c; i++) acc[i % 8] += e[i];
    }
    return cpu_lanes_sum(acc);
}

typedef struct attn_job {
    const float *q, *k, *v;
    float *out;
    cpu_attn_dims d;
    const llmopt_op_attention *a;
    atomic_int failed;
} attn_job;

/* Queries per task: a block of ATT_QB rows of one head meets its keys in two sgemm calls,
 * S = scale * Q K^T (only the keys the block's last row may see) and out = softmax(S) V, with
 * the causal mask applied in between (masked scores are 0 after the softmax). One dot product
 * and one axpy per (query, key) pair through the SIMD table cost a fifth of a 512-token GPT-2
 * prefill (perf); the sgemm calls run at BLAS speed. */
#define ATT_QB 32

/* One task per (query block qb, query head h): index = qb * Hq + h. */
static void attn_tasks(void *arg, int64_t begin, int64_t end) {
    attn_job *j = arg;
    const cpu_attn_dims *d = &j->d;
    const int64_t n_all = j->a->n_past + d->T, group = d->Hq / d->Hkv;
    float *S = malloc((size_t)ATT_QB * (size_t)n_all * sizeof(float));
    if (!S) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t task = begin; task < end; task++) {
        const int64_t h = task % d->Hq, t0 = task / d->Hq * ATT_QB, kvh = h / group;
        const int64_t m = d->T - t0 < ATT_QB ? d->T - t0 : ATT_QB;
        const int64_t nk = j->a->causal ? j->a->n_past + t0 + m : n_all; /* keys of the block's last row */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, (int)d->D, j->a->scale,
                    j->q + (t0 * d->Hq + h) * d->D, (int)(d->Hq * d->D), j->k + kvh * d->D, (int)(d->Hkv * d->D),
                    0.0f, S, (int)nk);
        for (int64_t r = 0; r < m; r++) {
            float *row = S + r * nk;
            const int64_t valid = j->a->causal ? j->a->n_past + t0 + r + 1 : nk;
            float maxval = cpu_row_max(row, valid), sum = 0.0f;
            for (int64_t s = 0; s < valid; s++) row[s] -= maxval;
            cpu_isa->vexp(row, valid);
            for (int64_t s = 0; s < valid; s++) sum += row[s];
            const float inv = 1.0f / sum;
            for (int64_t s = 0; s < valid; s++) row[s] *= inv;
            for (int64_t s = valid; s < nk; s++) row[s] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d->D, (int)nk, 1.0f, S, (int)nk,
                    j->v + kvh * d->D, (int)(d->Hkv * d->D), 0.0f, j->out + (t0 * d->Hq + h) * d->D,
                    (int)(d->Hq * d->D));
    }
    free(S);
}

int cpu_attention(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // q is (T,Hq,D), k and v are (S,Hkv,D), out is (T,Hq,D)
    cpu_attn_dims d;
    int rc = cpu_check_attention(in, n_in, out, p, &d);
    if (rc) return rc;
    attn_job j = {.q = in[0]->data, .k = in[1]->data, .v = in[2]->data, .out = out->data, .d = d, .a = p};
    atomic_init(&j.failed, 0);
    cpu_api->parallel_for((j.d.T + ATT_QB - 1) / ATT_QB * j.d.Hq, 1, attn_tasks, &j);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

/* ---- elementwise activations, add ---- */

typedef struct ew_job { const float *a, *b; float *out; } ew_job;

#define EW_GRAIN 8192

/* GELU (tanh form), SiLU and SwiGLU through the table's vexp, EW_BLOCK elements at a time:
 * 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)) and x sigmoid(x) = x / (1 + exp(-x)). libm's tanhf
 * and expf one element at a time were a tenth of a GPT-2 prefill (perf). */
#define EW_BLOCK 256

static void gelu_range(void *arg, int64_t begin, int64_t end) {
    const ew_job *j = arg;
    const float s = -2.0f * 0.7978845608028654f; /* -2 sqrt(2/pi) */
    float t[EW_BLOCK];
    for (int64_t i0 = begin; i0 < end; i0 += EW_BLOCK) {
        const int64_t n = end - i0 < EW_BLOCK ? end - i0 : EW_BLOCK;
        const float *x = j->a + i0;
        for (int64_t k = 0; k < n; k++) t[k] = s * (x[k] + 0.044715f * x[k] * x[k] * x[k]);
        cpu_isa->vexp(t, n);
        for (int64_t k = 0; k < n; k++) j->out[i0 + k] = x[k] / (1.0f + t[k]);
    }
}

static void gelu_erf_range(void *arg, int64_t begin, int64_t end) {
    const ew_job *j = arg;
    for (int64_t i = begin; i < end; i++) j->out[i] = 0.5f * j->a[i] * (1.0f + erff(j->a[i] * 0.7071067811865476f));
}

/* out = a sigmoid(a), times b when b is given (SwiGLU) */
static void silu_block(const ew_job *j, int64_t begin, int64_t end) {
    float t[EW_BLOCK];
    for (int64_t i0 = begin; i0 < end; i0 += EW_BLOCK) {
        const int64_t n = end - i0 < EW_BLOCK ? end - i0 : EW_BLOCK;
        const float *x = j->a + i0;
        for (int64_t k = 0; k < n; k++) t[k] = -x[k];
        cpu_isa->vexp(t, n);
        if (j->b)
            for (int64_t k = 0; k < n; k++) j->out[i0 + k] = x[k] / (1.0f + t[k]) * j->b[i0 + k];
        else
            for (int64_t k = 0; k < n; k++) j->out[i0 + k] = x[k] / (1.0f + t[k]);
    }
}

static void silu_range(void *arg, int64_t begin, int64_t end) { silu_block(arg, begin, end); }

static void swiglu_range(void *arg, int64_t begin, int64_t end) { silu_block(arg, begin, end); }

static void add_range(void *arg, int64_t begin, int64_t end) {
    const ew_job *j = arg;
    for (int64_t i = begin; i < end; i++) j->out[i] = j->a[i] + j->b[i];
}

static int elementwise(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, int n_ops,
                       void (*fn)(void *, int64_t, int64_t)) {
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, n_ops, &n);
    if (rc) return rc;
    ew_job j = {in[0]->data, n_ops == 2 ? in[1]->data : NULL, out->data};
    cpu_api->parallel_for(n, EW_GRAIN, fn, &j);
    return 0;
}

int cpu_gelu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return elementwise(in, n_in, out, 1, gelu_range);
}

int cpu_gelu_erf(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return elementwise(in, n_in, out, 1, gelu_erf_range);
}

int cpu_silu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return elementwise(in, n_in, out, 1, silu_range);
}

int cpu_swiglu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return elementwise(in, n_in, out, 2, swiglu_range);
}

int cpu_add(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return elementwise(in, n_in, out, 2, add_range);
}

/* ---- softmax, cross_entropy ---- */

typedef struct rows_job { const float *x; float *out; const int32_t *targets; int64_t cols; int32_t ignore; } rows_job;

static void softmax_rows(void *arg, int64_t begin, int64_t end) {
    const rows_job *j = arg;
    for (int64_t m = begin; m < end; m++) {
        const float *x = j->x + m * j->cols;
        float *o = j->out + m * j->cols;
        float maxval = cpu_row_max(x, j->cols), sum = 0.0f;
        for (int64_t i = 0; i < j->cols; i++) o[i] = x[i] - maxval;
        cpu_isa->vexp(o, j->cols);
        for (int64_t i = 0; i < j->cols; i++) sum += o[i];
        float inv = 1.0f / sum;
        for (int64_t i = 0; i < j->cols; i++) o[i] *= inv;
    }
}

int cpu_softmax(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x and out are (M,N); out may be x
    (void)p;
    cpu_rows d;
    int rc = cpu_check_softmax(in, n_in, out, &d);
    if (rc) return rc;
    rows_job j = {.x = in[0]->data, .out = out->data, .cols = d.cols};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), softmax_rows, &j);
    return 0;
}

static void cross_entropy_rows(void *arg, int64_t begin, int64_t end) {
    const rows_job *j = arg;
    for (int64_t t = begin; t < end; t++) {
        if (j->targets[t] == j->ignore) {
            j->out[t] = 0.0f;
            continue;
        }
        const float *x = j->x + t * j->cols;
        const float maxval = cpu_row_max(x, j->cols), sum = cpu_exp_shift_sum(x, j->cols, maxval, NULL);
        j->out[t] = logf(sum) - (x[j->targets[t]] - maxval);
    }
}

int cpu_cross_entropy(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // logits is (T,V), targets is (T), out is (T)
    cpu_rows d;
    int rc = cpu_check_cross_entropy(in, n_in, out, p, &d);
    if (rc) return rc;
    rows_job j = {in[0]->data, out->data, in[1]->data, d.cols,
                  ((const llmopt_op_cross_entropy *)p)->ignore_index};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), cross_entropy_rows, &j);
    return 0;
}
