/* Fast backward kernels and AdamW: the reference math (backward_ref.c) split over the host's
 * compute threads. matmul_backward runs OpenBLAS sgemm per block of the output it writes (dx by
 * column blocks, dW by blocks of N), so no two threads write one element. Reductions over rows
 * (dgamma, dbeta, db) use fixed chunks of rows, independent of the thread count: each chunk
 * writes its own partial sums and the partials are added in chunk order, so results do not
 * depend on which thread ran which chunk. attention_backward keeps each head's probabilities and
 * score gradients (T x T), then sums dk and dv per kv head in head order, all as sgemm. */
#include "backward.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* Rows per reduction chunk (fixed, so the summation order is the same for any thread count). */
#define RED_ROWS 32
#define EW_GRAIN 8192

static int64_t row_grain(int64_t cols) { return cols >= 16384 ? 1 : 16384 / cols; }

/* ---- matmul_backward ---- */

typedef struct mmb_job {
    const float *x, *dy;
    const void *w;
    int wt;
    float *dx, *dw, *db;
    cpu_mm_dims d;
    atomic_int failed;
} mmb_job;

/* W[r, c0:c0+n] as f32 into dst. */
static void w_to_f32(const mmb_job *j, int64_t r, int64_t row_len, int64_t c0, int64_t n, float *dst) {
    int64_t at = r * row_len + c0;
    if (j->wt == LLMOPT_DTYPE_F32) memcpy(dst, (const float *)j->w + at, (size_t)n * sizeof(float));
    else if (j->wt == LLMOPT_DTYPE_F16) cpu_isa->f16_to_f32(dst, (const uint16_t *)j->w + at, n);
    else cpu_isa->bf16_to_f32(dst, (const uint16_t *)j->w + at, n);
}

/* dx[:, k0:k1] (+)= dy[M,N] · (W as [N,K])[:, k0:k1]. */
static void dx_cols(void *arg, int64_t k0, int64_t k1) {
    mmb_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    int M = (int)d->M, N = (int)d->N, K = (int)d->K, kc = (int)(k1 - k0);
    float beta = d->accumulate ? 1.0f : 0.0f;
    if (j->wt == LLMOPT_DTYPE_F32) {
        const float *w = j->w;
        if (d->layout == LLMOPT_W_OUT_IN) /* W [N,K]: the block is W[:, k0:k1], leading dim K */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, kc, N, 1.0f, j->dy, N, w + k0, K, beta,
                        j->dx + k0, K);
        else /* W [K,N]: rows k0..k1 of W, transposed */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, kc, N, 1.0f, j->dy, N, w + k0 * d->N, N, beta,
                        j->dx + k0, K);
        return;
    }
    /* f16/bf16: tn columns of dx at a time, their slice of W converted to f32 (each sgemm call
     * packs all of dy again: wide tiles, as matmul.c's). IN_OUT: rows c0..c1 of W, [nc, N];
     * OUT_IN: columns c0..c1 of every row, [N, nc] as they lie (a transposed copy, written with a
     * stride of N floats, was 26% of a bf16 Llama LoRA step). */
    const int64_t tn = cpu_half_tile_cols(N, k1 - k0);
    float *tile = malloc((size_t)tn * (size_t)N * sizeof(float));
    if (!tile) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t c0 = k0; c0 < k1; c0 += tn) {
        int64_t c1 = c0 + tn < k1 ? c0 + tn : k1, nc = c1 - c0;
        if (d->layout == LLMOPT_W_IN_OUT) {
            for (int64_t k = c0; k < c1; k++) w_to_f32(j, k, d->N, 0, d->N, tile + (k - c0) * d->N);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, (int)nc, N, 1.0f, j->dy, N, tile, N, beta,
                        j->dx + c0, K);
        } else {
            for (int64_t n = 0; n < d->N; n++) w_to_f32(j, n, d->K, c0, nc, tile + n * nc);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, (int)nc, N, 1.0f, j->dy, N, tile, (int)nc, beta,
                        j->dx + c0, K);
        }
    }
    free(tile);
}

