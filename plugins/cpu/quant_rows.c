/* Quantized weight rows for the CPU kernels: the block formats of llmopt/tensor.h read as
 * unsigned codes plus a scale and offset per 32 weights (w = s*u + m), the int8 quantization of
 * activations (ggml's Q8_0 rule, f32 scales), the portable SIMD table, and the argument checks. */
#include "cpu.h"

#include <math.h>
#include <string.h>

static uint16_t get16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

int cpu_q_supported(int dtype) {
    if (dtype == LLMOPT_DTYPE_Q8_0 || dtype == LLMOPT_DTYPE_Q4_0 || dtype == LLMOPT_DTYPE_Q4_1) return 1;
    if (!LLMOPT_DTYPE_IS_GQ(dtype)) return 0;
    const llmopt_dtype_traits *t = cpu_api->dtype_traits(dtype);
    return t && t->is_quantized;
}

size_t cpu_q_row_bytes(int dtype, int64_t K) {
    const llmopt_dtype_traits *t = cpu_q_supported(dtype) ? cpu_api->dtype_traits(dtype) : NULL;
    if (!t || K % t->block_size != 0) return 0;
    return (size_t)(K / t->block_size) * t->type_size;
}

int cpu_q_int_path(int dtype) {
    return !LLMOPT_DTYPE_IS_GQ(dtype) || LLMOPT_DTYPE_GQ_GROUP(dtype) % CPU_QK == 0;
}

int cpu_q_code_max(int dtype) {
    if (dtype == LLMOPT_DTYPE_Q8_0) return 255;
    if (LLMOPT_DTYPE_IS_GQ(dtype)) return (1 << LLMOPT_DTYPE_GQ_BITS(dtype)) - 1;
    return 15; /* Q4_0, Q4_1 */
}

int cpu_q_gemm_takes(int dtype) {
    return cpu_qisa->gemm && cpu_q_int_path(dtype) && cpu_q_code_max(dtype) <= cpu_qisa->gemm_max_code;
}

size_t cpu_q_scratch_bytes(int64_t K) {
    return (size_t)K + (size_t)(K / CPU_QK + 1) * 2 * sizeof(float) + 64;
}

/* 32 codes of a GQ sub-block, packed little-endian at bit i*bits. */
static void gq_codes32(const uint8_t *c, int bits, uint8_t *u) {
    switch (bits) {
    case 8: memcpy(u, c, CPU_QK); break;
    case 4:
        for (int j = 0; j < CPU_QK / 2; j++) {
            u[2 * j] = c[j] & 0x0f;
            u[2 * j + 1] = c[j] >> 4;
        }
        break;
    case 2:
        for (int j = 0; j < CPU_QK / 4; j++)
            for (int k = 0; k < 4; k++) u[4 * j + k] = (c[j] >> (2 * k)) & 3;
        break;
    default: /* 3: eight codes in each 3 bytes */
        for (int j = 0; j < CPU_QK / 8; j++) {
            uint32_t v = (uint32_t)c[3 * j] | (uint32_t)c[3 * j + 1] << 8 | (uint32_t)c[3 * j + 2] << 16;
            for (int k = 0; k < 8; k++) u[8 * j + k] = (v >> (3 * k)) & 7;
        }
        break;
    }
}

void cpu_q_unpack_row(int dtype, const uint8_t *row, int64_t K, uint8_t *u, float *s, float *m) {
    const int64_t nb = K / CPU_QK;
    if (dtype == LLMOPT_DTYPE_Q8_0) {             /* f16 d, int8 q[32]: u = q + 128 */
        for (int64_t b = 0; b < nb; b++, row += 2 + CPU_QK, u += CPU_QK) {
            s[b] = cpu_f16_to_f32(get16(row));
            m[b] = -128.0f * s[b];
            for (int j = 0; j < CPU_QK; j++) u[j] = row[2 + j] ^ 0x80;
        }
    } else if (dtype == LLMOPT_DTYPE_Q4_0 || dtype == LLMOPT_DTYPE_Q4_1) {
        const int hdr = dtype == LLMOPT_DTYPE_Q4_0 ? 2 : 4; /* f16 d (, f16 m), 16 bytes */
        for (int64_t b = 0; b < nb; b++, row += hdr + CPU_QK / 2, u += CPU_QK) {
            s[b] = cpu_f16_to_f32(get16(row));
            m[b] = hdr == 2 ? -8.0f * s[b] : cpu_f16_to_f32(get16(row + 2));
            for (int j = 0; j < CPU_QK / 2; j++) {  /* element j: low nibble, j + 16: high */
                u[j] = row[hdr + j] & 0x0f;
                u[j + CPU_QK / 2] = row[hdr + j] >> 4;
            }
        }
    } else {                                        /* GQ: f16 scale (, f16 zero), codes */
        const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
        const int64_t g = LLMOPT_DTYPE_GQ_GROUP(dtype), per = g / CPU_QK;
        const size_t hdr = asym ? 4 : 2, block = hdr + (size_t)(g * bits / 8);
        for (int64_t gi = 0; gi < K / g; gi++, row += block) {
            float sc = cpu_f16_to_f32(get16(row));
            float zero = asym ? cpu_f16_to_f32(get16(row + 2)) : (float)(1 << (bits - 1));
            for (int64_t k = 0; k < per; k++, u += CPU_QK) {
                s[gi * per + k] = sc;
                m[gi * per + k] = -zero * sc;
                gq_codes32(row + hdr + (size_t)(k * CPU_QK * bits / 8), bits, u);
            }
        }
    }
}

