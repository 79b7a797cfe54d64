/* matmul on the CPU: out[M,N] = x[M,K] · W (+ bias) (+ out). OpenBLAS runs single-threaded
 * (set at init) and the work is split over the host's compute threads by column blocks of W
 * (rows of W for OUT_IN, column ranges for IN_OUT), so every thread comes from the host pool.
 * M = 1 (decode) with W [N,K] takes a gemv-style path of SIMD dot products over rows of W, and
 * with W [K,N] sums over ranges of K (split-K, partials added after: OpenBLAS sgemv for f32);
 * f16/bf16 weights are widened in registers there, and for sgemm converted to f32 a tile at a
 * time into per-chunk scratch. */
#include "cpu.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Up to this many rows of x take the gemv-style path for W [N,K]. Measured with 2 threads
 * (noisy shared machine): at 768x768 gemv and sgemm are even for M = 1 and sgemm wins from
 * M = 2; at 4096x4096 M = 1 gemv streamed W about 2-3x faster. For W [K,N] sgemm always won. */
#ifndef GEMV_MAX_M
#define GEMV_MAX_M 1
#endif
/* f16/bf16 weights for sgemm: converted to f32 in tiles of up to this many bytes. */
#define HALF_TILE_BYTES (4u << 20)

typedef struct mm_job {
    const float *x, *bias;
    const void *w;
    int wt;          /* W's dtype */
    float *out;
    cpu_mm_dims d;
    atomic_int failed;
} mm_job;

/* W[r, c0:c0+n] (row r of the stored matrix) as f32: a pointer into W for f32, else converted
 * into buf. */
static const float *w_row(const mm_job *j, int64_t r, int64_t row_len, int64_t c0, int64_t n, float *buf) {
    int64_t at = r * row_len + c0;
    if (j->wt == LLMOPT_DTYPE_F32) return (const float *)j->w + at;
    if (j->wt == LLMOPT_DTYPE_F16) cpu_isa->f16_to_f32(buf, (const uint16_t *)j->w + at, n);
    else cpu_isa->bf16_to_f32(buf, (const uint16_t *)j->w + at, n);
    return buf;
}

/* gemv-style, W [N,K]: out[m, n] = dot(x[m,:], W[n,:]) for n in [n0, n1); f16/bf16 rows are
 * widened in registers (cpu_simd.dot_half). */
static void gemv_out_in(void *arg, int64_t n0, int64_t n1) {
    const mm_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    const int half = j->wt != LLMOPT_DTYPE_F32, bf16 = j->wt == LLMOPT_DTYPE_BF16;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = 0; m < d->M; m++) {
            const float *x = j->x + m * d->K;
            float v = half ? cpu_isa->dot_half(x, (const uint16_t *)j->w + n * d->K, d->K, bf16)
                           : cpu_isa->dot(x, (const float *)j->w + n * d->K, d->K);
            v += j->bias ? j->bias[n] : 0.0f;
            float *o = j->out + m * d->N + n;
            *o = d->accumulate ? *o + v : v;
        }
    }
}

/* sgemm on one column block [n0, n1) of f32 W, with the bias. Without accumulate the block
 * starts as the bias and sgemm adds to it (beta = 1): one pass over out fewer than a zeroing
 * sgemm (beta = 0) followed by a bias loop. */
static void sgemm_block(const mm_job *j, const float *w, int ldw, int64_t n0, int64_t n1) {
    const cpu_mm_dims *d = &j->d;
    int nc = (int)(n1 - n0);
    const int prefill = j->bias && !d->accumulate;
    if (prefill)
        for (int64_t m = 0; m < d->M; m++) memcpy(j->out + m * d->N + n0, j->bias + n0, (size_t)nc * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, d->layout == LLMOPT_W_OUT_IN ? CblasTrans : CblasNoTrans,
                (int)d->M, nc, (int)d->K, 1.0f, j->x, (int)d->K, w, ldw, d->accumulate || prefill ? 1.0f : 0.0f,
                j->out + n0, (int)d->N);
    if (j->bias && d->accumulate)
        for (int64_t m = 0; m < d->M; m++)
            for (int64_t n = n0; n < n1; n++) j->out[m * d->N + n] += j->bias[n];
}

