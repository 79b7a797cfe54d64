/* Linear layers: x W^T for a checkpoint weight W [N, K] (rows = outputs). A float weight is a
 * MatMul on its [K, N] values (GPT-2's Conv1D stores them so; a Linear's are transposed here).
 * A block-quantized weight with an exact counterpart in onnxruntime's MatMulNBits contrib op
 * (com.microsoft: B uint8 [N, K / block, block * bits / 8] with codes packed low bits first,
 * scales float [N * K / block], optional packed uint8 zero points, default 2^(bits-1); y =
 * x ((q - zero) scale)^T) stays quantized: 4-bit GQ with a power-of-two group of 16 or more and
 * ggml's Q4_0. onnxruntime's CPU kernel (1.20) takes 4-bit codes only, so 8-bit weights (GQ8,
 * Q8_0) and every other quantized type are dequantized to float32 MatMuls. */
#include <stdio.h>
#include <string.h>

#include "onnx_export.h"

#define A ox_api

enum { NB_NONE, NB_GQ, NB_Q4_0 };

static float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    if (e == 0 && man == 0) u = sign;
    else if (e == 0) { /* subnormal: normalise */
        int sh = 0;
        uint32_t mm = man;
        while (!(mm & 0x400)) mm <<= 1, sh++;
        u = sign | (uint32_t)(113 - sh) << 23 | (mm & 0x3ff) << 13;
    } else if (e == 31) u = sign | 0x7f800000u | man << 13;
    else u = sign | (e + 112) << 23 | man << 13;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int nbits_form(int dtype, int *bits, int64_t *block, int *asym) {
    if (dtype == LLMOPT_DTYPE_Q4_0) return *bits = 4, *block = 32, *asym = 0, NB_Q4_0;
    if (!LLMOPT_DTYPE_IS_GQ(dtype)) return NB_NONE;
    const int64_t gs = LLMOPT_DTYPE_GQ_GROUP(dtype);
    *bits = LLMOPT_DTYPE_GQ_BITS(dtype), *block = gs, *asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    if (*bits != 4 || gs < 16 || (gs & (gs - 1)) != 0) return NB_NONE;
    return NB_GQ;
}

/* MatMulNBits' B, scales and zero points of a 4-bit weight in one of the forms above */
static const char *matmul_nbits(llmopt_stage_ctx *ctx, ox_graph *g, const char *name, const llmopt_tensor *t, int form,
                                int bits, int64_t block, int asym, int accuracy, const char *x) {
    const llmopt_dtype_traits *tr = A->dtype_traits(t->dtype);
    const int64_t N = t->shape[0], K = t->shape[1], kb = K / block, blob = block * bits / 8;
    const int64_t zp_row = (kb * bits + 7) / 8; /* packed zero-point bytes of a row */
    uint8_t *B = ox_alloc(g, (size_t)(N * kb * blob)), *zp = asym ? ox_alloc(g, (size_t)(N * zp_row)) : NULL;
    float *scales = ox_alloc(g, (size_t)(N * kb) * sizeof *scales);
    if (!B || !scales || (asym && !zp)) {
        A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        return NULL;
    }
    const uint8_t *src = t->data;
    for (int64_t r = 0; r < N; r++)
        for (int64_t b = 0; b < kb; b++) {
            const uint8_t *blk = src + (size_t)(r * kb + b) * tr->type_size;
            uint8_t *dst = B + (r * kb + b) * blob;
            uint16_t h;
            memcpy(&h, blk, 2);
            scales[r * kb + b] = f16_to_f32(h);
            if (form == NB_GQ) { /* f16 scale, (asym) f16 zero, codes little-endian: MatMulNBits' packing */
                memcpy(dst, blk + (asym ? 4 : 2), (size_t)blob);
                if (asym) { /* two 4-bit zero points a byte, the even block's low */
                    memcpy(&h, blk + 2, 2);
                    const unsigned z = (unsigned)f16_to_f32(h); /* an integer code (host/runtime/quant.h) */
                    zp[r * zp_row + b / 2] |= (uint8_t)(b % 2 ? z << 4 : z);
                }
            } else { /* Q4_0, ggml's: byte j holds elements j (low) and j + 16 (high) */
                for (int64_t i = 0; i < 32; i++) {
                    const uint8_t qb = blk[2 + (i % 16)], q = i < 16 ? (qb & 0x0f) : (qb >> 4);
                    dst[i / 2] |= (uint8_t)(i % 2 ? q << 4 : q);
                }
            }
        }
    char nm[512];
    const int64_t b_dims[3] = {N, kb, blob}, s_dims[1] = {N * kb}, z_dims[1] = {N * zp_row};
    snprintf(nm, sizeof nm, "%s.qweight", name);
    const char *bq = ox_weight_u8(g, nm, B, 3, b_dims);
    snprintf(nm, sizeof nm, "%s.scales", name);
    const char *sc = ox_weight(g, nm, scales, 1, s_dims), *zq = NULL;
    if (asym) {
        snprintf(nm, sizeof nm, "%s.qzeros", name);
        zq = ox_weight_u8(g, nm, zp, 1, z_dims);
    }
    const char *y = zq ? ox_op(g, "MatMulNBits", "qmm", x, bq, sc, zq, NULL) : ox_op(g, "MatMulNBits", "qmm", x, bq, sc, NULL);
    ox_domain_last(g, "com.microsoft");
    ox_attr_int(g, "K", K);
    ox_attr_int(g, "N", N);
    ox_attr_int(g, "bits", bits);
    ox_attr_int(g, "block_size", block);
    if (accuracy) ox_attr_int(g, "accuracy_level", accuracy); /* 4: x rounded to int8 per block, integer dots */
    return y;
}

const char *ox_linear(llmopt_stage_ctx *ctx, const llmopt_model *m, const ox_opts *o, ox_graph *g, ox_keep *keep,
                      const char *name, const char *x, const char *bias) {
    const llmopt_tensor *t = A->model_get(m, name);
    if (!t) {
        A->set_error(ctx, LLMOPT_EINVAL, "the model has no tensor '%s'", name);
        return NULL;
    }
    int bits = 0, asym = 0;
    int64_t block = 0;
    const int form = t->device == LLMOPT_DEVICE_CPU && t->ndim == 2 ? nbits_form(t->dtype, &bits, &block, &asym) : NB_NONE;
    const char *y;
    if (form != NB_NONE && t->shape[1] % block == 0) {
        y = matmul_nbits(ctx, g, name, t, form, bits, block, asym, o->int8_compute ? 4 : 0, x);
    } else {
        /* float: GPT-2's Conv1D values are [K, N] as they are stored; everything else [N, K] */
        const int in_out = A->model_linear_layout(m, name) == LLMOPT_W_IN_OUT && !A->dtype_traits(t->dtype)->is_quantized;
        const char *w = in_out ? ox_tensor(ctx, m, g, keep, name) : ox_tensor_t(ctx, m, g, keep, name);
        y = w ? ox_op(g, "MatMul", "mm", x, w, NULL) : NULL;
    }
    return y && bias ? ox_op(g, "Add", "biased", y, bias, NULL) : y;
}