/* A GQ row whose group is not a multiple of 32: one code at a time. */
static void gq_row_to_f32_slow(int dtype, const uint8_t *row, int64_t K, float *dst) {
    const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    const int64_t g = LLMOPT_DTYPE_GQ_GROUP(dtype);
    const size_t hdr = asym ? 4 : 2, block = hdr + (size_t)(g * bits / 8);
    for (int64_t gi = 0; gi < K / g; gi++, row += block) {
        float sc = cpu_f16_to_f32(get16(row));
        float zero = asym ? cpu_f16_to_f32(get16(row + 2)) : (float)(1 << (bits - 1));
        for (int64_t j = 0; j < g; j++) {
            uint64_t bit = (uint64_t)(j * bits);
            unsigned v = (unsigned)(row[hdr + (bit >> 3)] | (bit / 8 + 1 < (uint64_t)(block - hdr)
                                                                ? row[hdr + (bit >> 3) + 1] << 8 : 0));
            unsigned q = (v >> (bit & 7)) & ((1u << bits) - 1);
            dst[gi * g + j] = sc * ((float)q - zero);
        }
    }
}

void cpu_q_row_to_f32(const cpu_qsimd *q, int dtype, const uint8_t *row, int64_t K, float *dst, void *scratch) {
    if (!cpu_q_int_path(dtype)) {
        gq_row_to_f32_slow(dtype, row, K, dst);
        return;
    }
    if (q->row_to_f32 && q->row_to_f32(dtype, row, K, dst) == 0) return;
    uint8_t *u = scratch;
    float *s = (float *)((uintptr_t)(u + K + 63) & ~(uintptr_t)63), *m = s + K / CPU_QK;
    cpu_q_unpack_row(dtype, row, K, u, s, m);
    q->codes_to_f32(dst, u, s, m, K / CPU_QK);
}

void cpu_q_quantize_x(const float *x, int64_t K, int8_t *xq, float *dx, int32_t *xsum) {
    for (int64_t b = 0; b < K / CPU_QK; b++, x += CPU_QK, xq += CPU_QK) {
        float amax = 0.0f;
        for (int j = 0; j < CPU_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < CPU_QK; j++) {
            xq[j] = (int8_t)roundf(x[j] * id);
            sum += xq[j];
        }
        dx[b] = d;
        xsum[b] = sum;
    }
}

/* ---- the portable table ---- */

static float generic_dot_u8s8(const uint8_t *u, const int8_t *xq, const float *c, int64_t nblk, int wide) {
    (void)wide;
    float acc = 0.0f;
    for (int64_t b = 0; b < nblk; b++, u += CPU_QK, xq += CPU_QK) {
        int32_t sum = 0;
        for (int j = 0; j < CPU_QK; j++) sum += (int32_t)u[j] * xq[j];
        acc += c[b] * (float)sum;
    }
    return acc;
}

static void generic_codes_to_f32(float *dst, const uint8_t *u, const float *s, const float *m, int64_t nblk) {
    for (int64_t b = 0; b < nblk; b++, u += CPU_QK, dst += CPU_QK)
        for (int j = 0; j < CPU_QK; j++) dst[j] = s[b] * (float)u[j] + m[b];
}

const cpu_qsimd cpu_qsimd_generic = {"generic", generic_dot_u8s8, generic_codes_to_f32, NULL, NULL, cpu_q_quantize_x, NULL, NULL, 0};

/* ---- argument checks ---- */

static int64_t numel(const llmopt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* A CPU tensor with 1..4 dims >= 1; elem bytes per element (f32, i32) must fit in nbytes. */
static int plain_ok(const llmopt_tensor *t, int dtype) {
    if (!t || t->device != LLMOPT_DEVICE_CPU || t->dtype != dtype || t->ndim < 1 ||
        t->ndim > LLMOPT_MAX_DIMS || !t->data)
        return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 1 || t->shape[i] > (INT64_MAX / 16) / n) return 0;
        n *= t->shape[i];
    }
    return (uint64_t)n * 4u <= (uint64_t)t->nbytes;
}

