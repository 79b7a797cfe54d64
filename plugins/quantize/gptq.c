/* quantize.gptq: GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
 * Generative Pre-trained Transformers", Algorithm 1). Per linear layer with inputs X (from the
 * calibration set), H = 2 X X^T / n; columns are quantized one at a time and the error of each
 * is spread over the columns not yet quantized through the upper Cholesky factor of H^-1, in
 * lazy batches of `block` columns. Groups: without act_order a group's scale is chosen when the
 * quantizer reaches its first column, from the weights as updated so far (the reference
 * implementation); with act_order (columns by decreasing H_ii) the groups stay contiguous in the
 * original order, so their scales are chosen up front from the unquantized weights (AutoGPTQ's
 * static_groups): the GQ format has no per-column group index. sequential (the default, as the
 * paper and AutoGPTQ with true_sequential): group by group in forward order, each group's H from
 * the inputs the already quantized groups make; sequential: false takes every H from the
 * unquantized model in one pass. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "params.h"
#include "quantize.h"

#define A qz_api

typedef struct diag_idx {
    double d;
    int64_t i;
} diag_idx;

static int by_diag_desc(const void *a, const void *b) {
    const diag_idx *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? 1 : -1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* The quantization loop of the paper (Algorithm 1) for the rows [r0, r1) of W: rows are
 * independent given H^-1 (each row's error only updates its own later columns), so chunks of
 * rows run on the host's compute threads, each with its own lazy batches. */
typedef struct gptq_job {
    float *Wp;
    const float *Hinv;
    const int64_t *perm;
    uint8_t *out;
    int64_t cols, g, bpr, B;
    int bits, qmax, dtype, act_order;
    size_t tsz, code_off;
    atomic_int failed;
} gptq_job;