/* dW for outputs n0..n1: OUT_IN dW[n0:n1, :] += dy[:, n0:n1]ᵀ x; IN_OUT dW[:, n0:n1] += xᵀ dy[:, n0:n1]. */
static void dw_cols(void *arg, int64_t n0, int64_t n1) {
    mmb_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    int M = (int)d->M, N = (int)d->N, K = (int)d->K, nc = (int)(n1 - n0);
    if (d->layout == LLMOPT_W_OUT_IN)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, K, M, 1.0f, j->dy + n0, N, j->x, K, 1.0f,
                    j->dw + n0 * d->K, K);
    else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, nc, M, 1.0f, j->x, K, j->dy + n0, N, 1.0f,
                    j->dw + n0, N);
}

/* db[n] += sum over rows of dy[:, n], rows in order. */
static void db_cols(void *arg, int64_t n0, int64_t n1) {
    mmb_job *j = arg;
    for (int64_t m = 0; m < j->d.M; m++) {
        const float *g = j->dy + m * j->d.N;
        for (int64_t n = n0; n < n1; n++) j->db[n] += g[n];
    }
}

int cpu_matmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) for OUT_IN or (K,N) for IN_OUT, dy is (M,N); dx is (M,K), dW like W, db is (N)
    cpu_mm_dims d;
    int want_dx;
    int rc = cpu_check_matmul_backward(in, n_in, out, p, &d, &want_dx);
    if (rc) return rc;
    if (d.M > INT32_MAX || d.N > INT32_MAX || d.K > INT32_MAX) return LLMOPT_EUNSUPPORTED; /* BLAS ints */
    const llmopt_op_matmul_backward *mb = p;
    mmb_job j = {.x = in[0]->data, .dy = in[2]->data, .w = in[1]->data, .wt = in[1]->dtype, .dx = out->data,
                 .dw = mb->dw ? mb->dw->data : NULL, .db = mb->db ? mb->db->data : NULL, .d = d};
    atomic_init(&j.failed, 0);
    if (want_dx && d.precision == LLMOPT_MATMUL_MEDIUM && d.M >= 2 && cpu_use_bf16_gemm) {
        /* dx = dy · Wᵀ is the forward of dy through W read the other way: W [N,K] as [in, out]
         * is IN_OUT, and W [K,N] as [out, in] is OUT_IN */
        const cpu_bgemm g = {.x = j.dy, .w = j.w, .wt = j.wt, .accumulate = d.accumulate, .out = j.dx,
                             .layout = d.layout == LLMOPT_W_OUT_IN ? LLMOPT_W_IN_OUT : LLMOPT_W_OUT_IN,
                             .M = d.M, .N = d.K, .K = d.N};
        if ((rc = cpu_bf16_gemm(&g))) return rc;
        want_dx = 0;
    }
    if (want_dx) cpu_api->parallel_for(d.K, cpu_sgemm_grain(d.K), dx_cols, &j);
    if (j.dw) cpu_api->parallel_for(d.N, cpu_sgemm_grain(d.N), dw_cols, &j);
    if (j.db) cpu_api->parallel_for(d.N, 256, db_cols, &j);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

/* ---- layernorm_backward, rmsnorm_backward ---- */

typedef struct normb_job {
    const float *x, *gamma, *dy;
    float *dx, *part;   /* part: [n_chunks][2][C] partial dgamma, dbeta */
    int64_t rows, C;
    float eps;
} normb_job;

