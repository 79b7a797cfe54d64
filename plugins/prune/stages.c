/* prune.magnitude, prune.wanda and prune.sparsegpt: the selected linear weights of a model
 * (default: all but the embeddings and the LM head) set to zero in a pattern, one layer at a
 * time. Wanda and SparseGPT calibrate; by default sequentially (each group of layers sees the
 * inputs that the pruned groups before it make, in forward order), which is finer than the
 * papers' block-by-block order; sequential: false takes every input from the unpruned model.
 * The output keeps each weight's dtype and layout: a dense checkpoint with zeros, which
 * transformers and every other reader load as it is. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "prune.h"
#include "quantize.h"

#define A qz_api

enum { PR_MAGNITUDE, PR_WANDA, PR_SPARSEGPT };
static const char *const method_name[] = {"magnitude", "Wanda", "SparseGPT"};
static const int method_id[] = {PR_MAGNITUDE, PR_WANDA, PR_SPARSEGPT}; /* each stage's `user` */

static int method_of(llmopt_stage_ctx *ctx) { return *(const int *)A->stage_user(ctx); }

static int pattern_of(llmopt_stage_ctx *ctx, pr_pattern *p) {
    const char *s = A->param_str(ctx, "pattern");
    if (pr_pattern_parse(s, p))
        return A->set_error(ctx, LLMOPT_EINVAL, "pattern is '%s'; 'unstructured' or N:M (N of every M inputs kept, "
                            "0 < N < M <= 256, e.g. 2:4) expected", s);
    p->sparsity = A->param_float(ctx, "sparsity");
    if (!(p->sparsity < 1.0)) return A->set_error(ctx, LLMOPT_EINVAL, "sparsity is %g; below 1 expected", p->sparsity);
    if (p->m) {
        const double implied = 1.0 - (double)p->n / (double)p->m;
        if (fabs(p->sparsity - implied) > 1e-9 && fabs(p->sparsity - 0.5) > 1e-9)
            return A->set_error(ctx, LLMOPT_EINVAL, "sparsity %g disagrees with pattern %s, which prunes %g; leave "
                                "sparsity out", p->sparsity, s, implied);
        p->sparsity = implied;
    }
    return 0;
}

static int pr_validate(llmopt_stage_ctx *ctx) {
    pr_pattern p;
    return pattern_of(ctx, &p);
}

typedef struct pr_run {
    qz_collect_arg collect; /* qz_stats_input's argument (stats_input) */
    llmopt_stage_ctx *ctx;
    const llmopt_model *in;
    llmopt_model *out;
    const qz_selection *sel;
    qz_stats *st;
    unsigned char *done; /* [sel->n], sequential mode: pruned already */
    size_t n_done;
    int method;
    pr_pattern pattern;
    double damp_max;
    double zeros, params; /* over the selected weights */
} pr_run;

/* Prunes selected weight i of g->in (with its root's statistics) into g->out. */
static int prune_one(pr_run *g, size_t i) {
    llmopt_stage_ctx *ctx = g->ctx;
    const char *name = g->sel->names[i];
    int64_t rows, cols;
    const int layout = qz_linear_dims(g->in, name, &rows, &cols), dtype = A->model_get(g->in, name)->dtype;
    float *W = qz_linear_f32(ctx, g->in, name, &rows, &cols);
    if (!W) return LLMOPT_EFAIL;
    int rc = 0, root = g->st ? g->st->root[i] : -1;
    if (g->method == PR_MAGNITUDE) {
        rc = pr_magnitude_layer(W, rows, cols, &g->pattern) ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory") : 0;
    } else if (g->method == PR_WANDA) {
        rc = pr_wanda_layer(W, rows, cols, g->st->sumsq[root], &g->pattern) ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory")
                                                                             : 0;
    } else {
        float *H = malloc((size_t)(cols * cols) * sizeof *H);
        if (!H) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        if (!rc) {
            const float s = 2.0f / (float)g->st->rows[root]; /* H = 2 X X^T / n */
            for (int64_t k = 0; k < cols * cols; k++) H[k] = g->st->gram[root][k] * s;
            pr_sparsegpt_opts o = {.pattern = g->pattern, .damp = A->param_float(ctx, "damp_percent") / 100.0,
                                   .block = (int)A->param_int(ctx, "block_size")};
            char msg[512];
            double used = 0;
            rc = pr_sparsegpt_layer(W, rows, cols, H, &o, &used, msg, sizeof msg);
            if (rc) rc = A->set_error(ctx, rc, "SparseGPT on '%s': %s", name, msg);
            if (used > g->damp_max) g->damp_max = used;
        }
        free(H);
    }
    for (int64_t k = 0; !rc && k < rows * cols; k++) g->zeros += W[k] == 0.0f;
    g->params += (double)(rows * cols);
    if (!rc) rc = qz_linear_set(ctx, g->out, name, W, rows, cols, layout, dtype);
    free(W);
    g->n_done++;
    A->progress(ctx, (double)g->n_done / (double)g->sel->n, "%s %zu/%zu: %s", method_name[g->method], g->n_done,
                g->sel->n, name);
    if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    return rc;
}