static void gptq_rows(void *arg, int64_t r0, int64_t r1) {
    gptq_job *j = arg;
    const int64_t cols = j->cols, g = j->g, bpr = j->bpr, B = j->B, nr = r1 - r0;
    const float *Hinv = j->Hinv;
    float *Err = malloc((size_t)(nr * B) * sizeof *Err);
    if (!Err) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t i1 = 0; i1 < cols; i1 += B) {
        int64_t i2 = i1 + B < cols ? i1 + B : cols, cnt = i2 - i1;
        for (int64_t i = i1; i < i2; i++) {
            const float d = Hinv[i * cols + i];
            const int64_t oc = j->perm[i], grp = oc / g;
            if (!j->act_order && i % g == 0) /* the group's scale from the weights as updated so far */
                for (int64_t r = r0; r < r1; r++)
                    A->quantize_row(j->dtype, j->Wp + r * cols + i, j->out + (size_t)(r * bpr + i / g) * j->tsz, g);
            for (int64_t r = r0; r < r1; r++) {
                uint8_t *blk = j->out + (size_t)(r * bpr + grp) * j->tsz;
                float scale, off;
                qz_gq_params(j->dtype, blk, &scale, &off);
                float *wr = j->Wp + r * cols, w = wr[i], q = off;
                if (scale != 0) {
                    q = roundf(w / scale) + off;
                    q = q < 0 ? 0 : q > (float)j->qmax ? (float)j->qmax : q;
                }
                qz_gq_set_code(blk + j->code_off, oc % g, j->bits, (unsigned)q);
                const float e = (w - scale * (q - off)) / d;
                Err[(r - r0) * cnt + (i - i1)] = e;
                const float *hr = Hinv + i * cols;
                for (int64_t k = i + 1; k < i2; k++) wr[k] -= e * hr[k];
            }
        }
        if (i2 < cols) /* lazy batch update: W[:, i2:] -= Err · Hinv[i1:i2, i2:] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)(cols - i2), (int)cnt, -1.0f, Err,
                        (int)cnt, Hinv + i1 * cols + i2, (int)cols, 1.0f, j->Wp + r0 * cols + i2, (int)cols);
    }
    free(Err);
}

int qz_gptq_layer(const float *W, int64_t rows, int64_t cols, const float *Hin, const qz_gptq_opts *o, void *blocks,
                  double *damp_used, char *msg, size_t msg_len) {
    const llmopt_dtype_traits *tr = A->dtype_traits(o->dtype);
    if (!tr || !LLMOPT_DTYPE_IS_GQ(o->dtype) || cols % tr->block_size != 0) {
        snprintf(msg, msg_len, "GPTQ needs a group-quantized type whose group divides the row of %lld", (long long)cols);
        return LLMOPT_EINVAL;
    }
    const int64_t g = tr->block_size, bpr = cols / g;
    const int bits = LLMOPT_DTYPE_GQ_BITS(o->dtype), qmax = (1 << bits) - 1;
    const size_t tsz = tr->type_size, code_off = LLMOPT_DTYPE_GQ_ASYM(o->dtype) ? 4 : 2;
    uint8_t *out = blocks;
    int64_t B = o->block > 0 ? o->block : 128;
    B = g <= B ? (B + g - 1) / g * g : g;  /* a group never straddles two lazy batches */
    if (B > cols) B = cols;

    float *Wp = malloc((size_t)(rows * cols) * sizeof *Wp), *Hinv = malloc((size_t)(cols * cols) * sizeof *Hinv);
    double *H = malloc((size_t)(cols * cols) * sizeof *H), *U = malloc((size_t)(cols * cols) * sizeof *U);
    double *R = malloc((size_t)(cols * cols) * sizeof *R);
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    diag_idx *di = malloc((size_t)cols * sizeof *di);
    int rc = 0;
    if (!Wp || !Hinv || !H || !U || !R || !perm || !di) {
        snprintf(msg, msg_len, "out of memory for a %lld x %lld layer", (long long)rows, (long long)cols);
        rc = LLMOPT_ENOMEM;
        goto done;
    }
    for (int64_t i = 0; i < cols * cols; i++) H[i] = Hin[i];
    /* dead inputs (never non-zero in the calibration set): H_ii = 1, weight 0, as the reference */
    float *Wc = malloc((size_t)(rows * cols) * sizeof *Wc);
    if (!Wc) {
        snprintf(msg, msg_len, "out of memory");
        rc = LLMOPT_ENOMEM;
        goto done;
    }
    memcpy(Wc, W, (size_t)(rows * cols) * sizeof *Wc);
    for (int64_t i = 0; i < cols; i++)
        if (H[i * cols + i] == 0) {
            H[i * cols + i] = 1;
            for (int64_t r = 0; r < rows; r++) Wc[r * cols + i] = 0;
        }
    for (int64_t i = 0; i < cols; i++) di[i] = (diag_idx){o->act_order ? H[i * cols + i] : 0, i};
    if (o->act_order) qsort(di, (size_t)cols, sizeof *di, by_diag_desc);
    for (int64_t i = 0; i < cols; i++) perm[i] = di[i].i;
    /* static groups under act_order: scales from the unquantized weights, in original order */
    if (o->act_order)
        for (int64_t r = 0; r < rows; r++) A->quantize_row(o->dtype, Wc + r * cols, out + (size_t)(r * bpr) * tsz, cols);
    /* permute W's columns and H's rows and columns */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++) Wp[r * cols + k] = Wc[r * cols + perm[k]];
    free(Wc);
    for (int64_t a = 0; a < cols; a++)
        for (int64_t b = 0; b < cols; b++) U[a * cols + b] = H[perm[a] * cols + perm[b]];
    memcpy(H, U, (size_t)(cols * cols) * sizeof *H);
    double damp = o->damp;
    if (qz_damped_inverse_upper(H, cols, &damp, U, R, msg, msg_len)) {
        rc = LLMOPT_EFAIL;
        goto done;
    }
    if (damp_used) *damp_used = damp;
    for (int64_t i = 0; i < cols * cols; i++) Hinv[i] = (float)U[i];

    gptq_job j = {.Wp = Wp, .Hinv = Hinv, .perm = perm, .out = out, .cols = cols, .g = g, .bpr = bpr, .B = B,
                  .bits = bits, .qmax = qmax, .tsz = tsz, .code_off = code_off, .dtype = o->dtype,
                  .act_order = o->act_order};
    atomic_init(&j.failed, 0);
    A->parallel_for(rows, 8, gptq_rows, &j);
    if (atomic_load(&j.failed)) {
        snprintf(msg, msg_len, "out of memory");
        rc = LLMOPT_ENOMEM;
    }
done:
    free(Wp), free(Hinv), free(H), free(U), free(R), free(perm), free(di);
    return rc;
}

/* ---- the stage ---- */

static int gptq_validate(llmopt_stage_ctx *ctx) { return qz_validate_group(ctx); }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct gptq_run_state {
    qz_collect_arg collect;  /* qz_stats_input's argument */
    llmopt_stage_ctx *ctx;
    const llmopt_model *in;
    llmopt_model *out;
    const qz_selection *sel;
    qz_stats *st;
    unsigned char *done;     /* [sel->n], sequential mode: quantized already */
    size_t n_done;
    double damp_max;
    double stats_s, solve_s; /* seconds in X^T X (sequential mode) and in the GPTQ solves */
} gptq_run_state;