static void layernorm_b_chunks(void *arg, int64_t c0, int64_t c1) {
    const normb_job *j = arg;
    int64_t C = j->C;
    for (int64_t chunk = c0; chunk < c1; chunk++) {
        float *dg = j->part + chunk * 2 * C, *dbeta = dg + C;
        memset(dg, 0, (size_t)(2 * C) * sizeof(float));
        int64_t r1 = (chunk + 1) * RED_ROWS < j->rows ? (chunk + 1) * RED_ROWS : j->rows;
        for (int64_t m = chunk * RED_ROWS; m < r1; m++) {
            const float *x = j->x + m * C, *dy = j->dy + m * C;
            float *dx = j->dx + m * C;
            const float mean = cpu_sum(x, C) / (float)C;
            const float rstd = 1.0f / sqrtf(cpu_sq_dev_sum(x, C, mean) / (float)C + j->eps);
            /* the two means of the gradient in eight lanes each, as cpu_sum */
            float a[8] = {0}, b[8] = {0};
            int64_t c = 0;
            for (; c + 8 <= C; c += 8)
                for (int k = 0; k < 8; k++) {
                    float norm = (x[c + k] - mean) * rstd, dnorm = dy[c + k] * j->gamma[c + k];
                    a[k] += dnorm;
                    b[k] += dnorm * norm;
                }
            for (; c < C; c++) {
                float norm = (x[c] - mean) * rstd, dnorm = dy[c] * j->gamma[c];
                a[c % 8] += dnorm;
                b[c % 8] += dnorm * norm;
            }
            const float dnorm_mean = cpu_lanes_sum(a) / (float)C, dnorm_norm_mean = cpu_lanes_sum(b) / (float)C;
            for (int64_t c = 0; c < C; c++) {
                float norm = (x[c] - mean) * rstd;
                dg[c] += norm * dy[c];
                dbeta[c] += dy[c];
                dx[c] = (dy[c] * j->gamma[c] - dnorm_mean - norm * dnorm_norm_mean) * rstd;
            }
        }
    }
}

static void rmsnorm_b_chunks(void *arg, int64_t c0, int64_t c1) {
    const normb_job *j = arg;
    int64_t C = j->C;
    for (int64_t chunk = c0; chunk < c1; chunk++) {
        float *dg = j->part + chunk * 2 * C;
        memset(dg, 0, (size_t)C * sizeof(float));
        int64_t r1 = (chunk + 1) * RED_ROWS < j->rows ? (chunk + 1) * RED_ROWS : j->rows;
        for (int64_t m = chunk * RED_ROWS; m < r1; m++) {
            const float *x = j->x + m * C, *dy = j->dy + m * C;
            float *dx = j->dx + m * C;
            float rstd = 1.0f / sqrtf(cpu_isa->dot(x, x, C) / (float)C + j->eps);
            float dot = 0.0f;
            for (int64_t c = 0; c < C; c++) dot += dy[c] * j->gamma[c] * x[c];
            dot /= (float)C;
            float r3 = rstd * rstd * rstd;
            for (int64_t c = 0; c < C; c++) {
                dg[c] += dy[c] * x[c] * rstd;
                dx[c] = rstd * dy[c] * j->gamma[c] - x[c] * r3 * dot;
            }
        }
    }
}

static int norm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p, int ln) {
    cpu_rows d;
    int rc = cpu_check_norm_backward(in, n_in, out, p, ln, &d);
    if (rc) return rc;
    const llmopt_op_norm_backward *nb = p;
    int64_t n_chunks = (d.rows + RED_ROWS - 1) / RED_ROWS;
    normb_job j = {in[0]->data, in[1]->data, in[2]->data, out->data, NULL, d.rows, d.cols, nb->eps};
    if (!(j.part = malloc((size_t)(n_chunks * 2 * d.cols) * sizeof(float)))) return LLMOPT_ENOMEM;
    cpu_api->parallel_for(n_chunks, 1, ln ? layernorm_b_chunks : rmsnorm_b_chunks, &j);
    float *dgamma = nb->dgamma->data, *dbeta = ln ? nb->dbeta->data : NULL;
    for (int64_t chunk = 0; chunk < n_chunks; chunk++) {
        const float *pg = j.part + chunk * 2 * d.cols;
        for (int64_t c = 0; c < d.cols; c++) dgamma[c] += pg[c];
        if (dbeta)
            for (int64_t c = 0; c < d.cols; c++) dbeta[c] += pg[d.cols + c];
    }
    free(j.part);
    return 0;
}

int cpu_layernorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x, dy, dx are (M,C); gamma, dgamma, dbeta are (C)
    return norm_backward(in, n_in, out, p, 1);
}

int cpu_rmsnorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x, dy, dx are (M,C); gamma, dgamma are (C)
    return norm_backward(in, n_in, out, p, 0);
}

