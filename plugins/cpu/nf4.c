/* NF4 weights (QLoRA's 4-bit NormalFloat, llmopt/tensor.h) on the CPU: matmul and embedding.
 * Rows decode through the scaled 16-value table, with AVX2 lane permutes on the SIMD paths.
 * NF4 codes index a table, so there is no integer dot as for the affine types: decode (M <= 4)
 * dequantizes each row of W once and dots it with every row of x; prefill dequantizes tiles of
 * 64 rows of W to f32 and multiplies them with OpenBLAS sgemm, as quant_kernels.c does, or at
 * matmul_precision medium (on AVX-512 BF16) goes to bf16_gemm.c, which decodes the blocks as it
 * packs them. Rows of W are split over the host's threads. The reference kernels are plain loops
 * on one thread. */
#include "nf4.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define NF4_MAX_DOT_M 4  /* up to this many rows of x: row dot products; above: sgemm tiles */
#define NF4_TILE_N 64    /* rows of W dequantized per sgemm call */
#define NF4_BLOCK_BYTES (4 + LLMOPT_NF4_BLOCK / 2)

static const float nf4_codes[16] = LLMOPT_NF4_CODES;

/* Set once at registration: decode blocks with AVX2 (the SIMD paths, on a CPU that has it). */
static int g_avx2;

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NF4_AVX2 __attribute__((target("avx2,fma")))

/* One block of 64: the table scaled by absmax as two 8-lane halves, each code looked up in both
 * with permutevar8x32 and the half picked by its bit 3. The products are the scalar path's. */
NF4_AVX2 static void block_to_f32_avx2(const uint8_t *blk, float *dst) {
    float amax;
    memcpy(&amax, blk, 4);
    const __m256 s = _mm256_set1_ps(amax);
    const __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(nf4_codes), s), hi = _mm256_mul_ps(_mm256_loadu_ps(nf4_codes + 8), s);
    /* bytes j..j+3 to lanes [b0 b0 b1 b1 b2 b2 b3 b3], then >> 4 on even lanes (element 2j: high nibble) */
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i shift = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0), m15 = _mm256_set1_epi32(15);
    for (int j = 0; j < LLMOPT_NF4_BLOCK / 2; j += 4) {
        int32_t four;
        memcpy(&four, blk + 4 + j, 4);
        __m128i b = _mm_shuffle_epi8(_mm_cvtsi32_si128(four), dup);
        __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), shift), m15);
        __m256 a = _mm256_permutevar8x32_ps(lo, idx), c = _mm256_permutevar8x32_ps(hi, idx);
        _mm256_storeu_ps(dst + 2 * j, _mm256_blendv_ps(a, c, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));
    }
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static void block_to_f32_avx2(const uint8_t *blk, float *dst) { (void)blk, (void)dst; }
static int cpu_has_avx2(void) { return 0; }
#endif

void cpu_nf4_row_to_f32(const uint8_t *row, int64_t K, float *dst) {
    if (g_avx2) {
        for (int64_t b = 0; b < K / LLMOPT_NF4_BLOCK; b++) block_to_f32_avx2(row + b * NF4_BLOCK_BYTES, dst + b * LLMOPT_NF4_BLOCK);
        return;
    }
    for (int64_t b = 0; b < K / LLMOPT_NF4_BLOCK; b++, row += NF4_BLOCK_BYTES, dst += LLMOPT_NF4_BLOCK) {
        float amax;
        memcpy(&amax, row, 4);
        /* the 16 products once per block, then a lookup per nibble */
        float v[16];
        for (int i = 0; i < 16; i++) v[i] = nf4_codes[i] * amax;
        for (int j = 0; j < LLMOPT_NF4_BLOCK / 2; j++) {
            dst[2 * j] = v[row[4 + j] >> 4];
            dst[2 * j + 1] = v[row[4 + j] & 15];
        }
    }
}

/* ---- argument checks ---- */

