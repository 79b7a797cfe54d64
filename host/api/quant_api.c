/* The quantization part of the host API table: a quantize stage reaches the reference
 * quantizers (runtime/quant.c), dtype conversion, the activations a calibration set makes at
 * every linear layer's input (through the transformer's capture hook), and the GGUF writer. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quant_api.h"
#include "../runtime/gguf.h"
#include "../runtime/quant.h"
#include "../runtime/runtime.h"
#include "../runtime/transformer.h"
#include "../sched/stage_ctx.h"
#include "../util/log.h"

static int fail(llmopt_stage_ctx *ctx, const llmopt_error *e) {
    int status = e->status ? e->status : LLMOPT_EFAIL;
    if (ctx) {
        ctx->err = *e;
        ctx->err.status = status;
    }
    return status;
}

/* ---- dtype conversion ---- */

static int is_float(int dt) { return dt == LLMOPT_DTYPE_F32 || dt == LLMOPT_DTYPE_F16 || dt == LLMOPT_DTYPE_BF16; }

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* round to nearest even; NaN stays a (quiet) NaN */
static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static float load_f(const void *p, int dt, int64_t i) {
    if (dt == LLMOPT_DTYPE_F32) return ((const float *)p)[i];
    if (dt == LLMOPT_DTYPE_F16) return q_f16_to_f32(((const uint16_t *)p)[i]);
    return bf16_to_f32(((const uint16_t *)p)[i]);
}

static void store_f(void *p, int dt, int64_t i, float v) {
    if (dt == LLMOPT_DTYPE_F32) ((float *)p)[i] = v;
    else if (dt == LLMOPT_DTYPE_F16) ((uint16_t *)p)[i] = q_f32_to_f16(v);
    else ((uint16_t *)p)[i] = f32_to_bf16(v);
}

/* Between f32, f16 and bf16, element by element. */
static int convert_float(const llmopt_tensor *t, int dtype, llmopt_tensor **out, llmopt_error *err) {
    llmopt_tensor *o = rt_tensor_new(dtype, t->ndim, t->shape);
    if (!o) return error_set(err, LLMOPT_ENOMEM, "convert: out of memory");
    int64_t n = rt_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) store_f(o->data, dtype, i, load_f(t->data, t->dtype, i));
    *out = o;
    return 0;
}

static int api_tensor_convert(llmopt_stage_ctx *ctx, const llmopt_tensor *t, int dtype, llmopt_tensor **out) {
    llmopt_error err = {0};
    if (!t || !out) {
        error_set(&err, LLMOPT_EINVAL, "convert: NULL tensor");
        return fail(ctx, &err);
    }
    *out = NULL;
    const llmopt_dtype_traits *src = rt_dtype_traits(t->dtype), *dst = rt_dtype_traits(dtype);
    if (!src || !dst) {
        error_set(&err, LLMOPT_EINVAL, "convert: unknown dtype");
        return fail(ctx, &err);
    }
    if (t->device != LLMOPT_DEVICE_CPU || !t->data) {
        error_set(&err, LLMOPT_EUNSUPPORTED, "convert: only CPU tensors can be converted");
        return fail(ctx, &err);
    }
    if (t->dtype == dtype) {
        *out = (llmopt_tensor *)rt_tensor_ref(t);
        return 0;
    }
    int rc;
    if (is_float(t->dtype) && is_float(dtype)) {
        rc = convert_float(t, dtype, out, &err);
    } else if (is_float(t->dtype) && dst->is_quantized) {
        rc = q_quantize_tensor(t, dtype, out, &err);
    } else if (src->is_quantized && is_float(dtype)) {
        llmopt_tensor *f = NULL;
        rc = q_dequantize_tensor(t, &f, &err);
        if (!rc && dtype != LLMOPT_DTYPE_F32) {
            rc = convert_float(f, dtype, out, &err);
            rt_tensor_unref(f);
        } else if (!rc) {
            *out = f;
        }
    } else {
        rc = error_set(&err, LLMOPT_EUNSUPPORTED, "convert: %s to %s is not supported", src->name, dst->name);
    }
    return rc ? fail(ctx, &err) : 0;
}