/* ---- rope_backward ---- */

int cpu_rope_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // dy and dx are (T,H,D); dx may be dy. The gradient of a rotation is the inverse rotation.
    return cpu_rope_rotate(in, n_in, out, p, -1.0f);
}

/* ---- attention_backward ---- */

typedef struct attnb_job {
    const float *q, *k, *v, *dy;
    float *dq, *dk, *dv;
    float *P, *dS;      /* [Hq][T][T]: probabilities, and scale * their score gradients */
    cpu_attn_dims d;
    int causal;
    float scale;
} attnb_job;

/* Attention backward as matrix products, per head, in blocks of ATT_BQB query rows that meet
 * only the keys their last row sees when causal (the full T x T products did a quarter more
 * work at T = 128, up to half at long T; the per-(query, key) dot and axpy calls of the first
 * version were a tenth of a kjv-tiny training step). Pass 1, one task per query head h, for a
 * block of rows r and its nk keys: S = scale Q_r K^T, the causal mask and softmax give P_r;
 * dP = dY_r V^T; dS_r = scale P (dP - rowsum(P dP)); dQ_r = dS_r K. Masked entries of a block's
 * P and dS are 0, so its products are exact; entries right of a block's nk are never read. */
#define ATT_BQB 32

static int64_t bw_keys(const attnb_job *j, int64_t t0, int64_t m) { return j->causal ? t0 + m : j->d.T; }

static void attn_b_heads(void *arg, int64_t begin, int64_t end) {
    const attnb_job *j = arg;
    const cpu_attn_dims *d = &j->d;
    const int64_t T = d->T, D = d->D, group = d->Hq / d->Hkv;
    const int ldq = (int)(d->Hq * D), ldk = (int)(d->Hkv * D);
    for (int64_t h = begin; h < end; h++) {
        const int64_t g = h / group;
        const float *k = j->k + g * D, *v = j->v + g * D;
        for (int64_t t0 = 0; t0 < T; t0 += ATT_BQB) {
            const int64_t m = T - t0 < ATT_BQB ? T - t0 : ATT_BQB, nk = bw_keys(j, t0, m);
            const float *q = j->q + t0 * ldq + h * D, *dy = j->dy + t0 * ldq + h * D;
            float *P = j->P + (h * T + t0) * T, *dS = j->dS + (h * T + t0) * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, (int)D, j->scale, q, ldq, k, ldk, 0.0f,
                        P, (int)T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, (int)D, 1.0f, dy, ldq, v, ldk, 0.0f,
                        dS, (int)T);
            for (int64_t r = 0; r < m; r++) {
                float *pr = P + r * T, *dr = dS + r * T;
                const int64_t n_keys = j->causal ? t0 + r + 1 : T;
                const float maxval = cpu_row_max(pr, n_keys);
                float sum = 0.0f, dot = 0.0f;
                for (int64_t s = 0; s < n_keys; s++) pr[s] -= maxval;
                cpu_isa->vexp(pr, n_keys);
                for (int64_t s = 0; s < n_keys; s++) sum += pr[s];
                const float inv = 1.0f / sum;
                for (int64_t s = 0; s < n_keys; s++) {
                    pr[s] *= inv;
                    dot += pr[s] * dr[s];
                }
                for (int64_t s = 0; s < n_keys; s++) dr[s] = pr[s] * (dr[s] - dot) * j->scale;
                for (int64_t s = n_keys; s < nk; s++) pr[s] = 0.0f, dr[s] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)nk, 1.0f, dS, (int)T, k, ldk,
                        0.0f, j->dq + t0 * ldq + h * D, ldq);
        }
    }
}

/* Pass 2, one task per kv head g: dK_g = sum over its query heads h and their row blocks r of
 * dS_r^T Q_r, and dV_g of P_r^T dY_r, in a fixed order: heads ascending, blocks descending (the
 * last block sees every key, so its product initialises all of dK_g and dV_g). */