/* qz_stats_input, timed: the Gram matrices' share of the calibration pass */
static int stats_input_timed(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols) {
    gptq_run_state *g = arg;
    const double t0 = now_s();
    int rc = qz_stats_input(&g->collect, weight, x, rows, cols);
    g->stats_s += now_s() - t0;
    return rc;
}

/* GPTQ on selected weight i with its root's statistics, into out. */
static int gptq_one(gptq_run_state *g, size_t i) {
    llmopt_stage_ctx *ctx = g->ctx;
    const char *name = g->sel->names[i];
    int64_t rows, cols;
    qz_linear_dims(g->in, name, &rows, &cols);
    qz_gptq_opts o = {.dtype = qz_group_dtype(ctx, cols), .act_order = A->param_bool(ctx, "act_order"),
                      .damp = A->param_float(ctx, "damp_percent") / 100.0, .block = (int)A->param_int(ctx, "block_size")};
    const int root = g->st->root[i];
    float *W = qz_linear_f32(ctx, g->in, name, &rows, &cols), *H = malloc((size_t)(cols * cols) * sizeof *H);
    int64_t qshape[2] = {rows, cols};
    llmopt_tensor *q = A->tensor_new(o.dtype, 2, qshape);
    int rc = !W || !H || !q ? (W ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory") : LLMOPT_EFAIL) : 0;
    if (!rc) {
        const float s = 2.0f / (float)g->st->rows[root]; /* H = 2 X X^T / n */
        for (int64_t k = 0; k < cols * cols; k++) H[k] = g->st->gram[root][k] * s;
        char msg[512];
        double used = 0, t0 = now_s();
        rc = qz_gptq_layer(W, rows, cols, H, &o, q->data, &used, msg, sizeof msg);
        g->solve_s += now_s() - t0;
        if (rc) rc = A->set_error(ctx, rc, "GPTQ on '%s': %s", name, msg);
        if (used > g->damp_max) g->damp_max = used;
    }
    if (!rc && (rc = A->model_set(g->out, name, q))) rc = A->set_error(ctx, rc, "cannot set '%s'", name);
    A->tensor_unref(q);
    free(W);
    free(H);
    g->n_done++;
    A->progress(ctx, (double)g->n_done / (double)g->sel->n, "GPTQ %zu/%zu: %s", g->n_done, g->sel->n, name);
    if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    return rc;
}

/* Sequential mode (the paper's, in AutoGPTQ's true_sequential order): after each group of
 * weights saw its inputs, quantize them; the host then makes the next group's inputs with them.
 * Their statistics are freed as soon as no weight needs them. */
static int gptq_step_one(void *arg, size_t i) { return gptq_one(arg, i); }

static int seq_block_done(void *arg, int step) {
    gptq_run_state *g = arg;
    (void)step;
    return qz_seq_step(g->st, g->done, gptq_step_one, g);
}

static int gptq_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    qz_selection sel;
    qz_stats st;
    memset(&st, 0, sizeof st);
    int rc = qz_select(ctx, in, 1, &sel);
    if (rc) return rc;
    for (size_t i = 0; !rc && i < sel.n; i++) {
        qz_selection one = {&sel.names[i], 1};
        int64_t rows, cols;
        qz_linear_dims(in, sel.names[i], &rows, &cols);
        rc = qz_check_rows(ctx, in, &one, qz_group_dtype(ctx, cols));
    }
    llmopt_model *out = rc ? NULL : A->model_clone(in);
    if (!rc && !out) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    gptq_run_state g = {.ctx = ctx, .in = in, .out = out, .sel = &sel, .st = &st};
    g.collect = (qz_collect_arg){ctx, &st};
    if (!rc && A->param_bool(ctx, "sequential")) {
        int32_t *tok = NULL;
        size_t n_seq = 0, len = 0;
        g.done = calloc(sel.n ? sel.n : 1, 1);
        rc = g.done ? qz_stats_init(ctx, in, &sel, &st) : A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        st.no_absum = 1; /* GPTQ reads H alone (|x| sums were 3% of the stage's CPU time) */
        if (!rc) rc = qz_calib_tokens(ctx, in, &tok, &n_seq, &len);
        if (!rc) A->progress(ctx, 0.0, "calibrating group by group on %zu x %zu tokens", n_seq, len);
        if (!rc) rc = A->calibrate_sequential(ctx, out, tok, n_seq, len, stats_input_timed, seq_block_done, &g);
        free(tok);
        for (size_t i = 0; !rc && i < sel.n; i++)
            if (!g.done[i])
                rc = A->set_error(ctx, LLMOPT_EINVAL, "'%s' saw no calibration input: it is not a linear layer of "
                                  "the forward pass (exclude it)", sel.names[i]);
        free(g.done);
    } else {
        if (!rc) rc = qz_collect(ctx, in, &sel, &st);
        for (size_t i = 0; !rc && i < sel.n; i++) rc = gptq_one(&g, i);
    }
    double damp_max = g.damp_max;
    qz_stats_free(&st);
    if (rc) {
        A->model_unref(out);
        qz_selection_free(&sel);
        return rc;
    }
    A->metric(ctx, "damp_max", damp_max * 100.0, "%", LLMOPT_BETTER_NONE);
    /* where the time went: the rest of the stage's time is the calibration forward passes */
    if (A->param_bool(ctx, "sequential")) A->metric(ctx, "stats_s", g.stats_s, "s", LLMOPT_BETTER_LOWER);
    A->metric(ctx, "solve_s", g.solve_s, "s", LLMOPT_BETTER_LOWER);
    /* GPTQConfig's names: damp_percent is a fraction there; act_order keeps groups contiguous
     * with scales from the unquantized weights (static groups). true_sequential is AutoGPTQ's
     * order inside a block (q/k/v, then o, then the MLP), which sequential mode follows;
     * "sequential" (ours) says whether each group was calibrated on the quantized ones before it */
    char fields[512];
    const int act = A->param_bool(ctx, "act_order");
    snprintf(fields, sizeof fields,
             "\"desc_act\": %s, \"static_groups\": %s, \"damp_percent\": %.17g, \"damp_max\": %.17g, "
             "\"true_sequential\": %s, \"sequential\": %s, \"block_size\": %lld, \"n_samples\": %lld, "
             "\"seq_len\": %lld",
             act ? "true" : "false", act ? "true" : "false", A->param_float(ctx, "damp_percent") / 100.0, damp_max,
             A->param_bool(ctx, "sequential") ? "true" : "false", A->param_bool(ctx, "sequential") ? "true" : "false",
             (long long)A->param_int(ctx, "block_size"), (long long)A->param_int(ctx, "n_samples"),
             (long long)A->param_int(ctx, "seq_len"));
    rc = qz_record(ctx, in, out, "gptq", fields);
    if (rc) {
        A->model_unref(out);
        qz_selection_free(&sel);
        return rc;
    }
    rc = qz_finish(ctx, in, out, &sel);
    qz_selection_free(&sel);
    return rc;
}

