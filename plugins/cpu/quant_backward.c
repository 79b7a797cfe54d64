/* matmul_backward through a frozen block-quantized weight (NF4, ggml's types, GQ): the input
 * gradient dx = dy · W, for LoRA over a quantized base (QLoRA, Dettmers et al. 2023, section 3:
 * gradients flow through the dequantized frozen weight into the adapters; W itself gets none).
 * Fast path: dx is split into column blocks (whole quantization blocks of W) over the host's
 * threads; each dequantizes its columns of W a tile of rows at a time and multiplies with
 * OpenBLAS sgemm, so every element of dx has one writer and a fixed summation order. NF4 at
 * matmul_precision medium (AVX-512 BF16) goes to bf16_gemm.c instead. */
#include "nf4.h"
#include "backward.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define QBW_COLS 256   /* columns of dx per task (rounded up to whole blocks) */
#define QBW_TILE_N 128 /* rows of W dequantized per sgemm */

#define F32_BYTES(t) ((size_t)cpu_qt_numel(t) * 4u)

static int f32_ok(const llmopt_tensor *t) { return cpu_qt_plain_ok(t, LLMOPT_DTYPE_F32); }

void cpu_qrow_range_to_f32(int dtype, const uint8_t *row, int64_t k0, int64_t n, float *dst, void *scratch) {
    const llmopt_dtype_traits *tr = cpu_api->dtype_traits(dtype);
    const uint8_t *p = row + (size_t)(k0 / tr->block_size) * tr->type_size;
    if (dtype == LLMOPT_DTYPE_NF4) cpu_nf4_row_to_f32(p, n, dst);
    else if (cpu_q_supported(dtype)) cpu_q_row_to_f32(cpu_qisa, dtype, p, n, dst, scratch);
    else cpu_api->dequantize_row(dtype, p, dst, n);
}

/* in: x [M,K], W [N,K] quantized, dy [M,N]; out: dx [M,K] (data NULL: skip); db [N] optional. */
static int check(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, const void *params, cpu_mm_dims *d,
                 size_t *row_bytes, int *want_dx) {
    if (!in || n_in != 3 || !out || !params ||
        ((const llmopt_op_matmul_backward *)params)->struct_size < LLMOPT_OP_MATMUL_BACKWARD_V0_SIZE)
        return LLMOPT_EINVAL;
    const llmopt_op_matmul_backward *p = params;
    /* checked; computed by dequantized tiles and f32 sgemm, but for NF4 at medium */
    d->precision = p->struct_size >= sizeof *p ? p->precision : LLMOPT_MATMUL_HIGHEST;
    if (d->precision != LLMOPT_MATMUL_HIGHEST && d->precision != LLMOPT_MATMUL_MEDIUM) return LLMOPT_EINVAL;
    const llmopt_tensor *x = in[0], *w = in[1], *dy = in[2];
    size_t wbytes;
    if (!f32_ok(x) || !cpu_qweight_ok(w, row_bytes, &wbytes) || !f32_ok(dy)) return LLMOPT_EINVAL;
    if (p->w_layout != LLMOPT_W_OUT_IN && p->w_layout != LLMOPT_W_IN_OUT) return LLMOPT_EINVAL;
    if (p->w_layout == LLMOPT_W_IN_OUT) return LLMOPT_EUNSUPPORTED; /* quantized rows run along K */
    if (p->dw) return LLMOPT_EINVAL;                                 /* a quantized W is frozen */
    d->K = x->shape[x->ndim - 1];
    d->M = cpu_qt_numel(x) / d->K;
    d->N = w->shape[0];
    d->layout = p->w_layout;
    d->accumulate = p->accumulate_dx != 0;
    d->has_bias = p->db != NULL;
    if (w->shape[1] != d->K || dy->shape[dy->ndim - 1] != d->N || cpu_qt_numel(dy) != d->M * d->N || d->M > INT32_MAX)
        return LLMOPT_EINVAL;
    *want_dx = out->data != NULL;
    if (*want_dx && (!f32_ok(out) || out->shape[out->ndim - 1] != d->K || cpu_qt_numel(out) != d->M * d->K ||
                     cpu_qt_overlaps(out->data, F32_BYTES(out), x->data, F32_BYTES(x)) ||
                     cpu_qt_overlaps(out->data, F32_BYTES(out), w->data, wbytes) ||
                     cpu_qt_overlaps(out->data, F32_BYTES(out), dy->data, F32_BYTES(dy))))
        return LLMOPT_EINVAL;
    const llmopt_tensor *db = p->db;
    if (db && (!f32_ok(db) || cpu_qt_numel(db) != d->N ||
               cpu_qt_overlaps(db->data, F32_BYTES(db), dy->data, F32_BYTES(dy)) ||
               cpu_qt_overlaps(db->data, F32_BYTES(db), x->data, F32_BYTES(x)) ||
               (*want_dx && cpu_qt_overlaps(db->data, F32_BYTES(db), out->data, F32_BYTES(out)))))
        return LLMOPT_EINVAL;
    if (!*want_dx && !db) return LLMOPT_EINVAL; /* nothing to compute */
    return 0;
}

