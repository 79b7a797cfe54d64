/* Reference quantize / dequantize of rows and 2-D weights (see quant.h for the rules). The ggml
 * types follow ggml-quants.c's quantize_row_q8_0_ref, quantize_row_q4_0_ref,
 * quantize_row_q4_1_ref and the matching dequantize_row_*: the code is computed from the f32
 * scale (not its f16 rounding), with ggml's rounding for each type. NF4 follows the QLoRA paper
 * and bitsandbytes' blockwise NF4 (f32 absmax per 64, nearest code). */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* ---- f16 ---- */

float q_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float f;
    if (exp == 0) f = ldexpf((float)man, -24);                    /* zero, subnormal */
    else if (exp == 31) f = man ? NAN : INFINITY;
    else f = ldexpf((float)(man | 0x400), (int)exp - 25);
    uint32_t u;
    memcpy(&u, &f, 4);
    u |= sign;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t q_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00;                     /* NaN */
    if (a >= 0x477ff000) return sign | 0x7c00;                    /* >= 65520: inf */
    if (a < 0x38800000) {                                         /* below 2^-14: subnormal */
        /* value * 2^24 rounded to nearest even is the subnormal's mantissa */
        float v;
        memcpy(&v, &a, 4);
        return sign | (uint16_t)lrintf(v * 16777216.0f);          /* exact product: rint ties even */
    }
    uint32_t r = a + 0xfff + ((a >> 13) & 1);                     /* round to nearest even */
    return sign | (uint16_t)((r - 0x38000000) >> 13);
}