static const llmopt_param_desc params[] = {
    QZ_GROUP_PARAMS("4", "true"),
    {.name = "act_order", .type = LLMOPT_PARAM_BOOL, .default_value = "false",
     .doc = "quantize columns in order of decreasing Hessian diagonal (groups stay contiguous: static groups)"},
    {.name = "damp_percent", .type = LLMOPT_PARAM_FLOAT, .default_value = "1", .min = 0, .max = 100,
     .doc = "dampening added to H's diagonal, in percent of its mean (raised 10x at a time if H is singular)"},
    {.name = "block_size", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 1, .max = 1 << 20,
     .doc = "columns per lazy batch update"},
    {.name = "sequential", .type = LLMOPT_PARAM_BOOL, .default_value = "true",
     .doc = "quantize group by group in forward order (c_attn | q/k/v, o, c_fc | gate/up, down, block after "
            "block), each group's Hessians from the inputs the quantized groups before it produce (the paper's "
            "procedure, AutoGPTQ's true_sequential); false: every Hessian from the unquantized model in one pass"},
    QZ_CALIB_PARAMS("128"),
    QZ_SELECT_PARAMS(QZ_EXCLUDE_EMBEDDINGS),
    QZ_EVAL_PARAMS,
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to quantize"}};

const llmopt_stage_desc qz_gptq_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "quantize.gptq",
    .summary = "GPTQ weight quantization with a calibration set (Frantar et al. 2022)",
    .doc = "Quantizes the selected linear weights (default: all but embeddings and the LM head) to\n"
           "GQ(bits, group_size, sym), minimising each layer's output error on calibration inputs from\n"
           "`data`. GPT-2 and Llama models. Metrics: size_bytes, size_ratio, bits_per_weight, damp_max;\n"
           "stats_s (X^T X, sequential mode) and solve_s (the per-layer solves), the rest of the\n"
           "stage's time being the calibration forward; ppl_input, ppl, ppl_ratio with eval_data.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = gptq_validate,
    .run = gptq_run,
};