static void attn_b_kv(void *arg, int64_t begin, int64_t end) {
    const attnb_job *j = arg;
    const cpu_attn_dims *d = &j->d;
    const int64_t T = d->T, D = d->D, group = d->Hq / d->Hkv, last = (T - 1) / ATT_BQB * ATT_BQB;
    const int ldq = (int)(d->Hq * D), ldk = (int)(d->Hkv * D);
    for (int64_t g = begin; g < end; g++)
        for (int64_t h = g * group; h < (g + 1) * group; h++)
            for (int64_t t0 = last; t0 >= 0; t0 -= ATT_BQB) {
                const int64_t m = T - t0 < ATT_BQB ? T - t0 : ATT_BQB, nk = bw_keys(j, t0, m);
                const float beta = h == g * group && t0 == last ? 0.0f : 1.0f;
                const float *q = j->q + t0 * ldq + h * D, *dy = j->dy + t0 * ldq + h * D;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)D, (int)m, 1.0f,
                            j->dS + (h * T + t0) * T, (int)T, q, ldq, beta, j->dk + g * D, ldk);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)D, (int)m, 1.0f,
                            j->P + (h * T + t0) * T, (int)T, dy, ldq, beta, j->dv + g * D, ldk);
            }
}

int cpu_attention_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // q, dy, dq are (T,Hq,D); k, v, dk, dv are (T,Hkv,D)
    cpu_attn_dims d;
    int rc = cpu_check_attention_backward(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_attention_backward *a = p;
    size_t n = (size_t)(d.Hq * d.T * d.T);
    attnb_job j = {in[0]->data, in[1]->data, in[2]->data, in[3]->data, out->data, a->dk->data, a->dv->data,
                   malloc(n * sizeof(float)), malloc(n * sizeof(float)), d, a->causal, a->scale};
    if (!j.P || !j.dS) {
        free(j.P), free(j.dS);
        return LLMOPT_ENOMEM;
    }
    cpu_api->parallel_for(d.Hq, 1, attn_b_heads, &j);
    cpu_api->parallel_for(d.Hkv, 1, attn_b_kv, &j);
    free(j.P), free(j.dS);
    return 0;
}

/* ---- elementwise ---- */

typedef struct ewb_job { const float *a, *b, *dy; float *out, *out2; float (*grad)(float); } ewb_job;

static void act_b_range(void *arg, int64_t begin, int64_t end) {
    const ewb_job *j = arg;
    for (int64_t i = begin; i < end; i++) j->out[i] = j->b[i] * j->grad(j->a[i]);
}

/* out = dy * f'(x) over range (act_b_range with a scalar grad, or a block-at-a-time one) */
static int act_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                        void (*range)(void *, int64_t, int64_t), float (*grad)(float)) {
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 2, &n);
    if (rc) return rc;
    ewb_job j = {.a = in[0]->data, .b = in[1]->data, .out = out->data, .grad = grad};
    cpu_api->parallel_for(n, EW_GRAIN, range, &j);
    return 0;
}

/* GELU (tanh) and SiLU gradients a block at a time through the SIMD exp: libm's tanhf (expm1f)
 * one element at a time was a fifth of a kjv-tiny training step (perf). With
 * g = 1 / (1 + exp(-2u)), tanh u = 2g - 1, so 1 + tanh u = 2g and 1 - tanh^2 u = 4g(1 - g):
 * dy/dx = g + 2x g (1 - g) s (1 + 3 c x^2), u = s (x + c x^3). */
#define EWB_BLOCK 256

static void gelu_b_range(void *arg, int64_t begin, int64_t end) {
    const ewb_job *j = arg;
    const float s = 0.7978845608028654f, c = 0.044715f; /* sqrt(2/pi) */
    float t[EWB_BLOCK];
    for (int64_t i0 = begin; i0 < end; i0 += EWB_BLOCK) {
        const int64_t n = end - i0 < EWB_BLOCK ? end - i0 : EWB_BLOCK;
        const float *x = j->a + i0;
        for (int64_t k = 0; k < n; k++) t[k] = -2.0f * s * (x[k] + c * x[k] * x[k] * x[k]);
        cpu_isa->vexp(t, n);
        for (int64_t k = 0; k < n; k++) {
            const float g = 1.0f / (1.0f + t[k]), xk = x[k];
            j->out[i0 + k] = j->b[i0 + k] * (g + 2.0f * xk * g * (1.0f - g) * s * (1.0f + 3.0f * c * xk * xk));
        }
    }
}