int64_t cpu_qt_numel(const llmopt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int cpu_qt_plain_ok(const llmopt_tensor *t, int dtype) {
    if (!t || t->device != LLMOPT_DEVICE_CPU || t->dtype != dtype || t->ndim < 1 || t->ndim > LLMOPT_MAX_DIMS || !t->data)
        return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 1 || t->shape[i] > (INT64_MAX / 16) / n) return 0;
        n *= t->shape[i];
    }
    return (uint64_t)n * 4u <= (uint64_t)t->nbytes;
}

int cpu_qweight_ok(const llmopt_tensor *w, size_t *row_bytes, size_t *bytes) {
    const llmopt_dtype_traits *tr = w ? cpu_api->dtype_traits(w->dtype) : NULL;
    if (!tr || !tr->is_quantized || w->device != LLMOPT_DEVICE_CPU || w->ndim != 2 || !w->data) return 0;
    if (w->shape[0] < 1 || w->shape[1] < 1 || w->shape[0] > INT32_MAX || w->shape[1] > INT32_MAX) return 0;
    if (w->shape[1] % tr->block_size != 0) return 0;
    size_t row = (size_t)(w->shape[1] / tr->block_size) * tr->type_size;
    if ((uint64_t)row * (uint64_t)w->shape[0] > (uint64_t)w->nbytes) return 0;
    *row_bytes = row;
    *bytes = row * (size_t)w->shape[0];
    return 1;
}

int cpu_qt_overlaps(const void *a, size_t na, const void *b, size_t nb) {
    const char *a0 = a, *b0 = b;
    return a0 < b0 + nb && b0 < a0 + na;
}

/* x [M,K] f32, W [N,K] NF4 (OUT_IN only: NF4 rows run along the inputs), bias [N], out [M,N]. */
static int check_matmul(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, const void *params,
                        cpu_mm_dims *d, size_t *row_bytes) {
    size_t wbytes;
    if (!in || (n_in != 2 && n_in != 3) || !params ||
        ((const llmopt_op_matmul *)params)->struct_size < LLMOPT_OP_MATMUL_V0_SIZE || !in[1] ||
        in[1]->dtype != LLMOPT_DTYPE_NF4 || !cpu_qweight_ok(in[1], row_bytes, &wbytes))
        return LLMOPT_EINVAL;
    int rc = cpu_check_qmatmul_rest(in, n_in, out, params, wbytes, d);
    return rc ? rc : d->M > INT32_MAX ? LLMOPT_EINVAL : 0;
}

/* table [V,C] NF4, ids [T] i32 in [0, V), out [T,C]. */
static int check_embedding(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, cpu_rows *d,
                           size_t *row_bytes) {
    size_t tbytes;
    if (!in || n_in != 2 || !in[0] || in[0]->dtype != LLMOPT_DTYPE_NF4 || !cpu_qweight_ok(in[0], row_bytes, &tbytes))
        return LLMOPT_EINVAL;
    return cpu_check_qembedding_ids(in[0], tbytes, in[1], out, d);
}

/* ---- matmul ---- */

typedef struct nf4_job {
    const float *x, *bias;
    const uint8_t *w;
    size_t row_bytes;
    float *out;
    cpu_mm_dims d;
    atomic_int failed;
} nf4_job;

static void store(const nf4_job *j, int64_t m, int64_t n, float v) {
    float *o = j->out + m * j->d.N + n;
    v += j->bias ? j->bias[n] : 0.0f;
    *o = j->d.accumulate ? *o + v : v;
}

/* Decode, rows [n0, n1) of W: each dequantized once, dotted with every row of x. */
static void dot_rows(void *arg, int64_t n0, int64_t n1) {
    nf4_job *j = arg;
    const int64_t K = j->d.K;
    float *row = malloc((size_t)K * sizeof(float));
    if (!row) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t n = n0; n < n1; n++) {
        cpu_nf4_row_to_f32(j->w + (size_t)n * j->row_bytes, K, row);
        for (int64_t m = 0; m < j->d.M; m++) store(j, m, n, cpu_isa->dot(j->x + m * K, row, K));
    }
    free(row);
}

