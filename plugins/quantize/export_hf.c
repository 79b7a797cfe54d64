/* quantize.export: the input model in another tool's on-disk quantized format, written under
 * <stage>/<format>/ as a Hugging Face directory, from GQ(bits, group, sym|asym) weights W [out, in]
 * in groups of g along the inputs, b bits, p = 32 / b codes per int32.
 *
 * format gptq: AutoGPTQ's v1 checkpoint (checkpoint_format "gptq", what transformers + optimum
 * load; auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, QuantLinear.pack), b = 2, 3, 4 or 8:
 *   <layer>.qweight int32 [in * b / 32, out] column o is one little-endian bit string of the
 *                                           codes of (o, i), code i at bit b * i: with b | 32,
 *                                           bits b * (i % p) of qweight[i / p][o]; with b = 3,
 *                                           32 codes fill 3 words and codes 10 and 21 straddle
 *   <layer>.qzeros  int32 [in / g, out * b / 32] (zero - 1) & (2^b - 1) of (group, o), row
 *                                           `group` one bit string over o the same way
 *   <layer>.scales  f16   [in / g, out]
 *   <layer>.g_idx   int32 [in]              i / g (our groups are contiguous, also under act_order)
 * dequantized W[o][i] = scales[g_idx[i]][o] * (code(o, i) - (stored zero + 1)). v1 stores zero - 1
 * and adds the 1 back after masking, so a zero point of 0 has no spelling: an all-zero group is
 * written as scale 0, zero 1, codes 1 (the same zeros); any other group with zero 0 is shifted
 * to zero 1, codes + 1 when no code is 2^b - 1 (the same values), else refused.
 *
 * format awq: AutoAWQ's GEMM layout (awq/modules/linear/gemm.py, WQLinear_GEMM.from_linear;
 * version "gemm"), 4 bits only, zero points stored as they are:
 *   <layer>.qweight int32 [in, out / 8]     code of (o, i) in field k of qweight[i][o / 8], where
 *                                           o % 8 = AWQ_ORDER[k], AWQ_ORDER = 0 2 4 6 1 3 5 7
 *   <layer>.qzeros  int32 [in / g, out / 8] zero of (group, o), fields in the same order
 *   <layer>.scales  f16   [in / g, out]
 * dequantized W[o][i] = (code(o, i) - zero) * scales[i / g][o] (awq/utils/packing_utils.py).
 *
 * Other tensors (embeddings, norms, biases, the LM head) are written as they are. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "quantize.h"

#define A qz_api

typedef struct pack_shape {
    int bits, group, sym;
} pack_shape;

static uint16_t get16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

enum { FMT_GPTQ, FMT_AWQ };

/* AWQ_ORDER's inverse: the field of output o % 8 within its int32 */
static const int awq_field[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* ORs the b low bits of v into the bit string of 32-bit words w[0], w[stride], ... at bit pos. */
static void put_bits(uint32_t *w, int64_t stride, uint64_t pos, unsigned v, int b) {
    for (int k = 0; k < b; k++, pos++)
        if (v >> k & 1) w[(int64_t)(pos / 32) * stride] |= 1u << (pos % 32);
}

/* One GQ weight [rows = out, cols = in] into the format's tensors, set in m under base.*. */
static int pack_one(llmopt_stage_ctx *ctx, int fmt, llmopt_model *m, const char *name, const char *base,
                    const llmopt_tensor *t) {
    const int dtype = t->dtype, bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    const int64_t g = LLMOPT_DTYPE_GQ_GROUP(dtype), rows = t->shape[0], cols = t->shape[1], p = 32 / bits;
    const int64_t ng = cols / g;
    const unsigned qmax = (1u << bits) - 1;
    const size_t tsz = A->dtype_traits(dtype)->type_size, code_off = asym ? 4 : 2;
    const int gptq = fmt == FMT_GPTQ;
    /* whole int32 words of codes: along the inputs (gptq) and the outputs (both) */
    const int64_t unit = bits == 3 ? 32 : p;
    if ((gptq && cols % unit != 0) || rows % unit != 0)
        return A->set_error(ctx, LLMOPT_EINVAL,
                            "'%s' [%lld, %lld]: %s packs %d-bit codes into whole int32 words along the %s; %s must "
                            "be multiples of %lld",
                            name, (long long)rows, (long long)cols, gptq ? "AutoGPTQ" : "AutoAWQ", bits,
                            gptq ? "inputs and the outputs" : "outputs", gptq ? "both" : "the outputs", (long long)unit);
    const int64_t zw = rows * bits / 32;  /* qzeros words per group */
    int64_t sq[2] = {gptq ? cols * bits / 32 : cols, gptq ? rows : rows / p}, sz[2] = {ng, zw}, ss[2] = {ng, rows};
    int64_t si[1] = {cols};
    llmopt_tensor *qw = A->tensor_new(LLMOPT_DTYPE_I32, 2, sq), *qz = A->tensor_new(LLMOPT_DTYPE_I32, 2, sz);
    llmopt_tensor *sc = A->tensor_new(LLMOPT_DTYPE_F16, 2, ss), *gi = gptq ? A->tensor_new(LLMOPT_DTYPE_I32, 1, si) : NULL;
    unsigned *codes = malloc((size_t)g * sizeof *codes);
    int rc = qw && qz && sc && (gi || !gptq) && codes ? 0 : A->set_error(ctx, LLMOPT_ENOMEM, "out of memory packing '%s'", name);
    uint32_t *qwd = rc ? NULL : qw->data, *qzd = rc ? NULL : qz->data;
    uint16_t *scd = rc ? NULL : sc->data;
    if (!rc) {
        memset(qw->data, 0, qw->nbytes);
        memset(qz->data, 0, qz->nbytes);
        for (int64_t i = 0; gi && i < cols; i++) ((int32_t *)gi->data)[i] = (int32_t)(i / g);
    }
    for (int64_t o = 0; !rc && o < rows; o++)
        for (int64_t k = 0; !rc && k < ng; k++) {
            const uint8_t *blk = (const uint8_t *)t->data + (size_t)(o * ng + k) * tsz;
            uint16_t scale = get16(blk);
            float fscale, fzero;
            qz_gq_params(dtype, blk, &fscale, &fzero);
            if (!(fzero >= 0 && fzero <= (float)qmax && fzero == floorf(fzero)) || !isfinite(fscale)) {
                rc = A->set_error(ctx, LLMOPT_EFORMAT,
                                  "'%s': output %lld, group %lld: scale %g, zero point %g (a zero point is an integer in "
                                  "0..%u): not a block our quantizers write",
                                  name, (long long)o, (long long)k, fscale, fzero, qmax);
                break;
            }
            unsigned zero = (unsigned)fzero, top = 0;
            for (int64_t j = 0; j < g; j++) {
                codes[j] = qz_gq_code(blk + code_off, j, bits);
                if (codes[j] > top) top = codes[j];
            }
            if (gptq && (scale & 0x7fff) == 0) {  /* every weight is 0 (a +-0 scale): any zero, same codes */
                zero = 1;
                for (int64_t j = 0; j < g; j++) codes[j] = 1;
            } else if (gptq && zero == 0) {
                if (top == qmax)
                    rc = A->set_error(ctx, LLMOPT_EUNSUPPORTED,
                                      "'%s': output %lld, group %lld has zero point 0 and a code %u: AutoGPTQ's v1 format "
                                      "stores zero - 1 and cannot hold it (quantize with sym: true)",
                                      name, (long long)o, (long long)k, qmax);
                zero = 1;
                for (int64_t j = 0; j < g; j++) codes[j]++;
            }
            scd[k * rows + o] = scale;
            if (gptq) {
                put_bits(qzd + k * zw, 1, (uint64_t)(bits * o), (zero - 1) & qmax, bits);
                for (int64_t j = 0; j < g; j++) put_bits(qwd + o, rows, (uint64_t)(bits * (k * g + j)), codes[j], bits);
            } else {
                const int shift = 4 * awq_field[o % 8];
                qzd[k * (rows / 8) + o / 8] |= zero << shift;
                for (int64_t j = 0; j < g; j++) qwd[(k * g + j) * (rows / 8) + o / 8] |= (uint32_t)codes[j] << shift;
            }
        }
    free(codes);
    char nm[512];
    const char *suffix[4] = {"qweight", "qzeros", "scales", "g_idx"};
    llmopt_tensor *ts[4] = {qw, qz, sc, gi};
    if (!rc) rc = A->model_remove(m, name) ? A->set_error(ctx, LLMOPT_EFAIL, "cannot remove '%s'", name) : 0;
    for (int k = 0; !rc && k < (gptq ? 4 : 3); k++) {
        if (snprintf(nm, sizeof nm, "%s.%s", base, suffix[k]) >= (int)sizeof nm)
            rc = A->set_error(ctx, LLMOPT_EINVAL, "tensor name '%s' is too long", name);
        else if (A->model_set(m, nm, ts[k]))
            rc = A->set_error(ctx, LLMOPT_ENOMEM, "cannot set '%s'", nm);
    }
    for (int k = 0; k < 4; k++) A->tensor_unref(ts[k]);
    return rc;
}

/* The method record (record.c) of the stage that quantized the model, parsed (NULL if none). */
static json_t *stage_record(const llmopt_model *in) {
    char *text = A->model_cfg_get_json(in, "quantization_config");
    json_t *rec = text ? json_loads(text, 0, NULL) : NULL;
    A->mem_free(text);
    return rec;
}

/* GPTQConfig's quantization_config (and quantize_config.json's content) for the export. */
static json_t *gptq_config(const llmopt_model *in, const pack_shape *sh) {
    json_t *qc = json_object(), *rec = stage_record(in);
    json_object_set_new(qc, "bits", json_integer(sh->bits));
    json_object_set_new(qc, "group_size", json_integer(sh->group));
    json_object_set_new(qc, "sym", json_boolean(sh->sym));
    const char *method = json_string_value(json_object_get(rec, "method"));
    int gptq = method && strcmp(method, "gptq") == 0;
    const char *keys[] = {"damp_percent", "desc_act", "static_groups", "true_sequential"};
    for (int k = 0; k < 4; k++) {
        json_t *v = gptq ? json_object_get(rec, keys[k]) : NULL;
        /* not GPTQ's output (rtn, awq): no reordering; and no damp_percent, which transformers'
         * GPTQConfig wants strictly inside (0, 1) */
        if (v || k > 0) json_object_set_new(qc, keys[k], v ? json_incref(v) : json_false());
    }
    json_object_set_new(qc, "model_name_or_path", json_null());
    json_object_set_new(qc, "model_file_base_name", json_string("model"));
    json_object_set_new(qc, "quant_method", json_string("gptq"));
    json_object_set_new(qc, "checkpoint_format", json_string("gptq"));
    json_t *meta = json_object();
    json_object_set_new(meta, "quantizer", json_pack("[s]", "llmopt-quantize:0.1.0"));
    json_object_set_new(meta, "method", json_string(method ? method : "unknown"));
    json_object_set_new(qc, "meta", meta);
    json_decref(rec);
    return qc;
}

/* AwqConfig's quantization_config: zero_point is true even for sym weights, whose zero point
 * 2^(bits-1) is stored in qzeros like any other. */
static json_t *awq_config(const llmopt_model *in, const pack_shape *sh) {
    json_t *rec = stage_record(in);
    const char *method = json_string_value(json_object_get(rec, "method"));
    json_t *qc = json_pack("{s:s, s:i, s:i, s:b, s:s, s:n}", "quant_method", "awq", "bits", sh->bits, "group_size",
                           sh->group, "zero_point", 1, "version", "gemm", "modules_to_not_convert");
    json_object_set_new(qc, "llmopt_method", json_string(method ? method : "unknown"));
    json_decref(rec);
    return qc;
}

static int export_packed(llmopt_stage_ctx *ctx, int fmt, const llmopt_model *in, const char *dir) {
    const char *tool = fmt == FMT_GPTQ ? "AutoGPTQ" : "AutoAWQ";
    pack_shape sh = {0, 0, 0};
    size_t n_q = 0;
    int rc = 0;
    /* every quantized tensor must be a GQ linear weight of one bits/group_size (one layer config) */
    for (size_t i = 0; !rc && i < A->model_n_tensors(in); i++) {
        const char *name = A->model_tensor_name(in, i);
        const llmopt_tensor *t = A->model_get(in, name);
        const llmopt_dtype_traits *tr = A->dtype_traits(t->dtype);
        if (!tr->is_quantized) continue;
        size_t len = strlen(name);
        const int bits = LLMOPT_DTYPE_IS_GQ(t->dtype) ? LLMOPT_DTYPE_GQ_BITS(t->dtype) : 0;
        if (!bits)
            rc = A->set_error(ctx, LLMOPT_EUNSUPPORTED,
                              "'%s' is %s; %s's format holds group-quantized weights (quantize.gptq, quantize.awq "
                              "or quantize.rtn with format: gq)", name, tr->name, tool);
        else if (t->ndim != 2 || len < 8 || strcmp(name + len - 7, ".weight") != 0)
            rc = A->set_error(ctx, LLMOPT_EUNSUPPORTED, "'%s': only 2-D '*.weight' tensors become %s layers", name, tool);
        else if (fmt == FMT_GPTQ && bits != 2 && bits != 3 && bits != 4 && bits != 8)
            rc = A->set_error(ctx, LLMOPT_EUNSUPPORTED, "'%s' is %s: AutoGPTQ packs 2, 3, 4 or 8 bits", name, tr->name);
        else if (fmt == FMT_AWQ && bits != 4)
            rc = A->set_error(ctx, LLMOPT_EUNSUPPORTED, "'%s' is %s: AutoAWQ's GEMM layout is 4-bit only", name, tr->name);
        else if (n_q && (sh.bits != bits || sh.group != LLMOPT_DTYPE_GQ_GROUP(t->dtype)))
            rc = A->set_error(ctx, LLMOPT_EUNSUPPORTED, "'%s' is %s, other weights %d bits in groups of %d: a %s "
                              "checkpoint has one bits and group_size", name, tr->name, sh.bits, sh.group, tool);
        if (!rc) {
            sh = (pack_shape){bits, LLMOPT_DTYPE_GQ_GROUP(t->dtype), (n_q ? sh.sym : 1) && !LLMOPT_DTYPE_GQ_ASYM(t->dtype)};
            n_q++;
        }
    }
    if (!rc && n_q == 0)
        rc = A->set_error(ctx, LLMOPT_EINVAL, "the input has no group-quantized weights to export (quantize it first)");
    if (rc) return rc;
    llmopt_model *m = A->model_clone(in);
    if (!m) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < A->model_n_tensors(in); i++) {
        const char *name = A->model_tensor_name(in, i);
        const llmopt_tensor *t = A->model_get(in, name);
        if (!A->dtype_traits(t->dtype)->is_quantized) continue;
        char base[256];
        if (strlen(name) - 7 >= sizeof base) {
            rc = A->set_error(ctx, LLMOPT_EINVAL, "tensor name '%s' is too long", name);
            break;
        }
        snprintf(base, sizeof base, "%.*s", (int)(strlen(name) - 7), name);
        rc = pack_one(ctx, fmt, m, name, base, t);
        A->progress(ctx, (double)(i + 1) / (double)A->model_n_tensors(in), "packing %s", name);
    }
    json_t *qc = fmt == FMT_GPTQ ? gptq_config(in, &sh) : awq_config(in, &sh);
    char *text = qc ? json_dumps(qc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(qc);
    if (!rc && !text) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    /* transformers reads config.json's quantization_config; AutoGPTQ's from_quantized reads
     * quantize_config.json */
    if (!rc && A->model_cfg_set_json(m, "quantization_config", text))
        rc = A->set_error(ctx, LLMOPT_ENOMEM, "cannot set quantization_config");
    if (!rc && fmt == FMT_GPTQ && A->model_set_file(m, "quantize_config.json", text, strlen(text)))
        rc = A->set_error(ctx, LLMOPT_ENOMEM, "cannot add quantize_config.json");
    free(text);
    if (!rc) rc = A->model_save(ctx, m, dir);
    A->model_unref(m);
    if (!rc) {
        A->metric(ctx, "layers", (double)n_q, NULL, LLMOPT_BETTER_NONE);
        A->metric(ctx, "bits", sh.bits, "bits", LLMOPT_BETTER_NONE);
    }
    return rc;
}

static int export_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    const char *format = A->param_str(ctx, "format");
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/%s", A->stage_dir(ctx), format) >= (int)sizeof dir)
        return A->set_error(ctx, LLMOPT_EINVAL, "stage directory path too long");
    return export_packed(ctx, strcmp(format, "awq") == 0 ? FMT_AWQ : FMT_GPTQ, in, dir);
}