/* ---- calibration ---- */

typedef struct capture {
    const llmopt_model *m;
    int (*fn)(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols);
    void *arg;
    int status;           /* fn's non-zero return: the plugin has set the error */
    size_t last;          /* index of the last weight found: calls come in checkpoint order */
} capture;

/* The checkpoint name of a weight tensor of the model, by identity. */
static const char *weight_name(capture *c, const llmopt_tensor *w) {
    size_t n = rt_model_n_tensors(c->m);
    for (size_t k = 0; k < n; k++) {
        size_t i = (c->last + k) % n;
        const char *name = rt_model_tensor_name(c->m, i);
        if (rt_model_get(c->m, name) == w) {
            c->last = i;
            return name;
        }
    }
    return NULL;
}

static int on_matmul(void *arg, const llmopt_tensor *w, const float *x, int rows, int cols) {
    capture *c = arg;
    const char *name = weight_name(c, w);
    if (!name) return 0;  /* not a named weight of the model */
    c->status = c->fn(c->arg, name, x, rows, cols);
    return c->status;
}

static int api_calibrate(llmopt_stage_ctx *ctx, const llmopt_model *m, const int32_t *tokens, size_t n_seq,
                         size_t seq_len,
                         int (*fn)(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols),
                         void *arg) {
    llmopt_error err = {0};
    if (!m || !fn || (n_seq && !tokens) || n_seq == 0 || seq_len == 0) {
        error_set(&err, LLMOPT_EINVAL, "calibrate: no calibration tokens (%zu sequences of %zu)", n_seq, seq_len);
        return fail(ctx, &err);
    }
    tf_model *tm = NULL;
    tf_session *s = NULL;
    /* the session only reads the model; CPU kernels, whatever the pipeline's device */
    if (tf_model_new((llmopt_model *)m, LLMOPT_DEVICE_CPU, &tm, &err) != 0) return fail(ctx, &err);
    const arch_config *c = tf_model_arch(tm);
    if (seq_len > (size_t)c->n_ctx) {
        tf_model_free(tm);
        error_set(&err, LLMOPT_EINVAL, "calibrate: sequences of %zu tokens exceed the model's context of %d", seq_len,
                  c->n_ctx);
        return fail(ctx, &err);
    }
    if (tf_session_new(tm, (int)seq_len, &s, &err) != 0) {
        tf_model_free(tm);
        return fail(ctx, &err);
    }
    capture cap = {.m = m, .fn = fn, .arg = arg};
    tf_model_set_capture(tm, on_matmul, &cap);
    int rc = 0;
    for (size_t i = 0; !rc && i < n_seq; i++) {
        if (ctx && ctx->cancel && atomic_load(ctx->cancel)) {
            rc = error_set(&err, LLMOPT_ECANCELED, "calibration cancelled after %zu of %zu sequences", i, n_seq);
            break;
        }
        tf_session_rewind(s, 0);
        rc = tf_forward(s, tokens + i * seq_len, (int)seq_len, NULL, 0, &err);
    }
    tf_model_set_capture(tm, NULL, NULL);
    tf_session_free(s);
    tf_model_free(tm);
    if (rc && cap.status) return cap.status;  /* fn reported its own error */
    return rc ? fail(ctx, &err) : 0;
}

/* Whether n rows of `cols` floats may be kept: at most LLMOPT_CALIB_STASH_MB (when set) or a
 * quarter of physical memory. */
static int stash_fits(size_t n, size_t cols) {
    double bytes = (double)n * (double)cols * sizeof(float), cap;
    const char *env = getenv("LLMOPT_CALIB_STASH_MB");
    if (env && *env) {
        cap = strtod(env, NULL) * 1e6;
    } else {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        cap = pages > 0 && psz > 0 ? (double)pages * (double)psz / 4 : 1e9;
    }
    return bytes <= cap;
}