/* A 2-D quantized CPU weight [R, C]: C whole blocks, storage for every row; *bytes its size. */
static int qweight_ok(const llmopt_tensor *w, size_t *bytes) {
    if (!w || w->device != LLMOPT_DEVICE_CPU || !cpu_q_supported(w->dtype) || w->ndim != 2 || !w->data)
        return 0;
    if (w->shape[0] < 1 || w->shape[1] < 1 || w->shape[0] > INT32_MAX || w->shape[1] > INT32_MAX) return 0;
    size_t row = cpu_q_row_bytes(w->dtype, w->shape[1]);
    if (row == 0 || (uint64_t)row * (uint64_t)w->shape[0] > (uint64_t)w->nbytes) return 0;
    *bytes = row * (size_t)w->shape[0];
    return 1;
}

static int overlaps(const void *a, size_t na, const void *b, size_t nb) {
    const char *a0 = a, *b0 = b;
    return a0 < b0 + nb && b0 < a0 + na;
}

#define F32_BYTES(t) ((size_t)numel(t) * 4u)

int cpu_check_qmatmul_rest(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                           const llmopt_op_matmul *p, size_t wbytes, cpu_mm_dims *d) {
    const llmopt_tensor *x = in[0], *w = in[1], *b = n_in == 3 ? in[2] : NULL;
    if (!plain_ok(x, LLMOPT_DTYPE_F32)) return LLMOPT_EINVAL;
    if (p->w_layout != LLMOPT_W_OUT_IN && p->w_layout != LLMOPT_W_IN_OUT) return LLMOPT_EINVAL;
    /* rows of a quantized W are its blocks' rows: only [N,K] is stored that way */
    if (p->w_layout == LLMOPT_W_IN_OUT) return LLMOPT_EUNSUPPORTED;
    d->K = x->shape[x->ndim - 1];
    d->M = numel(x) / d->K;
    d->layout = p->w_layout;
    d->accumulate = p->accumulate != 0;
    /* the precision asked for is checked, but these kernels have one way: x quantized to int8 per
     * 32 (or widened, the NF4 and float paths), already coarser than bf16's rounding */
    d->precision = p->struct_size >= sizeof *p ? p->precision : LLMOPT_MATMUL_HIGHEST;
    if (d->precision != LLMOPT_MATMUL_HIGHEST && d->precision != LLMOPT_MATMUL_MEDIUM) return LLMOPT_EINVAL;
    d->N = w->shape[0];
    if (w->shape[1] != d->K || (n_in == 3 && !b)) return LLMOPT_EINVAL;
    d->has_bias = b != NULL;
    if (!plain_ok(out, LLMOPT_DTYPE_F32) || out->shape[out->ndim - 1] != d->N || numel(out) != d->M * d->N)
        return LLMOPT_EINVAL;
    if (b && (!plain_ok(b, LLMOPT_DTYPE_F32) || numel(b) != d->N ||
              overlaps(out->data, F32_BYTES(out), b->data, F32_BYTES(b))))
        return LLMOPT_EINVAL;
    if (overlaps(out->data, F32_BYTES(out), x->data, F32_BYTES(x)) ||
        overlaps(out->data, F32_BYTES(out), w->data, wbytes))
        return LLMOPT_EINVAL;
    return 0;
}

int cpu_check_qmatmul(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                      const void *params, cpu_mm_dims *d) {
    size_t wbytes;
    if (!in || (n_in != 2 && n_in != 3) || !params ||
        ((const llmopt_op_matmul *)params)->struct_size < LLMOPT_OP_MATMUL_V0_SIZE || !qweight_ok(in[1], &wbytes))
        return LLMOPT_EINVAL;
    return cpu_check_qmatmul_rest(in, n_in, out, params, wbytes, d);
}

int cpu_check_qembedding_ids(const llmopt_tensor *table, size_t tbytes, const llmopt_tensor *ids,
                             const llmopt_tensor *out, cpu_rows *d) {
    if (!plain_ok(ids, LLMOPT_DTYPE_I32) || !plain_ok(out, LLMOPT_DTYPE_F32)) return LLMOPT_EINVAL;
    int64_t V = table->shape[0], C = table->shape[1], T = numel(ids);
    if (out->shape[out->ndim - 1] != C || numel(out) != T * C ||
        overlaps(out->data, F32_BYTES(out), table->data, tbytes) ||
        overlaps(out->data, F32_BYTES(out), ids->data, (size_t)T * 4u))
        return LLMOPT_EINVAL;
    const int32_t *id = ids->data;
    for (int64_t t = 0; t < T; t++)
        if (id[t] < 0 || id[t] >= V) return LLMOPT_EINVAL;
    d->rows = T;
    d->cols = C;
    return 0;
}

int cpu_check_qembedding(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, cpu_rows *d) {
    size_t tbytes;
    if (!in || n_in != 2 || !qweight_ok(in[0], &tbytes)) return LLMOPT_EINVAL;
    return cpu_check_qembedding_ids(in[0], tbytes, in[1], out, d);
}