/* qz_stats_input on the run's statistics */
static int stats_input(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols) {
    pr_run *g = arg;
    return qz_stats_input(&g->collect, weight, x, rows, cols);
}

/* Sequential mode: after each group of weights saw its inputs, prune them; the host makes the
 * next group's inputs with them. A root's statistics go as soon as no weight needs them. */
static int prune_step_one(void *arg, size_t i) { return prune_one(arg, i); }

static int seq_block_done(void *arg, int step) {
    pr_run *g = arg;
    (void)step;
    return qz_seq_step(g->st, g->done, prune_step_one, g);
}

static int calibrated(pr_run *g) {
    llmopt_stage_ctx *ctx = g->ctx;
    const qz_selection *sel = g->sel;
    qz_stats *st = g->st;
    int rc;
    st->no_absum = 1, st->no_gram = g->method == PR_WANDA, st->want_sumsq = g->method == PR_WANDA;
    if (!A->param_bool(ctx, "sequential")) {
        rc = qz_collect(ctx, g->in, sel, st);
        for (size_t i = 0; !rc && i < sel->n; i++) rc = prune_one(g, i);
        return rc;
    }
    int32_t *tok = NULL;
    size_t n_seq = 0, len = 0;
    g->done = calloc(sel->n ? sel->n : 1, 1);
    rc = g->done ? qz_stats_init(ctx, g->in, sel, st) : A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    if (!rc) rc = qz_calib_tokens(ctx, g->in, &tok, &n_seq, &len);
    if (!rc) A->progress(ctx, 0.0, "calibrating group by group on %zu x %zu tokens", n_seq, len);
    if (!rc) rc = A->calibrate_sequential(ctx, g->out, tok, n_seq, len, stats_input, seq_block_done, g);
    free(tok);
    for (size_t i = 0; !rc && i < sel->n; i++)
        if (!g->done[i])
            rc = A->set_error(ctx, LLMOPT_EINVAL, "'%s' saw no calibration input: it is not a linear layer of the "
                              "forward pass (exclude it)", sel->names[i]);
    free(g->done);
    g->done = NULL;
    return rc;
}

static int pr_run_stage(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    pr_run g = {.ctx = ctx, .in = in, .method = method_of(ctx)};
    int rc = pattern_of(ctx, &g.pattern);
    qz_selection sel = {0};
    qz_stats st;
    memset(&st, 0, sizeof st);
    if (!rc) rc = qz_select(ctx, in, 1, &sel);
    for (size_t i = 0; !rc && g.pattern.m && i < sel.n; i++) {
        int64_t rows, cols;
        qz_linear_dims(in, sel.names[i], &rows, &cols);
        if (cols % g.pattern.m)
            rc = A->set_error(ctx, LLMOPT_EINVAL, "'%s' has %lld inputs, not a whole number of groups of %d for pattern "
                              "%d:%d (exclude it)", sel.names[i], (long long)cols, g.pattern.m, g.pattern.n, g.pattern.m);
    }
    g.sel = &sel;
    g.out = rc ? NULL : A->model_clone(in);
    if (!rc && !g.out) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    if (!rc && g.method == PR_MAGNITUDE) {
        for (size_t i = 0; !rc && i < sel.n; i++) rc = prune_one(&g, i);
    } else if (!rc) {
        g.st = &st;
        g.collect = (qz_collect_arg){ctx, &st};
        rc = calibrated(&g);
    }
    qz_stats_free(&st);
    if (!rc) {
        A->metric(ctx, "sparsity", g.params ? g.zeros / g.params : 0, NULL, LLMOPT_BETTER_NONE);
        A->metric(ctx, "pruned_params", g.zeros, NULL, LLMOPT_BETTER_NONE);
        A->metric(ctx, "selected_params", g.params, NULL, LLMOPT_BETTER_NONE);
        A->metric(ctx, "size_bytes", (double)A->model_nbytes(g.out), "B", LLMOPT_BETTER_LOWER);
        if (g.method == PR_SPARSEGPT) A->metric(ctx, "damp_max", g.damp_max * 100.0, "%", LLMOPT_BETTER_NONE);
        const char *entry = A->param_str(ctx, "eval_data");
        if (entry && *entry) rc = qz_eval_pair(ctx, in, g.out, entry);
    }
    qz_selection_free(&sel);
    if (rc) {
        A->model_unref(g.out);
        return rc;
    }
    return A->stage_set_output(ctx, g.out);
}