/* fn on one sequence's input rows to the step's nw weights; fn's status (it set the error) */
static int report_inputs(capture *cap, const llmopt_tensor *const *w, int nw, const float *buf, size_t rows,
                         size_t cols) {
    for (int k = 0; k < nw; k++) {
        const char *name = weight_name(cap, w[k]);
        if (name && (cap->status = cap->fn(cap->arg, name, buf, (int64_t)rows, (int64_t)cols))) return cap->status;
    }
    return 0;
}

static int api_calibrate_sequential(llmopt_stage_ctx *ctx, llmopt_model *m, const int32_t *tokens, size_t n_seq,
                                    size_t seq_len,
                                    int (*fn)(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols),
                                    int (*block_done)(void *arg, int block), void *arg) {
    llmopt_error err = {0};
    if (!m || !fn || !block_done || !tokens || n_seq == 0 || seq_len == 0) {
        error_set(&err, LLMOPT_EINVAL, "calibrate: no calibration tokens (%zu sequences of %zu)", n_seq, seq_len);
        return fail(ctx, &err);
    }
    tf_model *tm = NULL;
    tf_session *s = NULL;
    float *H = NULL, *normed = NULL;
    if (tf_model_new(m, LLMOPT_DEVICE_CPU, &tm, &err) != 0) return fail(ctx, &err);
    const arch_config *c = tf_model_arch(tm);
    const size_t row = seq_len * (size_t)c->n_embd;
    int rc = 0;
    if (seq_len > (size_t)c->n_ctx)
        rc = error_set(&err, LLMOPT_EINVAL, "calibrate: sequences of %zu tokens exceed the model's context of %d",
                       seq_len, c->n_ctx);
    if (!rc && n_seq > SIZE_MAX / sizeof(float) / row)
        rc = error_set(&err, LLMOPT_ENOMEM, "calibrate: %zu x %zu hidden states do not fit in memory", n_seq, row);
    if (!rc && (!(H = malloc(n_seq * row * sizeof *H)) ||
                !(normed = malloc(row * sizeof *normed))))
        rc = error_set(&err, LLMOPT_ENOMEM, "calibrate: out of memory for %zu x %zu tokens of hidden states (%.0f MB)",
                       n_seq, seq_len, (double)(n_seq * row * sizeof *H) / 1e6);
    if (!rc) rc = tf_session_new(tm, (int)seq_len, &s, &err);
    for (size_t i = 0; !rc && i < n_seq; i++) {
        tf_session_rewind(s, 0);
        rc = tf_embed(s, tokens + i * seq_len, (int)seq_len, H + i * row, &err);
    }
    capture cap = {.m = m, .fn = fn, .arg = arg};
    int user = 0; /* fn or block_done failed: they set the error */
    const size_t n_tok = n_seq * seq_len, C = (size_t)c->n_embd, F = (size_t)c->n_ff;
    const size_t Q = (size_t)c->n_head * (size_t)c->head_dim, CA = Q > C ? Q : C;
    /* the activations between steps, all sequences' (A: ln outputs and attention, B: the MLP's
     * hidden), or one sequence's when they would take too much memory (then recomputed) */
    const int stash = !rc && stash_fits(n_tok, CA + F);
    float *A = NULL, *B = NULL;
    if (!rc && (!(A = malloc((stash ? n_tok : seq_len) * CA * sizeof *A)) ||
                !(B = malloc((stash ? n_tok : seq_len) * F * sizeof *B))))
        rc = error_set(&err, LLMOPT_ENOMEM, "calibrate: out of memory for the activations of %zu tokens",
                       stash ? n_tok : seq_len);
    if (!rc)
        log_msg(LLMOPT_LOG_DEBUG, "calibrate: %s the activations between steps (%.0f MB for all)",
                stash ? "keeping" : "recomputing", (double)(n_tok * (CA + F) * sizeof(float)) / 1e6);
    int step_no = 0;
    for (int l = 0; !rc && l < c->n_layer; l++) {
        for (int st = 0; !rc && st < TF_STEPS; st++) {
            const llmopt_tensor *w[3];
            const int nw = tf_block_step_weights(tm, l, st, w);
            const int mlp = st == TF_STEP_MLP || st == TF_STEP_MLP_OUT;
            const size_t cols = mlp ? F : st == TF_STEP_ATTN ? Q : C;
            /* the step's activations: sequence i's at acts + i * seq_len * stride when kept */
            float *const acts = mlp ? B : A;
            const size_t stride = mlp ? F : CA;
            for (size_t i = 0; !rc && i < n_seq; i++) {
                if (ctx && ctx->cancel && atomic_load(ctx->cancel)) {
                    rc = error_set(&err, LLMOPT_ECANCELED, "calibration cancelled in block %d", l);
                    break;
                }
                float *x = H + i * row;
                float *buf = stash ? acts + i * seq_len * stride : acts;
                tf_session_rewind(s, 0);
                /* without the stash, the step before an *_OUT step runs again for this sequence */
                if (!stash && (st == TF_STEP_ATTN_OUT || st == TF_STEP_MLP_OUT))
                    rc = tf_block_step(s, l, st - 1, x, buf, (int)seq_len, &err);
                if (!rc) rc = tf_block_step(s, l, st, x, buf, (int)seq_len, &err);
                if (!rc && !stash) rc = report_inputs(&cap, w, nw, buf, seq_len, cols);
            }
            /* kept activations: fn sees them after the step's forward, the same calls in the same
             * order as when recomputed (so the statistics are the same bits either way), back to
             * back. GPTQ's fn runs a multi-threaded ssyrk; between forward passes, OpenBLAS's
             * threads spun after each call while the host's pool ran the next sequence (GPT-2
             * 124M: 139 s against 109 s with the calls together) */
            for (size_t i = 0; !rc && stash && i < n_seq; i++)
                rc = report_inputs(&cap, w, nw, acts + i * seq_len * stride, seq_len, cols);
            if (rc) {
                user = cap.status != 0;
                break;
            }
            if (!nw) continue;
            if ((rc = block_done(arg, step_no++)) != 0) {
                user = 1;
                break;
            }
            /* the group's new weights make the next group's inputs */
            rc = tf_model_rebind_weights(tm, l, &err);
        }
    }
    /* the LM head's inputs */
    for (size_t i = 0; !rc && i < n_seq; i++) {
        const char *head = weight_name(&cap, tf_model_lm_head(tm));
        tf_session_rewind(s, 0);
        rc = tf_final_norm(s, H + i * row, (int)seq_len, normed, &err);
        if (!rc && head && (cap.status = fn(arg, head, normed, (int64_t)seq_len, c->n_embd))) rc = cap.status, user = 1;
    }
    if (!rc && (rc = block_done(arg, step_no)) != 0) user = 1;
    free(A);
    free(B);
    tf_session_free(s);
    tf_model_free(tm);
    free(H);
    free(normed);
    if (rc && user) return rc;
    return rc ? fail(ctx, &err) : 0;
}

/* ---- export ---- */

static int api_gguf_write(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *path) {
    llmopt_error err = {0};
    return gguf_write(m, path, &err) ? fail(ctx, &err) : 0;
}

void quant_api_fill(llmopt_host_api *api) {
    api->quantize_row = q_quantize_row;
    api->dequantize_row = q_dequantize_row;
    api->tensor_convert = api_tensor_convert;
    api->calibrate = api_calibrate;
    api->calibrate_sequential = api_calibrate_sequential;
    api->gguf_write = api_gguf_write;
}
