/* matmul and embedding with block-quantized weights W [N,K] (Q8_0, Q4_0, Q4_1, GQ). Few rows of
 * x (decode, M <= QMM_INT_MAX_M): x is quantized to int8 per 32 and each row of W, unpacked once
 * into codes, meets every row of x in integer dot products (cpu_qisa: AVX2 maddubs or AVX-512
 * VNNI dpbusd). More rows (prefill): the same integer sums as a GEMM where cpu_q_gemm_takes
 * the dtype (quant_gemm.h: AVX-512 VNNI every int-path format, AVX2 codes <= 15); otherwise
 * tiles of W are dequantized to f32 and multiplied with OpenBLAS sgemm, as matmul.c does for
 * f16. Rows of W are split over the host's threads. */
#include "cpu.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Up to this many rows of x take the int8 path; above, dequantized tiles + sgemm. */
#ifndef QMM_INT_MAX_M
#define QMM_INT_MAX_M 4
#endif
/* Rows of W dequantized per sgemm call. */
#define QMM_TILE_N 256

typedef struct qmm_job {
    const float *x, *bias;
    const uint8_t *w;
    int wt;
    size_t row_bytes;
    float *out;
    cpu_mm_dims d;
    /* the int8 path: x quantized per 32 */
    const int8_t *xq;
    const float *dx, *dxs; /* per 32 of x: scale, scale times the sum of the codes */
    atomic_int failed;
} qmm_job;

static void store(const qmm_job *j, int64_t m, int64_t n, float v) {
    float *o = j->out + m * j->d.N + n;
    v += j->bias ? j->bias[n] : 0.0f;
    *o = j->d.accumulate ? *o + v : v;
}

/* The int8 path for rows [n0, n1) of W: the fused SIMD row dots CPU_Q_ROWS rows a call where the
 * table has them, else per sub-block b, s*dx*sum(u*xq) + m*dx*sum(xq) on unpacked codes. */
static void qmm_int_rows(void *arg, int64_t n0, int64_t n1) {
    qmm_job *j = arg;
    const int64_t K = j->d.K, nb = K / CPU_QK;
    const int wide = cpu_q_code_max(j->wt) > 15;
    if (cpu_qisa->row_dot) {
        float v[CPU_Q_ROWS];
        int64_t n = n0;
        for (; n < n1; n += CPU_Q_ROWS) {
            const int rows = n1 - n < CPU_Q_ROWS ? (int)(n1 - n) : CPU_Q_ROWS;
            const uint8_t *w = j->w + (size_t)n * j->row_bytes;
            int64_t r = 0;
            for (; r < j->d.M; r++) {
                if (cpu_qisa->row_dot(j->wt, w, j->row_bytes, rows, j->xq + r * K, j->dx + r * nb, j->dxs + r * nb,
                                      K, v))
                    break;
                for (int i = 0; i < rows; i++) store(j, r, n + i, v[i]);
            }
            if (r < j->d.M) break; /* a format without a fused dot: unpack below */
        }
        if (n >= n1) return;
        n0 = n;
    }
    uint8_t *u = malloc((size_t)K + (size_t)nb * 3 * sizeof(float));
    if (!u) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *s = (float *)(void *)(u + K), *m = s + nb, *c = m + nb; /* K % 32 == 0: aligned */
    for (int64_t n = n0; n < n1; n++) {
        cpu_q_unpack_row(j->wt, j->w + (size_t)n * j->row_bytes, K, u, s, m);
        for (int64_t r = 0; r < j->d.M; r++) {
            const float *dx = j->dx + r * nb, *dxs = j->dxs + r * nb;
            float off = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                c[b] = s[b] * dx[b];
                off += m[b] * dxs[b];
            }
            store(j, r, n, cpu_qisa->dot_u8s8(u, j->xq + r * K, c, nb, wide) + off);
        }
    }
    free(u);
}

