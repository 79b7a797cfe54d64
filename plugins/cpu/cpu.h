/* The CPU kernel plugin's private header: argument checks shared by every path, the portable
 * reference kernels (ref.c, also compiled into the unit test), the fast kernels, the f16/bf16
 * conversions and the table of SIMD primitives picked at init by CPU feature detection. */
#ifndef LLMOPT_PLUGIN_CPU_H
#define LLMOPT_PLUGIN_CPU_H

#include <stdint.h>
#include <llmopt/llmopt.h>

/* ---- half.c: IEEE binary16 and bfloat16 <-> f32 ---- */
float cpu_f16_to_f32(uint16_t h);
uint16_t cpu_f32_to_f16(float f);   /* round to nearest even; subnormals, inf, NaN kept */
float cpu_bf16_to_f32(uint16_t h);
uint16_t cpu_f32_to_bf16(float f);  /* round to nearest even on the top 16 bits; NaN stays NaN */
/* n elements of an f32/f16/bf16 row to f32 (portable loops). */
void cpu_row_to_f32(float *dst, const void *src, int dtype, int64_t n);

/* ---- check.c: argument validation; every kernel calls one before touching data ---- */
typedef struct cpu_mm_dims { int64_t M, K, N; int layout, accumulate, has_bias, precision; } cpu_mm_dims;
typedef struct cpu_attn_dims { int64_t T, S, Hq, Hkv, D; } cpu_attn_dims;
typedef struct cpu_rows { int64_t rows, cols; } cpu_rows;

int cpu_check_matmul(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                     const void *params, cpu_mm_dims *d);
int cpu_check_embedding(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                        cpu_rows *d);
/* layernorm (gamma, optional beta: n_opt 1) and rmsnorm (gamma: n_opt 0) */
int cpu_check_norm(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                   const void *params, int with_beta, cpu_rows *d);
int cpu_check_rope(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                   const void *params);
int cpu_check_attention(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                        const void *params, cpu_attn_dims *d);
/* n_ops f32 inputs of the same shape as out (activations: 1; swiglu, add: 2); out may alias in[0]. */
int cpu_check_elementwise(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                          int n_ops, int64_t *n);
int cpu_check_softmax(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, cpu_rows *d);
int cpu_check_cross_entropy(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                            const void *params, cpu_rows *d);