#define PR_PATTERN_PARAMS                                                                                     \
    {.name = "sparsity", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.5", .min = 0, .max = 1,              \
     .doc = "the fraction of each comparison group's weights set to zero (below 1); with an N:M pattern it "  \
            "is 1 - N/M and may be left out"},                                                                \
    {.name = "pattern", .type = LLMOPT_PARAM_STRING, .default_value = "unstructured",                         \
     .doc = "'unstructured', or N:M: at most N non-zero weights in every M consecutive inputs of a row "      \
            "(2:4 is what sparse tensor cores run)"}

#define PR_SEQUENTIAL_PARAM                                                                                   \
    {.name = "sequential", .type = LLMOPT_PARAM_BOOL, .default_value = "true",                                \
     .doc = "prune group by group in forward order (c_attn | q/k/v, o, c_fc | gate/up, down), each group's "  \
            "statistics from the inputs the pruned groups before it make; false: all from the unpruned model " \
            "in one pass"}

static const llmopt_param_desc magnitude_params[] = {
    PR_PATTERN_PARAMS,
    QZ_SELECT_PARAMS(QZ_EXCLUDE_EMBEDDINGS),
    QZ_EVAL_PARAMS,
};
static const llmopt_param_desc wanda_params[] = {
    PR_PATTERN_PARAMS,
    PR_SEQUENTIAL_PARAM,
    QZ_CALIB_PARAMS("128"),
    QZ_SELECT_PARAMS(QZ_EXCLUDE_EMBEDDINGS),
    QZ_EVAL_PARAMS,
};
static const llmopt_param_desc sparsegpt_params[] = {
    PR_PATTERN_PARAMS,
    {.name = "damp_percent", .type = LLMOPT_PARAM_FLOAT, .default_value = "1", .min = 0, .max = 100,
     .doc = "dampening added to H's diagonal, in percent of its mean (raised 10x at a time if H is singular)"},
    {.name = "block_size", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 1, .max = 1 << 20,
     .doc = "columns per mask selection and lazy batch update (the paper's Bs)"},
    PR_SEQUENTIAL_PARAM,
    QZ_CALIB_PARAMS("128"),
    QZ_SELECT_PARAMS(QZ_EXCLUDE_EMBEDDINGS),
    QZ_EVAL_PARAMS,
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to prune"}};

#define PR_METRICS_DOC                                                                                        \
    "Metrics: sparsity (zeros over the selected weights), pruned_params, selected_params,\n"                  \
    "size_bytes (the checkpoint stays dense); with eval_data, ppl_input, ppl, ppl_ratio, kl_div\n"           \
    "and top1_agree against the input on the same tokens."

const llmopt_stage_desc pr_magnitude_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "prune.magnitude",
    .summary = "magnitude pruning, layer by layer (the baseline of the Wanda and SparseGPT papers)",
    .doc = "Sets the smallest |w| of each selected linear weight to zero: the fraction `sparsity`\n"
           "of the whole layer, or all but N of every M inputs of a row. No calibration.\n" PR_METRICS_DOC,
    LLMOPT_STAGE_PARAMS(magnitude_params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = pr_validate,
    .run = pr_run_stage,
    .user = (void *)&method_id[0],
};

const llmopt_stage_desc pr_wanda_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "prune.wanda",
    .summary = "Wanda: pruning by weights and activations (Sun et al. 2023)",
    .doc = "Scores each weight by |w_ij| * ||x_j||_2 over the calibration inputs from `data` and sets\n"
           "the lowest-scoring fraction `sparsity` of every output row to zero (or all but N of every\n"
           "M inputs). No weight update. GPT-2 and Llama models.\n" PR_METRICS_DOC,
    LLMOPT_STAGE_PARAMS(wanda_params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = pr_validate,
    .run = pr_run_stage,
    .user = (void *)&method_id[1],
};

const llmopt_stage_desc pr_sparsegpt_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "prune.sparsegpt",
    .summary = "SparseGPT: one-shot pruning with weight reconstruction (Frantar and Alistarh 2023)",
    .doc = "Prunes each selected linear weight column by column, choosing each block's mask by\n"
           "w^2 / [H^-1]_jj^2 and updating the weights not yet pruned to make up the layer's output\n"
           "error on the calibration inputs from `data` (H = 2 X X^T / n). GPT-2 and Llama models.\n"
           "damp_max: the dampening used.\n" PR_METRICS_DOC,
    LLMOPT_STAGE_PARAMS(sparsegpt_params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = pr_validate,
    .run = pr_run_stage,
    .user = (void *)&method_id[2],
};