/* db[n] += sum_m dy[m,n], in m order (as the f32 reference). */
static void bias_grad(const float *dy, int64_t M, int64_t N, float *db) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) db[n] += dy[m * N + n];
}

typedef struct qbw_job {
    const float *dy;
    const uint8_t *w;
    int wt;
    size_t row_bytes;
    float *dx;
    cpu_mm_dims d;
    int64_t cols; /* columns per task, whole blocks */
    atomic_int failed;
} qbw_job;

/* Column blocks [c0, c1) of dx: dx[:, k0:k1] (+)= sum over row tiles of dy[:, tile] · W[tile, k0:k1]. */
static void qbw_cols(void *arg, int64_t c0, int64_t c1) {
    qbw_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    float *tile = malloc((size_t)QBW_TILE_N * (size_t)j->cols * sizeof(float));
    void *scratch = malloc(cpu_q_scratch_bytes(j->cols));
    if (!tile || !scratch) {
        atomic_store(&j->failed, 1);
        free(tile);
        free(scratch);
        return;
    }
    for (int64_t c = c0; c < c1; c++) {
        int64_t k0 = c * j->cols, kn = k0 + j->cols <= d->K ? j->cols : d->K - k0;
        for (int64_t n0 = 0; n0 < d->N; n0 += QBW_TILE_N) {
            int64_t nn = n0 + QBW_TILE_N <= d->N ? QBW_TILE_N : d->N - n0;
            for (int64_t n = 0; n < nn; n++)
                cpu_qrow_range_to_f32(j->wt, j->w + (size_t)(n0 + n) * j->row_bytes, k0, kn, tile + n * kn, scratch);
            float beta = n0 == 0 && !d->accumulate ? 0.0f : 1.0f;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d->M, (int)kn, (int)nn, 1.0f, j->dy + n0,
                        (int)d->N, tile, (int)kn, beta, j->dx + k0, (int)d->K);
        }
    }
    free(tile);
    free(scratch);
}

int cpu_qmatmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) quantized and frozen, dy is (M,N); dx is (M,K), db is (N)
    cpu_mm_dims d;
    size_t row_bytes;
    int want_dx;
    int rc = check(in, n_in, out, p, &d, &row_bytes, &want_dx);
    if (rc) return rc;
    const llmopt_op_matmul_backward *mb = p;
    if (mb->db) bias_grad(in[2]->data, d.M, d.N, mb->db->data);
    if (!want_dx) return 0;
    if (in[1]->dtype == LLMOPT_DTYPE_NF4 && d.precision == LLMOPT_MATMUL_MEDIUM && d.M >= 2 && cpu_use_bf16_gemm) {
        /* dx = dy · W: the forward of dy through W [N, K] read as [in, out] (IN_OUT) */
        const cpu_bgemm g = {.x = in[2]->data, .w = in[1]->data, .wt = LLMOPT_DTYPE_NF4, .layout = LLMOPT_W_IN_OUT,
                             .accumulate = d.accumulate, .out = out->data, .M = d.M, .N = d.K, .K = d.N,
                             .row_bytes = row_bytes};
        return cpu_bf16_gemm(&g);
    }
    const int64_t bs = cpu_api->dtype_traits(in[1]->dtype)->block_size;
    qbw_job j = {.dy = in[2]->data, .w = in[1]->data, .wt = in[1]->dtype, .row_bytes = row_bytes, .dx = out->data, .d = d,
                 .cols = (QBW_COLS + bs - 1) / bs * bs};
    if (j.cols > d.K) j.cols = d.K;
    atomic_init(&j.failed, 0);
    cpu_api->parallel_for((d.K + j.cols - 1) / j.cols, 1, qbw_cols, &j);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

int cpu_ref_qmatmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    cpu_mm_dims d;
    size_t row_bytes;
    int want_dx;
    int rc = check(in, n_in, out, p, &d, &row_bytes, &want_dx);
    if (rc) return rc;
    const llmopt_op_matmul_backward *mb = p;
    const float *dy = in[2]->data;
    if (mb->db) bias_grad(dy, d.M, d.N, mb->db->data);
    if (!want_dx) return 0;
    float *dx = out->data, *row = malloc((size_t)d.K * sizeof(float));
    void *scratch = malloc(cpu_q_scratch_bytes(d.K));
    if (!row || !scratch) {
        free(row);
        free(scratch);
        return LLMOPT_ENOMEM;
    }
    if (!d.accumulate) memset(dx, 0, (size_t)(d.M * d.K) * sizeof(float));
    for (int64_t n = 0; n < d.N; n++) {
        cpu_qrow_range_to_f32(in[1]->dtype, (const uint8_t *)in[1]->data + (size_t)n * row_bytes, 0, d.K, row, scratch);
        for (int64_t m = 0; m < d.M; m++) {
            const float g = dy[m * d.N + n];
            for (int64_t k = 0; k < d.K; k++) dx[m * d.K + k] += g * row[k];
        }
    }
    free(row);
    free(scratch);
    return 0;
}