/* ---- ref.c: plain loops, single-threaded, the specification the fast paths are tested against ---- */
int cpu_ref_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_layernorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_rmsnorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_rope(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_attention(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_gelu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_gelu_erf(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_silu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_swiglu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_add(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_softmax(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_cross_entropy(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

/* ---- SIMD primitives: one table per instruction set, chosen once at init ---- */
/* vexp's argument range: exp(-87.3) is still a normal float, exp(88.37) still finite */
#define CPU_EXP_LO (-87.3365448f)
#define CPU_EXP_HI 88.3762626647949f

/* One AdamW step's constants (cpu_adamw): decay = 1 - lr * weight_decay, step_size = lr / (1 - b1^t),
 * bc2_sqrt = sqrt(1 - b2^t) */
typedef struct cpu_adamw_k {
    float b1, b2, eps, decay, step_size, bc2_sqrt, grad_scale;
} cpu_adamw_k;

/* adamw_8bit's tables (adamw8.c): both dynamic maps, and the lookup of cpu_simd.a8_codes */
typedef struct cpu_a8_tables {
    const float *code[2];     /* [0] signed map (m), [1] unsigned (v): 256 values */
    const int32_t *base[2];
    const float *thr[2];
    uint32_t cells;
} cpu_a8_tables;

typedef struct cpu_simd {
    const char *name;                                              /* "generic", "avx2", "avx512" */
    float (*dot)(const float *a, const float *b, int64_t n);       /* sum a[i]*b[i] */
    void (*axpy)(float *y, float a, const float *x, int64_t n);    /* y += a*x */
    void (*f16_to_f32)(float *dst, const uint16_t *src, int64_t n);
    void (*bf16_to_f32)(float *dst, const uint16_t *src, int64_t n);
    /* x[i] = exp(x[i]) in place: Cephes' expf polynomial (about 1 ulp), arguments clamped to
     * [-87.3, 88.37] (so exp of a very negative x is 1e-38, not 0, and never inf) */
    void (*vexp)(float *x, int64_t n);
    /* AdamW on n values in place, cpu_ref_adamw's operations in its order: g = grad * grad_scale;
     * m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g; param = param * decay - step_size m /
     * (sqrt(v) / bc2_sqrt + eps) */
    void (*adamw)(const cpu_adamw_k *k, const float *grad, float *param, float *m, float *v, int64_t n);
    /* the f16 (bf16 when bf16) weight paths of decode, widened in registers: sum a[i]*b[i]; and
     * y[i] += sum over r < rows (<= 4) of a[r] * w[r*ldw + i] */
    float (*dot_half)(const float *a, const uint16_t *b, int64_t n, int bf16);
    void (*axpy_half)(float *y, const float *a, const uint16_t *w, int64_t ldw, int rows, int64_t n, int bf16);
    /* adamw_8bit's bytes (adamw8.c): out[i] = base[c] + (thr[c] <= x[i]), c the top 17 bits of
     * x[i] with the magnitude's part capped at cells - 1 (base and thr: 0x10000 + cells entries) */
    void (*a8_codes)(const int32_t *base, const float *thr, uint32_t cells, const float *x, uint8_t *out, int64_t n);
    /* one block (len <= 256 values) of adamw_8bit whole, as adamw8.c's loops compute it:
     * dequantize, adamw's update, the new absmax, the bytes; NULL where only those loops are */
    void (*a8_block)(const cpu_adamw_k *k, const cpu_a8_tables *t, const float *grad, float *param, uint8_t *mc,
                     uint8_t *vc, float *m_absmax, float *v_absmax, int64_t len);
} cpu_simd;

extern const cpu_simd cpu_simd_generic;   /* fast.c */
extern const cpu_simd cpu_simd_avx2;      /* simd_avx2.c: AVX2 + FMA + F16C */
extern const cpu_simd cpu_simd_avx512;    /* simd_avx512.c: AVX-512F */

/* ---- plugin.c: state set once by init ---- */
extern const llmopt_host_api *cpu_api;
extern const cpu_simd *cpu_isa;

/* ---- matmul.c and fast.c: the threaded fast kernels ---- */
/* Columns per parallel_for chunk of an sgemm split by columns: one block a thread (matmul.c). */
int64_t cpu_sgemm_grain(int64_t N);
/* Columns of f16/bf16 W (rows of row_floats values once widened) per sgemm tile, at most span */
int64_t cpu_half_tile_cols(int64_t row_floats, int64_t span);
/* sum of exp(x[i] - shift) through cpu_isa->vexp; the exps into out too when out is not NULL (fast.c) */
float cpu_exp_shift_sum(const float *x, int64_t n, float shift, float *out);
/* Eight lanes' partial sums added pairwise, the order every eight-lane sum here ends in */
static inline float cpu_lanes_sum(const float a[8]) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
/* Sum of n values, and of their squared distances from mean, in eight lanes (fast.c) */
float cpu_sum(const float *x, int64_t n);
float cpu_sq_dev_sum(const float *x, int64_t n, float mean);
/* The largest of n values (-INFINITY for none). */
float cpu_row_max(const float *x, int64_t n);
int cpu_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
/* bf16_gemm.c: out[M, N] (+)= x · W (+ bias) with x and W rounded to bf16 and f32 sums
 * (LLMOPT_MATMUL_MEDIUM), W of either layout in f32, f16 or bf16, or NF4 (QLoRA's frozen base:
 * rows of row_bytes, a row's length a multiple of 64; as OUT_IN W [N, K], or read the other way
 * as IN_OUT for dx = dy · W); AVX-512 BF16 only. */
typedef struct cpu_bgemm {
    const float *x, *bias;
    const void *w;
    int wt, layout, accumulate;
    float *out;
    int64_t M, N, K;
    size_t row_bytes; /* NF4 only: bytes a stored row of W */
} cpu_bgemm;
/* 0, LLMOPT_ENOMEM, or LLMOPT_EUNSUPPORTED where not built for x86 */
int cpu_bf16_gemm(const cpu_bgemm *g);
/* The CPU has AVX-512F, BW, VL and BF16. */
int cpu_bf16_gemm_supported(void);
/* Set at init: matmuls at MEDIUM precision with M >= 2 take cpu_bf16_gemm. */
extern int cpu_use_bf16_gemm;
int cpu_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_layernorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_rmsnorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_rope(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
/* rope with the sine scaled by sin_sign: +1 is rope, -1 the inverse rotation (rope_backward). */
int cpu_rope_rotate(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p, float sin_sign);
int cpu_attention(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_gelu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_gelu_erf(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_silu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_swiglu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_add(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_softmax(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_cross_entropy(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

/* ---- quantized weights (quant_rows.c, quant_kernels.c, quant_avx2.c, quant_avx512.c) ----
 * Every quantized row is read as unsigned codes u (one byte each) plus, per run of 32 weights
 * (a "sub-block": a ggml block, or 32 weights of a GQ group), a scale s and an offset m with
 * w = s*u + m. Decode quantizes x to int8 per 32 (as ggml's Q8 activations, dx = amax/127) and
 * sums s*dx*sum(u*xq) + m*dx*sum(xq) per sub-block. GQ groups that are not a multiple of 32
 * take a float path (dequantized row + SIMD dot). */
#define CPU_QK 32
/* Rows of W one row_dot call takes at most: the per-call setup of the formats read one row at a
 * time (x's lane sums or zero bases, block offsets, x scales) is shared by them (Q8_0 decode of
 * GPT-2 124M 6-9% faster with 16 than with 4 on a Zen 3); the others run them four at a time. */
#define CPU_Q_ROWS 16

/* A quantized matmul for many rows of x (prefill): out[M, N] (+)= x · W^T (+ bias), W [N, K] in
 * blocks of an int-path dtype (cpu_q_int_path), K a multiple of 32. */
typedef struct cpu_qgemm {
    const float *x, *bias;
    const uint8_t *w;
    int wt;
    size_t row_bytes;
    float *out;
    int64_t M, N, K;
    int accumulate;
} cpu_qgemm;

/* quant_gemm_vnni.c: x quantized per 32 as decode does, integer block sums on AVX-512 VNNI;
 * 0, LLMOPT_ENOMEM, or LLMOPT_EUNSUPPORTED off x86. */
int cpu_qgemm_vnni(const cpu_qgemm *g);
/* quant_gemm_avx2.c: the same on AVX2 (maddubs for codes <= 15, madd_epi16 for 8-bit codes). */
int cpu_qgemm_avx2(const cpu_qgemm *g);

typedef struct cpu_qsimd {
    const char *name;   /* "generic", "avx2", "avx512vnni" */
    /* sum_b c[b] * sum_{j<32} u[32b+j] * xq[32b+j], exact integer sums per block; xq in
     * [-127, 127], codes u <= 15 unless wide (then <= 255: 8-bit types) */
    float (*dot_u8s8)(const uint8_t *u, const int8_t *xq, const float *c, int64_t nblk, int wide);
    /* dst[32b+j] = s[b] * u[32b+j] + m[b] */
    void (*codes_to_f32)(float *dst, const uint8_t *u, const float *s, const float *m, int64_t nblk);
    /* Fused decode dots of nrows (1..CPU_Q_ROWS) consecutive rows of W, row_bytes apart, read straight
     * from their blocks, with one row of x quantized per 32 (dxs[b] = dx[b] * sum of block b's
     * codes): 0 and out[0..nrows) set for Q8_0, Q4_0, Q4_1 and GQ 4/8-bit groups of 32k; -1 for
     * other dtypes (the caller unpacks codes and uses dot_u8s8). NULL in the portable table. */
    int (*row_dot)(int dtype, const uint8_t *row, size_t row_bytes, int nrows, const int8_t *xq, const float *dx,
                   const float *dxs, int64_t K, float *out);
    /* One row of K weights to f32 read straight from its blocks: 0 for Q8_0, Q4_0, Q4_1 and GQ
     * 4/8-bit groups of 32k; -1 for other dtypes (unpack + codes_to_f32). NULL: portable table. */
    int (*row_to_f32)(int dtype, const uint8_t *row, int64_t K, float *dst);
    /* cpu_q_quantize_x in SIMD, the same bytes and numbers (roundf's half away from zero); the
     * portable table's is cpu_q_quantize_x itself */
    void (*quantize_x)(const float *x, int64_t K, int8_t *xq, float *dx, int32_t *xsum);
    /* The integer prefill GEMM (cpu_qgemm_vnni, cpu_qgemm_avx2), or NULL: dequantized tiles +
     * sgemm; it takes the int-path dtypes whose codes are at most gemm_max_code (cpu_q_gemm_takes). */
    int (*gemm)(const cpu_qgemm *g);
    /* x's codes (one row of K, from quantize_x) rearranged in place into the order row_dot
     * reads for a weight of this dtype (a no-op for most), or NULL: row_dot reads x as it is.
     * row_dot's caller runs it on every row of x before the dots; dx, dxs stay per 32 as they
     * were, since the rearrangement keeps every block's codes within its 64. */
    void (*permute_x)(int dtype, int8_t *xq, int64_t K);
    int gemm_max_code;
} cpu_qsimd;

extern const cpu_qsimd cpu_qsimd_generic;     /* quant_rows.c */
extern const cpu_qsimd cpu_qsimd_avx2;        /* quant_avx2.c: AVX2 maddubs */
extern const cpu_qsimd cpu_qsimd_avx512vnni;  /* quant_avx512.c: AVX-512 VNNI dpbusd (+BW, VL) */
extern const cpu_qsimd *cpu_qisa;             /* plugin.c: chosen with cpu_isa */

/* The weight dtypes the quantized kernels handle: Q8_0, Q4_0, Q4_1 and GQ (2, 3, 4, 8 bits). */
int cpu_q_supported(int dtype);
/* Bytes of one row of K weights (K a multiple of the block size), 0 when dtype is unsupported. */
size_t cpu_q_row_bytes(int dtype, int64_t K);
/* The row takes the int8 path: a ggml type, or a GQ group that is a multiple of 32 weights. */
int cpu_q_int_path(int dtype);
/* The largest code u of cpu_q_unpack_row for dtype: 2^bits - 1 (Q8_0: 255). */
int cpu_q_code_max(int dtype);
/* Prefill (M > 4) with W of dtype runs cpu_qisa's integer GEMM. */
int cpu_q_gemm_takes(int dtype);
/* Codes u[K] and per-32 s, m (K/32 each) of one row; cpu_q_int_path(dtype) must hold. */
void cpu_q_unpack_row(int dtype, const uint8_t *row, int64_t K, uint8_t *u, float *s, float *m);
/* One row of K weights to f32 with the given SIMD table; scratch holds K bytes + K/16 floats. */
void cpu_q_row_to_f32(const cpu_qsimd *q, int dtype, const uint8_t *row, int64_t K, float *dst, void *scratch);
size_t cpu_q_scratch_bytes(int64_t K);
/* x[K] to int8 codes per 32 (K a multiple of 32): dx[b] = amax/127, xq = roundf(x/dx), and the
 * sum of each block's codes. */
void cpu_q_quantize_x(const float *x, int64_t K, int8_t *xq, float *dx, int32_t *xsum);

/* Argument checks of the quantized kernels (the f32 rules of check.c, W of the key dtype). */
int cpu_check_qmatmul(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                      const void *params, cpu_mm_dims *d);
int cpu_check_qembedding(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, cpu_rows *d);
/* The rest of a quantized matmul's checks once in/n_in/params and W (wbytes of storage) are
 * known good: x, the layout, the shapes, bias, out, aliasing (also NF4's, nf4.c). */
int cpu_check_qmatmul_rest(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                           const llmopt_op_matmul *p, size_t wbytes, cpu_mm_dims *d);
/* The rest of an embedding's checks once the table (tbytes of storage) is known good: ids, out,
 * aliasing, ids in range (also NF4's, nf4.c). */
int cpu_check_qembedding_ids(const llmopt_tensor *table, size_t tbytes, const llmopt_tensor *ids,
                             const llmopt_tensor *out, cpu_rows *d);

int cpu_qmatmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_qembedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_qmatmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_qembedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

#endif