/* Rows of W whose group is not a multiple of 32 (GQ): dequantized row + f32 dot. */
static void qmm_float_rows(void *arg, int64_t n0, int64_t n1) {
    qmm_job *j = arg;
    const int64_t K = j->d.K;
    float *row = malloc((size_t)K * sizeof(float));
    void *scratch = malloc(cpu_q_scratch_bytes(K));
    if (!row || !scratch) {
        atomic_store(&j->failed, 1);
    } else {
        for (int64_t n = n0; n < n1; n++) {
            cpu_q_row_to_f32(cpu_qisa, j->wt, j->w + (size_t)n * j->row_bytes, K, row, scratch);
            for (int64_t r = 0; r < j->d.M; r++) store(j, r, n, cpu_isa->dot(j->x + r * K, row, K));
        }
    }
    free(row);
    free(scratch);
}

/* Prefill: QMM_TILE_N rows of W at a time to f32, then out[:, tile] (+)= x · tile^T. */
static void qmm_sgemm_rows(void *arg, int64_t n0, int64_t n1) {
    qmm_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    float *tile = malloc((size_t)QMM_TILE_N * (size_t)d->K * sizeof(float));
    void *scratch = malloc(cpu_q_scratch_bytes(d->K));
    if (!tile || !scratch) {
        atomic_store(&j->failed, 1);
        free(tile);
        free(scratch);
        return;
    }
    for (int64_t c0 = n0; c0 < n1; c0 += QMM_TILE_N) {
        int64_t c1 = c0 + QMM_TILE_N < n1 ? c0 + QMM_TILE_N : n1;
        for (int64_t n = c0; n < c1; n++)
            cpu_q_row_to_f32(cpu_qisa, j->wt, j->w + (size_t)n * j->row_bytes, d->K, tile + (n - c0) * d->K, scratch);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->M, (int)(c1 - c0), (int)d->K, 1.0f, j->x,
                    (int)d->K, tile, (int)d->K, d->accumulate ? 1.0f : 0.0f, j->out + c0, (int)d->N);
        if (j->bias)
            for (int64_t m = 0; m < d->M; m++)
                for (int64_t n = c0; n < c1; n++) j->out[m * d->N + n] += j->bias[n];
    }
    free(tile);
    free(scratch);
}

int cpu_qmatmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) in blocks of its dtype, bias is (N), out is (M,N)
    cpu_mm_dims d;
    int rc = cpu_check_qmatmul(in, n_in, out, p, &d);
    if (rc) return rc;
    if (d.M > INT32_MAX) return LLMOPT_EUNSUPPORTED; /* BLAS ints */
    qmm_job j = {.x = in[0]->data, .bias = d.has_bias ? in[2]->data : NULL, .w = in[1]->data,
                 .wt = in[1]->dtype, .row_bytes = cpu_q_row_bytes(in[1]->dtype, d.K), .out = out->data, .d = d};
    atomic_init(&j.failed, 0);
    const int64_t grain = (32768 / (d.K * d.M) + 4) & ~(int64_t)3; /* >= 32K multiply-adds, rows by 4 */
    if (d.M <= QMM_INT_MAX_M && cpu_q_int_path(j.wt)) {
        const int64_t nb = d.K / CPU_QK;
        int8_t *xq = malloc((size_t)(d.M * d.K) + (size_t)(d.M * nb) * (2 * sizeof(float) + sizeof(int32_t)));
        if (!xq) return LLMOPT_ENOMEM;
        float *dx = (float *)(void *)(xq + d.M * d.K); /* M*K is a multiple of 32: aligned */
        float *dxs = dx + d.M * nb;
        int32_t *xsum = (int32_t *)(dxs + d.M * nb);
        for (int64_t r = 0; r < d.M; r++) {
            cpu_qisa->quantize_x(j.x + r * d.K, d.K, xq + r * d.K, dx + r * nb, xsum + r * nb);
            if (cpu_qisa->permute_x && cpu_qisa->row_dot) cpu_qisa->permute_x(j.wt, xq + r * d.K, d.K);
        }
        for (int64_t b = 0; b < d.M * nb; b++) dxs[b] = dx[b] * (float)xsum[b];
        j.xq = xq;
        j.dx = dx;
        j.dxs = dxs;
        cpu_api->parallel_for(d.N, grain, qmm_int_rows, &j);
        free(xq);
    } else if (d.M <= QMM_INT_MAX_M) {
        cpu_api->parallel_for(d.N, grain, qmm_float_rows, &j);
    } else if (cpu_q_gemm_takes(j.wt)) {
        const cpu_qgemm g = {.x = j.x, .bias = j.bias, .w = j.w, .wt = j.wt, .row_bytes = j.row_bytes,
                             .out = j.out, .M = d.M, .N = d.N, .K = d.K, .accumulate = d.accumulate};
        return cpu_qisa->gemm(&g);
    } else {
        cpu_api->parallel_for(d.N, QMM_TILE_N / 2, qmm_sgemm_rows, &j);
    }
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