/* Prefill: NF4_TILE_N rows of W at a time to f32, then out[:, tile] (+)= x · tileᵀ (+ bias). */
static void sgemm_rows(void *arg, int64_t n0, int64_t n1) {
    nf4_job *j = arg;
    const cpu_mm_dims *d = &j->d;
    float *tile = malloc((size_t)NF4_TILE_N * (size_t)d->K * sizeof(float));
    if (!tile) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t c0 = n0; c0 < n1; c0 += NF4_TILE_N) {
        int64_t c1 = c0 + NF4_TILE_N < n1 ? c0 + NF4_TILE_N : n1;
        for (int64_t n = c0; n < c1; n++) cpu_nf4_row_to_f32(j->w + (size_t)n * j->row_bytes, d->K, tile + (n - c0) * d->K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->M, (int)(c1 - c0), (int)d->K, 1.0f, j->x, (int)d->K,
                    tile, (int)d->K, d->accumulate ? 1.0f : 0.0f, j->out + c0, (int)d->N);
        if (j->bias)
            for (int64_t m = 0; m < d->M; m++)
                for (int64_t n = c0; n < c1; n++) j->out[m * d->N + n] += j->bias[n];
    }
    free(tile);
}

int cpu_nf4_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) in NF4 blocks of 64, bias is (N), out is (M,N)
    cpu_mm_dims d;
    size_t row_bytes;
    int rc = check_matmul(in, n_in, out, p, &d, &row_bytes);
    if (rc) return rc;
    nf4_job j = {.x = in[0]->data, .bias = d.has_bias ? in[2]->data : NULL, .w = in[1]->data, .row_bytes = row_bytes,
                 .out = out->data, .d = d};
    atomic_init(&j.failed, 0);
    if (d.precision == LLMOPT_MATMUL_MEDIUM && d.M > NF4_MAX_DOT_M && cpu_use_bf16_gemm) {
        /* the AVX-512 BF16 GEMM decodes W's blocks as it packs them: no f32 tiles */
        const cpu_bgemm g = {.x = j.x, .bias = j.bias, .w = j.w, .wt = LLMOPT_DTYPE_NF4, .layout = LLMOPT_W_OUT_IN,
                             .accumulate = d.accumulate, .out = j.out, .M = d.M, .N = d.N, .K = d.K,
                             .row_bytes = row_bytes};
        return cpu_bf16_gemm(&g);
    }
    if (d.M <= NF4_MAX_DOT_M) cpu_api->parallel_for(d.N, 32768 / (d.K * d.M) + 1, dot_rows, &j);
    else cpu_api->parallel_for(d.N, NF4_TILE_N / 2, sgemm_rows, &j);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

int cpu_ref_nf4_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    cpu_mm_dims d;
    size_t row_bytes;
    int rc = check_matmul(in, n_in, out, p, &d, &row_bytes);
    if (rc) return rc;
    const float *x = in[0]->data, *bias = d.has_bias ? in[2]->data : NULL;
    const uint8_t *w = in[1]->data;
    float *o = out->data;
    for (int64_t n = 0; n < d.N; n++) {
        const uint8_t *row = w + (size_t)n * row_bytes;
        for (int64_t m = 0; m < d.M; m++) {
            float acc = bias ? bias[n] : 0.0f;
            for (int64_t k = 0; k < d.K; k++) {
                const uint8_t *blk = row + (size_t)(k / LLMOPT_NF4_BLOCK) * NF4_BLOCK_BYTES;
                float amax;
                memcpy(&amax, blk, 4);
                int j = (int)(k % LLMOPT_NF4_BLOCK);
                unsigned code = j % 2 == 0 ? blk[4 + j / 2] >> 4 : blk[4 + j / 2] & 15u;
                acc += x[m * d.K + k] * (nf4_codes[code] * amax);
            }
            o[m * d.N + n] = d.accumulate ? o[m * d.N + n] + acc : acc;
        }
    }
    return 0;
}