/* sig[k] = 1 / (1 + exp(-x[k])) for n <= EWB_BLOCK values */
static void sigmoid_block(const float *x, int64_t n, float *sig) {
    for (int64_t k = 0; k < n; k++) sig[k] = -x[k];
    cpu_isa->vexp(sig, n);
    for (int64_t k = 0; k < n; k++) sig[k] = 1.0f / (1.0f + sig[k]);
}

static void silu_b_range(void *arg, int64_t begin, int64_t end) {
    const ewb_job *j = arg;
    float sg[EWB_BLOCK];
    for (int64_t i0 = begin; i0 < end; i0 += EWB_BLOCK) {
        const int64_t n = end - i0 < EWB_BLOCK ? end - i0 : EWB_BLOCK;
        sigmoid_block(j->a + i0, n, sg);
        for (int64_t k = 0; k < n; k++) {
            const float x = j->a[i0 + k];
            j->out[i0 + k] = j->b[i0 + k] * sg[k] * (1.0f + x * (1.0f - sg[k]));
        }
    }
}

int cpu_gelu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return act_backward(in, n_in, out, gelu_b_range, NULL);
}

int cpu_gelu_erf_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return act_backward(in, n_in, out, act_b_range, cpu_gelu_erf_grad);
}

int cpu_silu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return act_backward(in, n_in, out, silu_b_range, NULL);
}

static void swiglu_b_range(void *arg, int64_t begin, int64_t end) {
    const ewb_job *j = arg;
    float sg[EWB_BLOCK];
    for (int64_t i0 = begin; i0 < end; i0 += EWB_BLOCK) {
        const int64_t n = end - i0 < EWB_BLOCK ? end - i0 : EWB_BLOCK;
        sigmoid_block(j->a + i0, n, sg);
        for (int64_t k = 0; k < n; k++) {
            const int64_t i = i0 + k;
            const float g = j->a[i], u = j->b[i], gy = j->dy[i];
            j->out[i] = gy * u * sg[k] * (1.0f + g * (1.0f - sg[k]));
            j->out2[i] = gy * g * sg[k];
        }
    }
}

int cpu_swiglu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // gate, up, dy, dgate, dup are (M,F)
    int64_t n;
    int rc = cpu_check_swiglu_backward(in, n_in, out, p, &n);
    if (rc) return rc;
    ewb_job j = {in[0]->data, in[1]->data, in[2]->data, out->data, ((const llmopt_op_swiglu_backward *)p)->dup->data,
                 NULL};
    cpu_api->parallel_for(n, EW_GRAIN, swiglu_b_range, &j);
    return 0;
}

/* ---- embedding_backward: threads own column ranges, each adds the rows in id order ---- */

typedef struct embb_job { const int32_t *ids; const float *dy; float *dt; int64_t T, C; } embb_job;

static void emb_b_cols(void *arg, int64_t c0, int64_t c1) {
    const embb_job *j = arg;
    for (int64_t t = 0; t < j->T; t++) {
        float *row = j->dt + (int64_t)j->ids[t] * j->C;
        const float *g = j->dy + t * j->C;
        for (int64_t c = c0; c < c1; c++) row[c] += g[c];
    }
}

int cpu_embedding_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // ids is (T), dy is (T,C), dtable is (V,C), accumulated
    (void)p;
    cpu_rows d;
    int64_t V;
    int rc = cpu_check_embedding_backward(in, n_in, out, &d, &V);
    if (rc) return rc;
    embb_job j = {in[0]->data, in[1]->data, out->data, d.rows, d.cols};
    cpu_api->parallel_for(d.cols, 64, emb_b_cols, &j);
    return 0;
}

/* ---- cross_entropy_backward ---- */

typedef struct ceb_job {
    const float *logits;
    const int32_t *targets;
    float *out, *losses; /* losses: cross_entropy_fused's, NULL for the backward alone */
    int64_t V;
    int32_t ignore;
    float scale;
} ceb_job;