/* M = 1 with W [K,N] (GPT-2's Conv1D layout): sgemv streams f32 W once, where sgemm would
 * first pack (copy) every block of it; decode is bound by reading W. Split by ranges of K: chunk
 * c sums x[k0:k1] · W[k0:k1, :] over whole rows of W, one contiguous stream, into its own
 * partial, and the partials are added after. Column blocks (as before) read every row of W in
 * short pieces (a 768-wide W in eight blocks: 384 bytes a row every 3 KB), which the hardware
 * prefetchers follow less well: a 2-thread 128-token f32 decode of GPT-2 124M on the 2-vCPU AMD
 * EPYC took 2.2-2.7 s this way against 3.0-3.9 s by columns (A/B interleaved). f16 and bf16
 * rows are widened in registers four at a time (cpu_simd.axpy_half); through sgemm (column
 * tiles widened, then packed) an f16 GPT-2 decoded at 0.76x its f32 speed, reading half the
 * bytes. */
#define SPLITK_CHUNKS_PER_THREAD 2
typedef struct splitk_job {
    const mm_job *j;
    int64_t kc;      /* rows of W per chunk */
    float *part;     /* [chunks, N] */
} splitk_job;

static void gemv_in_out_k(void *arg, int64_t c0, int64_t c1) {
    splitk_job *s = arg;
    const mm_job *j = s->j;
    const cpu_mm_dims *d = &j->d;
    for (int64_t c = c0; c < c1; c++) {
        int64_t k0 = c * s->kc, k1 = k0 + s->kc < d->K ? k0 + s->kc : d->K;
        float *part = s->part + c * d->N;
        if (j->wt == LLMOPT_DTYPE_F32) {
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)(k1 - k0), (int)d->N, 1.0f, (const float *)j->w + k0 * d->N,
                        (int)d->N, j->x + k0, 1, 0.0f, part, 1);
            continue;
        }
        /* f16/bf16: four rows of W at a time widened in registers, x[k] times each added in */
        memset(part, 0, (size_t)d->N * sizeof(float));
        for (int64_t k = k0; k < k1; k += 4)
            cpu_isa->axpy_half(part, j->x + k, (const uint16_t *)j->w + k * d->N, d->N, k1 - k < 4 ? (int)(k1 - k) : 4,
                               d->N, j->wt == LLMOPT_DTYPE_BF16);
    }
}

static int gemv_in_out_splitk(mm_job *j) {
    const cpu_mm_dims *d = &j->d;
    int64_t chunks = (int64_t)cpu_api->n_threads() * SPLITK_CHUNKS_PER_THREAD;
    if (chunks > d->K / 64) chunks = d->K / 64 > 0 ? d->K / 64 : 1;
    splitk_job s = {.j = j, .kc = (d->K + chunks - 1) / chunks};
    chunks = (d->K + s.kc - 1) / s.kc;
    if (!(s.part = malloc((size_t)(chunks * d->N) * sizeof(float)))) return LLMOPT_ENOMEM;
    cpu_api->parallel_for(chunks, 1, gemv_in_out_k, &s);
    for (int64_t n = 0; n < d->N; n++) {
        float v = d->accumulate ? j->out[n] : 0.0f;
        for (int64_t c = 0; c < chunks; c++) v += s.part[c * d->N + n];
        j->out[n] = v + (j->bias ? j->bias[n] : 0.0f);
    }
    free(s.part);
    return 0;
}