/* The smallest f16 value >= s (s >= 0 finite), saturating at the largest finite f16. */
static uint16_t f16_up(float s) {
    uint16_t h = q_f32_to_f16(s);
    if (h >= 0x7c00) return 0x7bff;
    if (q_f16_to_f32(h) < s && h < 0x7bff) h++;
    return h;
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static uint16_t get16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* ---- ggml blocks of 32 ---- */

#define QK 32

/* block_q8_0: f16 d, int8 qs[32]. d = amax/127, q = roundf(x/d). */
static void quantize_q8_0(const float *x, uint8_t *y) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    put16(y, q_f32_to_f16(d));
    for (int j = 0; j < QK; j++) y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

static void dequantize_q8_0(const uint8_t *b, float *y) {
    const float d = q_f16_to_f32(get16(b));
    for (int j = 0; j < QK; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

/* block_q4_0: f16 d, qs[16] (element j low nibble, j+16 high). d = max / -8 where max is the
 * element of largest magnitude, sign kept (the first one on ties); q = min(15, (int8)(x/d + 8.5)). */
static void quantize_q4_0(const float *x, uint8_t *y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    const float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
    put16(y, q_f32_to_f16(d));
    for (int j = 0; j < QK / 2; j++) {
        const float x0 = x[j] * id, x1 = x[j + QK / 2] * id;
        int8_t lo = (int8_t)(x0 + 8.5f), hi = (int8_t)(x1 + 8.5f);
        uint8_t q0 = (uint8_t)(lo < 15 ? lo : 15), q1 = (uint8_t)(hi < 15 ? hi : 15);
        y[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void dequantize_q4_0(const uint8_t *b, float *y) {
    const float d = q_f16_to_f32(get16(b));
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (float)((b[2 + j] & 0x0f) - 8) * d;
        y[j + QK / 2] = (float)((b[2 + j] >> 4) - 8) * d;
    }
}

/* block_q4_1: f16 d, f16 m, qs[16]. d = (max - min)/15, m = min; q = min(15, (int8)((x-min)/d + 0.5)). */
static void quantize_q4_1(const float *x, uint8_t *y) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15.0f, id = d ? 1.0f / d : 0.0f;
    put16(y, q_f32_to_f16(d));
    put16(y + 2, q_f32_to_f16(min));
    for (int j = 0; j < QK / 2; j++) {
        const float x0 = (x[j] - min) * id, x1 = (x[j + QK / 2] - min) * id;
        int8_t lo = (int8_t)(x0 + 0.5f), hi = (int8_t)(x1 + 0.5f);
        uint8_t q0 = (uint8_t)(lo < 15 ? lo : 15), q1 = (uint8_t)(hi < 15 ? hi : 15);
        y[4 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void dequantize_q4_1(const uint8_t *b, float *y) {
    const float d = q_f16_to_f32(get16(b)), m = q_f16_to_f32(get16(b + 2));
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (float)(b[4 + j] & 0x0f) * d + m;
        y[j + QK / 2] = (float)(b[4 + j] >> 4) * d + m;
    }
}

/* ---- NF4 (QLoRA, Dettmers et al. 2023, section 3): blocks of 64, f32 absmax, codes ----
 * The normalized weight x / absmax goes to the nearest of the 16 NF4 values; a value exactly
 * halfway takes the lower code (bitsandbytes' dQuantizeNF4 compares against the midpoints with
 * '>'). An all-zero block has absmax 0 and every code 7 (the exact zero). */

static const float nf4_codes[16] = LLMOPT_NF4_CODES;

float q_nf4_value(unsigned code) { return nf4_codes[code & 15]; }

unsigned q_nf4_nearest(float x) {
    unsigned q = 0;
    for (int i = 0; i < 15; i++)
        if ((double)x > ((double)nf4_codes[i] + (double)nf4_codes[i + 1]) / 2.0) q = (unsigned)i + 1;
    return q;
}

static void quantize_nf4(const float *x, uint8_t *y) {
    float amax = 0.0f;
    for (int j = 0; j < LLMOPT_NF4_BLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
    memcpy(y, &amax, 4);
    for (int j = 0; j < LLMOPT_NF4_BLOCK / 2; j++) {
        unsigned hi = amax > 0.0f ? q_nf4_nearest(x[2 * j] / amax) : 7u;
        unsigned lo = amax > 0.0f ? q_nf4_nearest(x[2 * j + 1] / amax) : 7u;
        y[4 + j] = (uint8_t)(hi << 4 | lo);
    }
}

static void dequantize_nf4(const uint8_t *b, float *y) {
    float amax;
    memcpy(&amax, b, 4);
    for (int j = 0; j < LLMOPT_NF4_BLOCK / 2; j++) {
        y[2 * j] = nf4_codes[b[4 + j] >> 4] * amax;
        y[2 * j + 1] = nf4_codes[b[4 + j] & 15] * amax;
    }
}

/* ---- group-quantized: f16 scale, (asym) f16 zero, codes little-endian at bit i*bits ---- */

static void put_code(uint8_t *codes, int64_t i, int bits, unsigned q) {
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    for (int k = 0; k < bits; k++, bit++)
        if (q >> k & 1) codes[bit >> 3] |= (uint8_t)(1u << (bit & 7));
}

static unsigned get_code(const uint8_t *codes, int64_t i, int bits) {
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    unsigned q = 0;
    for (int k = 0; k < bits; k++, bit++) q |= (unsigned)(codes[bit >> 3] >> (bit & 7) & 1) << k;
    return q;
}

static void quantize_gq(int dtype, const float *x, uint8_t *y) {
    const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    const int64_t g = LLMOPT_DTYPE_GQ_GROUP(dtype);
    const int qmax = (1 << bits) - 1;
    uint8_t *codes = y + (asym ? 4 : 2);
    memset(codes, 0, (size_t)(g * bits / 8));
    float scale, zero;
    if (asym) {
        float lo = 0.0f, hi = 0.0f;
        for (int64_t j = 0; j < g; j++) {
            lo = fminf(lo, x[j]);
            hi = fmaxf(hi, x[j]);
        }
        uint16_t h = f16_up((hi - lo) / (float)qmax);
        scale = q_f16_to_f32(h);
        zero = scale ? roundf(-lo / scale) : 0.0f;
        put16(y, h);
        put16(y + 2, q_f32_to_f16(zero));
    } else {
        float amax = 0.0f;
        for (int64_t j = 0; j < g; j++) amax = fmaxf(amax, fabsf(x[j]));
        uint16_t h = f16_up(amax / (float)((1 << (bits - 1)) - 1));
        scale = q_f16_to_f32(h);
        zero = (float)(1 << (bits - 1));
        put16(y, h);
    }
    const float id = scale ? 1.0f / scale : 0.0f;
    for (int64_t j = 0; j < g; j++) {
        float q = roundf(x[j] * id) + zero;
        q = q < 0.0f ? 0.0f : q > (float)qmax ? (float)qmax : q;
        put_code(codes, j, bits, (unsigned)q);
    }
}

static void dequantize_gq(int dtype, const uint8_t *b, float *y) {
    const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    const int64_t g = LLMOPT_DTYPE_GQ_GROUP(dtype);
    const float scale = q_f16_to_f32(get16(b));
    const float zero = asym ? q_f16_to_f32(get16(b + 2)) : (float)(1 << (bits - 1));
    const uint8_t *codes = b + (asym ? 4 : 2);
    for (int64_t j = 0; j < g; j++) y[j] = scale * ((float)get_code(codes, j, bits) - zero);
}

/* ---- rows ---- */

static const llmopt_dtype_traits *quant_traits(int dtype, int64_t n) {
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    if (!t || !t->is_quantized || n < 0 || n % t->block_size != 0) return NULL;
    return t;
}

int q_quantize_row(int dtype, const float *x, void *blocks, int64_t n) {
    const llmopt_dtype_traits *t = quant_traits(dtype, n);
    if (!t || (n > 0 && (!x || !blocks))) return LLMOPT_EINVAL;
    uint8_t *y = blocks;
    for (int64_t i = 0; i < n; i += t->block_size, y += t->type_size, x += t->block_size) {
        switch (dtype) {
        case LLMOPT_DTYPE_Q8_0: quantize_q8_0(x, y); break;
        case LLMOPT_DTYPE_Q4_0: quantize_q4_0(x, y); break;
        case LLMOPT_DTYPE_Q4_1: quantize_q4_1(x, y); break;
        case LLMOPT_DTYPE_NF4: quantize_nf4(x, y); break;
        default: quantize_gq(dtype, x, y); break;
        }
    }
    return 0;
}

int q_dequantize_row(int dtype, const void *blocks, float *y, int64_t n) {
    const llmopt_dtype_traits *t = quant_traits(dtype, n);
    if (!t || (n > 0 && (!y || !blocks))) return LLMOPT_EINVAL;
    const uint8_t *b = blocks;
    for (int64_t i = 0; i < n; i += t->block_size, b += t->type_size, y += t->block_size) {
        switch (dtype) {
        case LLMOPT_DTYPE_Q8_0: dequantize_q8_0(b, y); break;
        case LLMOPT_DTYPE_Q4_0: dequantize_q4_0(b, y); break;
        case LLMOPT_DTYPE_Q4_1: dequantize_q4_1(b, y); break;
        case LLMOPT_DTYPE_NF4: dequantize_nf4(b, y); break;
        default: dequantize_gq(dtype, b, y); break;
        }
    }
    return 0;
}

/* ---- tensors ---- */

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static const char *dtype_name(int dtype) {
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    return t ? t->name : "an unknown dtype";
}

int q_quantize_tensor(const llmopt_tensor *w, int dtype, llmopt_tensor **out, llmopt_error *err) {
    if (!w || !out) return error_set(err, LLMOPT_EINVAL, "quantize: NULL tensor");
    *out = NULL;
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    if (!t || !t->is_quantized)
        return error_set(err, LLMOPT_EINVAL, "quantize: %s is not a block-quantized dtype", dtype_name(dtype));
    if (w->dtype != LLMOPT_DTYPE_F32 && w->dtype != LLMOPT_DTYPE_F16 && w->dtype != LLMOPT_DTYPE_BF16)
        return error_set(err, LLMOPT_EINVAL, "quantize: source is %s; f32, f16 or bf16 expected",
                         dtype_name(w->dtype));
    if (w->device != LLMOPT_DEVICE_CPU || w->ndim != 2 || !w->data)
        return error_set(err, LLMOPT_EINVAL, "quantize: a 2-D CPU weight is expected (got %d dims)", (int)w->ndim);
    const int64_t rows = w->shape[0], cols = w->shape[1];
    if (cols % t->block_size != 0)
        return error_set(err, LLMOPT_EINVAL,
                         "quantize to %s: row length %lld is not a multiple of the block size %lld",
                         t->name, (long long)cols, (long long)t->block_size);
    llmopt_tensor *q = rt_tensor_new(dtype, 2, w->shape);
    float *row = malloc((size_t)(cols > 0 ? cols : 1) * sizeof(float));
    if (!q || !row) {
        rt_tensor_unref(q);
        free(row);
        return error_set(err, LLMOPT_ENOMEM, "quantize: out of memory for a [%lld, %lld] %s tensor",
                         (long long)rows, (long long)cols, t->name);
    }
    const size_t row_bytes = (size_t)(cols / t->block_size) * t->type_size;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            int64_t i = r * cols + c;
            if (w->dtype == LLMOPT_DTYPE_F32) row[c] = ((const float *)w->data)[i];
            else if (w->dtype == LLMOPT_DTYPE_F16) row[c] = q_f16_to_f32(((const uint16_t *)w->data)[i]);
            else row[c] = bf16_to_f32(((const uint16_t *)w->data)[i]);
        }
        q_quantize_row(dtype, row, (uint8_t *)q->data + (size_t)r * row_bytes, cols);
    }
    free(row);
    *out = q;
    return 0;
}

int q_dequantize_tensor(const llmopt_tensor *w, llmopt_tensor **out, llmopt_error *err) {
    if (!w || !out) return error_set(err, LLMOPT_EINVAL, "dequantize: NULL tensor");
    *out = NULL;
    const llmopt_dtype_traits *t = rt_dtype_traits(w->dtype);
    if (!t || !t->is_quantized)
        return error_set(err, LLMOPT_EINVAL, "dequantize: %s is not a block-quantized dtype", dtype_name(w->dtype));
    if (w->device != LLMOPT_DEVICE_CPU || w->ndim != 2 || !w->data)
        return error_set(err, LLMOPT_EINVAL, "dequantize: a 2-D CPU weight is expected (got %d dims)", (int)w->ndim);
    const int64_t rows = w->shape[0], cols = w->shape[1];
    if (cols % t->block_size != 0)
        return error_set(err, LLMOPT_EINVAL,
                         "dequantize %s: row length %lld is not a multiple of the block size %lld",
                         t->name, (long long)cols, (long long)t->block_size);
    if (w->nbytes < rt_dtype_nbytes(w->dtype, 2, w->shape))
        return error_set(err, LLMOPT_EINVAL, "dequantize %s: %zu bytes of storage for a [%lld, %lld] tensor",
                         t->name, w->nbytes, (long long)rows, (long long)cols);
    llmopt_tensor *f = rt_tensor_new(LLMOPT_DTYPE_F32, 2, w->shape);
    if (!f) return error_set(err, LLMOPT_ENOMEM, "dequantize: out of memory");
    const size_t row_bytes = (size_t)(cols / t->block_size) * t->type_size;
    for (int64_t r = 0; r < rows; r++)
        q_dequantize_row(w->dtype, (const uint8_t *)w->data + (size_t)r * row_bytes, (float *)f->data + r * cols, cols);
    *out = f;
    return 0;
}