static void ce_b_rows(void *arg, int64_t begin, int64_t end) {
    const ceb_job *j = arg;
    int64_t V = j->V;
    for (int64_t t = begin; t < end; t++) {
        const float *x = j->logits + t * V;
        float *o = j->out + t * V;
        if (j->targets[t] == j->ignore) {
            memset(o, 0, (size_t)V * sizeof(float));
            if (j->losses) j->losses[t] = 0.0f;
            continue;
        }
        const float maxval = cpu_row_max(x, V), xt = x[j->targets[t]]; /* o may be x: read it first */
        const float sum = cpu_exp_shift_sum(x, V, maxval, o), k = j->scale / sum;
        if (j->losses) j->losses[t] = logf(sum) - (xt - maxval); /* as cpu_cross_entropy's */
        for (int64_t i = 0; i < V; i++) o[i] *= k;
        o[j->targets[t]] -= j->scale;
    }
}

int cpu_cross_entropy_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // logits, dlogits are (T,V); targets is (T)
    cpu_rows d;
    int rc = cpu_check_cross_entropy_backward(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_cross_entropy_backward *ce = p;
    ceb_job j = {in[0]->data, in[1]->data, out->data, NULL, d.cols, ce->ignore_index, ce->scale};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), ce_b_rows, &j);
    return 0;
}