static const llmopt_param_desc params[] = {
    {.name = "format", .type = LLMOPT_PARAM_ENUM, .default_value = "gptq", .choices = "gptq|awq",
     .doc = "gptq: AutoGPTQ's v1 checkpoint (2, 3, 4 or 8 bits); awq: AutoAWQ's GEMM layout (4 bits)"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "a model with GQ weights"}};

const llmopt_stage_desc qz_export_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "quantize.export",
    .summary = "write a GQ-quantized model in AutoGPTQ's or AutoAWQ's on-disk format",
    .doc = "Writes <stage>/<format>/, a Hugging Face directory with the tokenizer. gptq: config.json with\n"
           "quantization_config {quant_method: gptq, bits, group_size, sym, desc_act, damp_percent, ...,\n"
           "checkpoint_format: gptq} (from what the quantize stage recorded), quantize_config.json, and\n"
           "each GQ weight as <layer>.qweight/.qzeros/.scales/.g_idx (AutoGPTQ v1 packing, zero points\n"
           "minus one); 2, 3, 4 or 8 bits. awq: quantization_config {quant_method: awq, bits: 4, group_size,\n"
           "zero_point: true, version: gemm} and <layer>.qweight/.qzeros/.scales in WQLinear_GEMM's\n"
           "layout. One bits/group_size for the whole model. Metrics: layers, bits.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = export_run,
};