/* ---- embedding: out[t, :] = dequantized table row ids[t] ---- */

typedef struct qemb_job {
    const uint8_t *table;
    const int32_t *ids;
    int dtype;
    size_t row_bytes;
    int64_t C;
    float *out;
    const cpu_qsimd *q;
    atomic_int failed;
} qemb_job;

static void qemb_rows(void *arg, int64_t t0, int64_t t1) {
    qemb_job *j = arg;
    void *scratch = malloc(cpu_q_scratch_bytes(j->C));
    if (!scratch) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t t = t0; t < t1; t++)
        cpu_q_row_to_f32(j->q, j->dtype, j->table + (size_t)j->ids[t] * j->row_bytes, j->C, j->out + t * j->C, scratch);
    free(scratch);
}

static int qembedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const cpu_qsimd *q, int threads) {
    cpu_rows d;
    int rc = cpu_check_qembedding(in, n_in, out, &d);
    if (rc) return rc;
    qemb_job j = {.table = in[0]->data, .ids = in[1]->data, .dtype = in[0]->dtype,
                  .row_bytes = cpu_q_row_bytes(in[0]->dtype, d.cols), .C = d.cols, .out = out->data, .q = q};
    atomic_init(&j.failed, 0);
    if (threads) cpu_api->parallel_for(d.rows, 16384 / d.cols + 1, qemb_rows, &j);
    else qemb_rows(&j, 0, d.rows);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

int cpu_qembedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return qembedding(in, n_in, out, cpu_qisa, 1);
}

/* ---- reference: plain loops, one thread; the dequantized row dotted in f32 ---- */

int cpu_ref_qembedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return qembedding(in, n_in, out, &cpu_qsimd_generic, 0);
}

int cpu_ref_qmatmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    cpu_mm_dims d;
    int rc = cpu_check_qmatmul(in, n_in, out, p, &d);
    if (rc) return rc;
    const float *x = in[0]->data, *bias = d.has_bias ? in[2]->data : NULL;
    const uint8_t *w = in[1]->data;
    const size_t row_bytes = cpu_q_row_bytes(in[1]->dtype, d.K);
    float *row = malloc((size_t)d.K * sizeof(float)), *o = out->data;
    void *scratch = malloc(cpu_q_scratch_bytes(d.K));
    if (!row || !scratch) {
        free(row);
        free(scratch);
        return LLMOPT_ENOMEM;
    }
    for (int64_t n = 0; n < d.N; n++) {
        cpu_q_row_to_f32(&cpu_qsimd_generic, in[1]->dtype, w + (size_t)n * row_bytes, d.K, row, scratch);
        for (int64_t m = 0; m < d.M; m++) {
            float acc = bias ? bias[n] : 0.0f;
            for (int64_t k = 0; k < d.K; k++) acc += x[m * d.K + k] * row[k];
            o[m * d.N + n] = d.accumulate ? o[m * d.N + n] + acc : acc;
        }
    }
    free(row);
    free(scratch);
    return 0;
}