int cpu_cross_entropy_fused(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // logits, dlogits are (T,V), may be one tensor; targets, losses are (T)
    cpu_rows d;
    int rc = cpu_check_cross_entropy_fused(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_cross_entropy_fused *ce = p;
    ceb_job j = {in[0]->data, in[1]->data, out->data, ce->losses->data, d.cols, ce->ignore_index, ce->scale};
    cpu_api->parallel_for(d.rows, row_grain(d.cols), ce_b_rows, &j);
    return 0;
}

/* ---- adamw ---- */

typedef struct adamw_job {
    const float *grad;
    float *param, *m, *v;
    cpu_adamw_k k;
} adamw_job;

static void adamw_range(void *arg, int64_t begin, int64_t end) {
    const adamw_job *j = arg;
    cpu_isa->adamw(&j->k, j->grad + begin, j->param + begin, j->m + begin, j->v + begin, end - begin);
}

int cpu_adamw(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // grad, param, m, v are (n); the update of cpu_ref_adamw
    int64_t n;
    int rc = cpu_check_adamw(in, n_in, out, p, &n);
    if (rc) return rc;
    const llmopt_op_adamw *a = p;
    adamw_job j = {in[0]->data, out->data, a->m->data, a->v->data,
                   {a->beta1, a->beta2, a->eps, 1.0f - a->lr * a->weight_decay,
                    a->lr / (float)(1.0 - pow((double)a->beta1, a->step)),
                    (float)sqrt(1.0 - pow((double)a->beta2, a->step)), a->grad_scale}};
    cpu_api->parallel_for(n, EW_GRAIN, adamw_range, &j);
    return 0;
}

int cpu_adamw_8bit(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    cpu_adamw8_job j;
    int rc = cpu_adamw8_job_init(in, n_in, out, p, 1, &j);
    j.adamw = cpu_isa->adamw, j.codes = cpu_isa->a8_codes, j.block = cpu_isa->a8_block;
    if (!rc) cpu_api->parallel_for(j.blocks, 64, cpu_adamw8_blocks, &j);
    return rc;
}

/* ---- registration ---- */

typedef struct bw_entry { const char *op; int dtype; llmopt_kernel_fn fast, ref; const char *how; } bw_entry;

static const bw_entry bw_ops[] = {
    {LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_F32, cpu_matmul_backward, cpu_ref_matmul_backward,
     "OpenBLAS sgemm: dx by column blocks, dW by output blocks on host threads"},
    {LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_F16, cpu_matmul_backward, cpu_ref_matmul_backward,
     "dx only: f16->f32 tiles + OpenBLAS sgemm"},
    {LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_BF16, cpu_matmul_backward, cpu_ref_matmul_backward,
     "dx only: bf16->f32 tiles + OpenBLAS sgemm"},
    {LLMOPT_OP_LAYERNORM_BACKWARD, LLMOPT_DTYPE_F32, cpu_layernorm_backward, cpu_ref_layernorm_backward,
     "row chunks on host threads, partial sums added in chunk order"},
    {LLMOPT_OP_RMSNORM_BACKWARD, LLMOPT_DTYPE_F32, cpu_rmsnorm_backward, cpu_ref_rmsnorm_backward,
     "row chunks on host threads, partial sums added in chunk order"},
    {LLMOPT_OP_ROPE_BACKWARD, LLMOPT_DTYPE_F32, cpu_rope_backward, cpu_ref_rope_backward, "rows on host threads"},
    {LLMOPT_OP_ATTENTION_BACKWARD, LLMOPT_DTYPE_F32, cpu_attention_backward, cpu_ref_attention_backward,
     "(row, head) then (key, kv head) tasks on host threads"},
    {LLMOPT_OP_GELU_BACKWARD, LLMOPT_DTYPE_F32, cpu_gelu_backward, cpu_ref_gelu_backward, "ranges on host threads"},
    {LLMOPT_OP_GELU_ERF_BACKWARD, LLMOPT_DTYPE_F32, cpu_gelu_erf_backward, cpu_ref_gelu_erf_backward,
     "ranges on host threads"},
    {LLMOPT_OP_SILU_BACKWARD, LLMOPT_DTYPE_F32, cpu_silu_backward, cpu_ref_silu_backward, "ranges on host threads"},
    {LLMOPT_OP_SWIGLU_BACKWARD, LLMOPT_DTYPE_F32, cpu_swiglu_backward, cpu_ref_swiglu_backward,
     "ranges on host threads"},
    {LLMOPT_OP_EMBEDDING_BACKWARD, LLMOPT_DTYPE_F32, cpu_embedding_backward, cpu_ref_embedding_backward,
     "column ranges on host threads"},
    {LLMOPT_OP_CROSS_ENTROPY_BACKWARD, LLMOPT_DTYPE_F32, cpu_cross_entropy_backward, cpu_ref_cross_entropy_backward,
     "rows on host threads"},
    {LLMOPT_OP_CROSS_ENTROPY_FUSED, LLMOPT_DTYPE_F32, cpu_cross_entropy_fused, cpu_ref_cross_entropy_fused,
     "rows on host threads, in place"},
    {LLMOPT_OP_ADAMW, LLMOPT_DTYPE_F32, cpu_adamw, cpu_ref_adamw, "ranges on host threads"},
    {LLMOPT_OP_ADAMW_8BIT, LLMOPT_DTYPE_F32, cpu_adamw_8bit, cpu_ref_adamw_8bit,
     "256-value blocks on host threads, a table on the float bits for each value's byte"},
};

#define N_BW (sizeof bw_ops / sizeof bw_ops[0])
static char g_bw_summary[N_BW][160];

int cpu_register_backward(llmopt_registrar *reg, int use_ref) {
    for (size_t i = 0; i < N_BW; i++) {
        snprintf(g_bw_summary[i], sizeof g_bw_summary[i], "%s%s", use_ref ? "reference loops, one thread" : bw_ops[i].how,
                 !use_ref && cpu_use_bf16_gemm && strcmp(bw_ops[i].op, LLMOPT_OP_MATMUL_BACKWARD) == 0
                     ? "; matmul_precision medium, M>=2: dx by the AVX-512 BF16 GEMM" : "");
        llmopt_kernel_desc k = {.struct_size = sizeof k, .device = LLMOPT_DEVICE_CPU, .op = bw_ops[i].op,
                                .dtype = bw_ops[i].dtype, .fn = use_ref ? bw_ops[i].ref : bw_ops[i].fast,
                                .summary = g_bw_summary[i]};
        int rc = reg->add_kernel(reg, &k);
        if (rc) {
            reg->set_error(reg, "registering %s kernel failed (%d)", bw_ops[i].op, rc);
            return rc;
        }
    }
    return 0;
}