/* ---- embedding: out[t, :] = dequantized row ids[t] ---- */

typedef struct emb_job {
    const uint8_t *table;
    const int32_t *ids;
    size_t row_bytes;
    int64_t C;
    float *out;
} emb_job;

static void emb_rows(void *arg, int64_t t0, int64_t t1) {
    emb_job *j = arg;
    for (int64_t t = t0; t < t1; t++)
        cpu_nf4_row_to_f32(j->table + (size_t)j->ids[t] * j->row_bytes, j->C, j->out + t * j->C);
}

static int embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, int threads) {
    cpu_rows d;
    size_t row_bytes;
    int rc = check_embedding(in, n_in, out, &d, &row_bytes);
    if (rc) return rc;
    emb_job j = {.table = in[0]->data, .ids = in[1]->data, .row_bytes = row_bytes, .C = d.cols, .out = out->data};
    if (threads) cpu_api->parallel_for(d.rows, 16384 / d.cols + 1, emb_rows, &j);
    else emb_rows(&j, 0, d.rows);
    return 0;
}

int cpu_nf4_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return embedding(in, n_in, out, 1);
}

int cpu_ref_nf4_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return embedding(in, n_in, out, 0);
}

/* ---- registration ---- */

int cpu_register_nf4(llmopt_registrar *reg, int use_ref) {
    g_avx2 = !use_ref && cpu_isa != &cpu_simd_generic && cpu_has_avx2();
    const llmopt_kernel_desc k[3] = {
        {.struct_size = sizeof k[0], .device = LLMOPT_DEVICE_CPU, .op = LLMOPT_OP_MATMUL, .dtype = LLMOPT_DTYPE_NF4,
         .fn = use_ref ? cpu_ref_nf4_matmul : cpu_nf4_matmul,
         .summary = use_ref ? "reference loops, one thread"
                   : cpu_use_bf16_gemm ? "NF4 rows to f32 (AVX2 table lookups) + dot for M<=4, else tiles + OpenBLAS "
                                         "sgemm; matmul_precision medium, M>4: AVX-512 BF16 GEMM"
                   : g_avx2 ? "NF4 rows to f32 (AVX2 table lookups) + dot for M<=4, else tiles + OpenBLAS sgemm"
                            : "NF4 rows to f32 + dot for M<=4, else NF4 tiles to f32 + OpenBLAS sgemm"},
        {.struct_size = sizeof k[1], .device = LLMOPT_DEVICE_CPU, .op = LLMOPT_OP_EMBEDDING, .dtype = LLMOPT_DTYPE_NF4,
         .fn = use_ref ? cpu_ref_nf4_embedding : cpu_nf4_embedding,
         .summary = use_ref ? "reference loops, one thread" : "NF4 rows to f32 on host threads"},
        {.struct_size = sizeof k[2], .device = LLMOPT_DEVICE_CPU, .op = LLMOPT_OP_MATMUL_BACKWARD,
         .dtype = LLMOPT_DTYPE_NF4, .fn = use_ref ? cpu_ref_qmatmul_backward : cpu_qmatmul_backward,
         .summary = use_ref ? "dx only (frozen W), reference loops"
                   : cpu_use_bf16_gemm ? "dx only (frozen W): dequantized column blocks of W + OpenBLAS sgemm; "
                                         "matmul_precision medium, M>=2: AVX-512 BF16 GEMM"
                                       : "dx only (frozen W): dequantized column blocks of W + OpenBLAS sgemm"},
    };
    for (int i = 0; i < 3; i++) {
        int rc = reg->add_kernel(reg, &k[i]);
        if (rc) {
            reg->set_error(reg, "registering the nf4 %s kernel failed (%d)", k[i].op, rc);
            return rc;
        }
    }
    return 0;
}