static void sgemm_cols(void *arg, int64_t n0, int64_t n1) {
    mm_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    if (j->wt == LLMOPT_DTYPE_F32) {
        const float *w = j->w;
        if (d->layout == LLMOPT_W_OUT_IN) sgemm_block(j, w + n0 * d->K, (int)d->K, n0, n1);
        else sgemm_block(j, w + n0, (int)d->N, n0, n1);
        return;
    }
    /* f16/bf16: convert tn columns of W at a time, in the layout sgemm is told */
    const int64_t tn = cpu_half_tile_cols(d->K, n1 - n0);
    float *tile = malloc((size_t)tn * (size_t)d->K * sizeof(float));
    if (!tile) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t c0 = n0; c0 < n1; c0 += tn) {
        int64_t c1 = c0 + tn < n1 ? c0 + tn : n1, nc = c1 - c0;
        if (d->layout == LLMOPT_W_OUT_IN) {
            for (int64_t n = c0; n < c1; n++) w_row(j, n, d->K, 0, d->K, tile + (n - c0) * d->K);
            sgemm_block(j, tile, (int)d->K, c0, c1);
        } else {
            for (int64_t k = 0; k < d->K; k++) w_row(j, k, d->N, c0, nc, tile + k * nc);
            sgemm_block(j, tile, (int)nc, c0, c1);
        }
    }
    free(tile);
}

/* Columns of W per sgemm call: one block per thread. Each call packs all of x (and its own
 * columns of W) before multiplying, so more blocks repack x more often: GPT-2 124M's prefill of
 * 512 tokens at 2 threads spent 8% of its time packing x with four blocks a thread, and ran
 * 1204-1238 tok/s that way against 1325-1387 with one block a thread (Xeon, 2 vCPUs, A/B
 * interleaved). Multiples of 64 columns. backward_fast.c splits its sgemm calls the same way. */
int64_t cpu_sgemm_grain(int64_t N) {
    const int64_t t = cpu_api->n_threads() > 0 ? cpu_api->n_threads() : 1;
    return ((N + t - 1) / t + 63) & ~(int64_t)63;
}

/* Each sgemm call packs all of x again, so the tiles are as wide as HALF_TILE_BYTES allows (at
 * least 64 columns, at most span): tiles of 128 columns made an f16 GPT-2's prefill 10% slower
 * than f32's. */
int64_t cpu_half_tile_cols(int64_t row_floats, int64_t span) {
    int64_t tn = (int64_t)(HALF_TILE_BYTES / sizeof(float)) / row_floats & ~(int64_t)63;
    if (tn < 64) tn = 64;
    return tn < span ? tn : span;
}

int cpu_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) for OUT_IN or (K,N) for IN_OUT, bias is (N), out is (M,N)
    cpu_mm_dims d;
    int rc = cpu_check_matmul(in, n_in, out, p, &d);
    if (rc) return rc;
    if (d.M > INT32_MAX || d.N > INT32_MAX || d.K > INT32_MAX) return LLMOPT_EUNSUPPORTED; /* BLAS ints */
    mm_job j = {.x = in[0]->data, .bias = d.has_bias ? in[2]->data : NULL, .w = in[1]->data,
                .wt = in[1]->dtype, .out = out->data, .d = d};
    atomic_init(&j.failed, 0);
    if (d.precision == LLMOPT_MATMUL_MEDIUM && d.M >= 2 && cpu_use_bf16_gemm) {
        /* decode (M = 1) stays on the paths below: it is bound by reading W, not by multiplying */
        const cpu_bgemm g = {.x = j.x, .bias = j.bias, .w = j.w, .wt = j.wt, .layout = d.layout,
                             .accumulate = d.accumulate, .out = j.out, .M = d.M, .N = d.N, .K = d.K};
        return cpu_bf16_gemm(&g);
    }
    if (d.M <= GEMV_MAX_M && d.layout == LLMOPT_W_OUT_IN)
        cpu_api->parallel_for(d.N, 32768 / (d.K * d.M) + 1, gemv_out_in, &j); /* >= 32K FMAs a chunk */
    else if (d.M == 1 && d.layout == LLMOPT_W_IN_OUT)
        return gemv_in_out_splitk(&j);
    else
        cpu_api->parallel_for(d.N, cpu_sgemm_grain(d.N), sgemm_cols, &j);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}
