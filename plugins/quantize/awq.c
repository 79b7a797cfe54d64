/* quantize.awq: activation-aware weight quantization (Lin et al. 2023, "AWQ", section 3.2).
 * Input channels that carry large activations matter more; scaling a linear layer's input
 * channel j by s_j before quantizing (W diag(s), X diag(s)^-1) protects them. Per group of
 * layers that read one input, s = s_x^alpha (s_x: mean |x| per channel on the calibration set,
 * normalised by sqrt(max * min)), with alpha on a grid over [0, 1] chosen to minimise the output
 * error ||Q(W diag(s)) diag(s)^-1 X - W X||, measured through G = X^T X. The 1/s is folded into
 * the op before: the RMSNorm weight for q/k/v and gate/up, up_proj's rows for down_proj, and
 * v_proj's rows for o_proj when every query head has its own value head (no GQA); in GPT-2 the
 * LayerNorm gain and bias for c_attn and c_fc, and c_attn's value rows for attn.c_proj. Where
 * nothing can absorb it (o_proj under GQA, GPT-2's mlp.c_proj after GELU) the layer is quantized
 * without scaling: no extra op at run time. Then, as the paper's implementation (llm-awq
 * auto_clip) does, each group's weights are clipped to the fraction of their max |w| (1, 0.95,
 * ..., 0.55) that gives the least output error on the calibration inputs (not q and k). Then
 * group quantization (round to nearest). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "params.h"
#include "quantize.h"

#define A qz_api

double qz_awq_error(const float *G, int64_t in, const float *W, int64_t out, int dtype, const float *s) {
    float *D = malloc((size_t)(out * in) * sizeof *D), *E = malloc((size_t)(out * in) * sizeof *E);
    float *row = malloc((size_t)in * sizeof *row);
    const llmopt_dtype_traits *tr = A->dtype_traits(dtype);
    uint8_t *blk = tr ? malloc((size_t)(in / tr->block_size) * tr->type_size + 1) : NULL;
    double err = -1;
    if (!D || !E || !row || !blk) goto done;
    for (int64_t r = 0; r < out; r++) {
        const float *w = W + r * in;
        for (int64_t j = 0; j < in; j++) row[j] = s ? w[j] * s[j] : w[j];
        if (A->quantize_row(dtype, row, blk, in) || A->dequantize_row(dtype, blk, row, in)) goto done;
        for (int64_t j = 0; j < in; j++) D[r * in + j] = (s ? row[j] / s[j] : row[j]) - w[j];
    }
    /* ||D X^T||^2 = sum_r d_r G d_r^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)in, 1.0f, D, (int)in, G, (int)in, 0.0f,
                E, (int)in);
    err = 0;
    for (int64_t i = 0; i < out * in; i++) err += (double)D[i] * (double)E[i];
done:
    free(D), free(E), free(row), free(blk);
    return err;
}

int qz_awq_search(const float *G, const float *x_mean, int64_t in, const float *const *W, const int64_t *out, int n_w,
                  int dtype, int n_grid, float *s, double *err_best, double *err_rtn) {
    float *cand = malloc((size_t)in * sizeof *cand);
    if (!cand) return LLMOPT_ENOMEM;
    double best = INFINITY;
    for (int64_t j = 0; j < in; j++) s[j] = 1.0f;
    for (int k = 0; k < n_grid; k++) {
        double alpha = n_grid > 1 ? (double)k / (double)(n_grid - 1) : 0.0;
        float lo = INFINITY, hi = 0;
        for (int64_t j = 0; j < in; j++) {
            cand[j] = fmaxf(powf(x_mean[j], (float)alpha), 1e-4f);
            lo = fminf(lo, cand[j]), hi = fmaxf(hi, cand[j]);
        }
        const float norm = sqrtf(hi * lo);
        for (int64_t j = 0; j < in; j++) cand[j] /= norm;
        double err = 0;
        for (int i = 0; i < n_w && err >= 0; i++) {
            double e = qz_awq_error(G, in, W[i], out[i], dtype, cand);
            err = e < 0 ? -1 : err + e;
        }
        if (err < 0) {
            free(cand);
            return LLMOPT_ENOMEM;
        }
        if (k == 0 && err_rtn) *err_rtn = err;  /* alpha = 0: every s_j = 1, plain round to nearest */
        if (err < best) {
            best = err;
            memcpy(s, cand, (size_t)in * sizeof *s);
        }
    }
    if (err_best) *err_best = best;
    free(cand);
    return 0;
}

int qz_awq_clip(float *W, int64_t rows, int64_t in, int64_t row0, int64_t row1, const float *G, const float *s, int dtype,
                int n_grid, double max_shrink, double *err_before, double *err_after) {
    const llmopt_dtype_traits *tr = A->dtype_traits(dtype);
    if (!tr || in % tr->block_size != 0 || row0 < 0 || row1 > rows || row0 > row1) return LLMOPT_EINVAL;
    int64_t g = tr->block_size, n = row1 - row0;
    float *Gb = malloc((size_t)(g * g) * sizeof *Gb), *D = malloc((size_t)(n * g) * sizeof *D);
    float *E = malloc((size_t)(n * g) * sizeof *E), *buf = malloc((size_t)g * sizeof *buf);
    double *best = malloc((size_t)n * sizeof *best);
    float *ratio = malloc((size_t)n * sizeof *ratio);
    uint8_t *blk = malloc(tr->type_size);
    int rc = Gb && D && E && buf && best && ratio && blk ? 0 : LLMOPT_ENOMEM;
    int n_try = (int)(max_shrink * n_grid);
    if (n_try < 1) n_try = 1;
    *err_before = *err_after = 0;
    for (int64_t j0 = 0; !rc && j0 < in; j0 += g) {
        /* the group's block of the Gram matrix of the scaled inputs x / s */
        for (int64_t a = 0; a < g; a++)
            for (int64_t b = 0; b < g; b++)
                Gb[a * g + b] = G[(j0 + a) * in + j0 + b] / (s ? s[j0 + a] * s[j0 + b] : 1.0f);
        for (int k = 0; !rc && k < n_try; k++) {
            float c = 1.0f - (float)k / (float)n_grid;
            for (int64_t r = 0; r < n && !rc; r++) {
                const float *w = W + (row0 + r) * in + j0;
                float mx = 0;
                for (int64_t j = 0; j < g; j++) mx = fmaxf(mx, fabsf(w[j]));
                mx *= c;
                for (int64_t j = 0; j < g; j++) buf[j] = fminf(fmaxf(w[j], -mx), mx);
                if (A->quantize_row(dtype, buf, blk, g) || A->dequantize_row(dtype, blk, buf, g)) rc = LLMOPT_EFAIL;
                for (int64_t j = 0; j < g; j++) D[r * g + j] = buf[j] - w[j];
            }
            if (rc) break;
            /* per row: d Gb d^T, the output error of this group's part of the dot product */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)g, (int)g, 1.0f, D, (int)g, Gb, (int)g, 0.0f,
                        E, (int)g);
            for (int64_t r = 0; r < n; r++) {
                double e = 0;
                for (int64_t j = 0; j < g; j++) e += (double)D[r * g + j] * (double)E[r * g + j];
                if (k == 0) *err_before += e;
                if (k == 0 || e < best[r]) best[r] = e, ratio[r] = c;
            }
        }
        for (int64_t r = 0; !rc && r < n; r++) {
            float *w = W + (row0 + r) * in + j0, mx = 0;
            for (int64_t j = 0; j < g; j++) mx = fmaxf(mx, fabsf(w[j]));
            mx *= ratio[r];
            for (int64_t j = 0; j < g; j++) w[j] = fminf(fmaxf(w[j], -mx), mx);
            *err_after += best[r];
        }
    }
    free(Gb), free(D), free(E), free(buf), free(best), free(ratio), free(blk);
    return rc;
}

/* ---- the stage ---- */

/* A block's linear layers, the norms before them and which op absorbs each group's 1/s, per
 * family. GPT-2: ln_1 (gain and bias) before c_attn; c_attn's value rows [2C, 3C) before
 * attn.c_proj; ln_2 before mlp.c_fc; mlp.c_proj reads GELU's output, which no op before it can
 * rescale (GELU is not homogeneous), so it is quantized without scaling. */
#define MAX_LIN 7

typedef struct awq_group {
    int first, last;   /* consumers [first, last] of lin indices that read one input */
    int prev_norm;     /* 0/1: the block's first / second norm; -1: prev_lin's rows */
    int prev_lin;      /* -1: none (with prev_norm -1: nothing can absorb 1/s, no scaling) */
    int prev_row0;     /* first of prev_lin's output rows that feed this group, in units of C */
    int needs_mha;     /* o_proj: only without GQA, where value heads match query heads */
} awq_group;

typedef struct awq_family {
    const char *lin[MAX_LIN];  /* module names inside a block */
    int n_lin;
    const char *norm[2];       /* norm module names; their .weight (and .bias when present) */
    awq_group groups[4];
    int n_groups;
    int clip_from[MAX_LIN];    /* clipping search from this output row (in units of C); -1: none.
                                * Not q and k, whose errors the attention softmax reshapes (as in
                                * llm-awq's auto_clip): GPT-2's c_attn only for its value rows */
} awq_family;

static const awq_family llama_family = {
    {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
     "mlp.down_proj"}, 7,
    {"input_layernorm", "post_attention_layernorm"},
    {{0, 2, 0, -1, 0, 0}, {3, 3, -1, 2, 0, 1}, {4, 5, 1, -1, 0, 0}, {6, 6, -1, 5, 0, 0}}, 4,
    {-1, -1, 0, 0, 0, 0, 0},
};
static const awq_family gpt2_family = {
    {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}, 4,
    {"ln_1", "ln_2"},
    {{0, 0, 0, -1, 0, 0}, {1, 1, -1, 0, 2, 0}, {2, 2, 1, -1, 0, 0}, {3, 3, -1, -1, 0, 0}}, 4,
    {2, 0, 0, 0},
};

/* One layer's float working copies: linear weights [rows = out, cols = in] (qz_linear_f32),
 * their biases, the two norms' gains and biases. */
typedef struct layer_work {
    char name[MAX_LIN][160], bias[MAX_LIN][160], ln[2][160], lnb[2][160];
    const llmopt_tensor *t[MAX_LIN], *b[MAX_LIN], *lt[2], *lbt[2];
    float *w[MAX_LIN], *bw[MAX_LIN], *lw[2], *lb[2];
    float *gs[4];                  /* each group's scales (NULL: not scaled) */
    const float *s_in[MAX_LIN];    /* the scales applied to each weight's input (NULL: none) */
    int64_t rows[MAX_LIN], cols[MAX_LIN];
    int layout[MAX_LIN], changed[MAX_LIN], bchanged[MAX_LIN], sel[MAX_LIN], si[MAX_LIN];
} layer_work;

static void layer_free(layer_work *L) {
    for (int i = 0; i < MAX_LIN; i++) free(L->w[i]), free(L->bw[i]);
    for (int n = 0; n < 2; n++) free(L->lw[n]), free(L->lb[n]);
    for (int g = 0; g < 4; g++) free(L->gs[g]);
}

static int awq_group_run(llmopt_stage_ctx *ctx, layer_work *L, const awq_group *gr, int gi, const qz_stats *st, int gqa,
                         int64_t C, double *gain) {
    int root = -1, n_sel = 0;
    for (int i = gr->first; i <= gr->last; i++)
        if (L->sel[i] && root < 0) root = st->root[L->si[i]];
    for (int i = gr->first; i <= gr->last; i++) n_sel += L->sel[i];
    if (root < 0) return 0;                        /* nothing here is quantized */
    if (gr->needs_mha && gqa) return 0;            /* o_proj under GQA: nothing can absorb 1/s */
    if (gr->prev_lin < 0 && gr->prev_norm < 0) return 0;
    if (gr->prev_lin >= 0 ? !L->t[gr->prev_lin] : !L->lt[gr->prev_norm]) return 0;
    int64_t in = st->cols[root], row0 = (int64_t)gr->prev_row0 * C;
    if (gr->prev_lin >= 0 && row0 + in > L->rows[gr->prev_lin]) return 0;
    const float *Ws[MAX_LIN];
    int64_t outs[MAX_LIN];
    int k = 0;
    for (int i = gr->first; i <= gr->last; i++)
        if (L->sel[i]) Ws[k] = L->w[i], outs[k++] = L->rows[i];
    float *s = malloc((size_t)in * sizeof *s), *xm = malloc((size_t)in * sizeof *xm);
    if (!s || !xm) {
        free(s), free(xm);
        return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    }
    for (int64_t j = 0; j < in; j++) xm[j] = (float)(st->absum[root][j] / (double)st->rows[root]);
    double eb = 0, er = 0;
    int dt = qz_group_dtype(ctx, in);
    int rc = qz_awq_search(st->gram[root], xm, in, Ws, outs, n_sel, dt, (int)A->param_int(ctx, "n_grid"), s, &eb, &er);
    if (rc) {
        free(s), free(xm);
        return A->set_error(ctx, rc, "out of memory");
    }
    if (er > 0) *gain += eb / er;
    /* W diag(s) for every reader of this input, selected or not, so the function is unchanged */
    for (int i = gr->first; i <= gr->last; i++) {
        if (!L->w[i]) continue;
        for (int64_t r = 0; r < L->rows[i]; r++)
            for (int64_t j = 0; j < in; j++) L->w[i][r * in + j] *= s[j];
        L->changed[i] = 1;
    }
    if (gr->prev_lin < 0) {
        int n = gr->prev_norm;
        for (int64_t j = 0; j < in; j++) {
            L->lw[n][j] /= s[j];
            if (L->lb[n]) L->lb[n][j] /= s[j];
        }
    } else {
        int p = gr->prev_lin;
        int64_t pin = L->cols[p];
        for (int64_t r = 0; r < in; r++) {
            for (int64_t j = 0; j < pin; j++) L->w[p][(row0 + r) * pin + j] /= s[r];
            if (L->bw[p]) L->bw[p][row0 + r] /= s[r];
        }
        L->changed[p] = 1, L->bchanged[p] = L->bw[p] != NULL;
    }
    L->gs[gi] = s;
    for (int i = gr->first; i <= gr->last; i++) L->s_in[i] = s;
    free(xm);
    return 0;
}

/* The clipping search on every selected weight the family allows; errors summed over them. */
static int awq_clip_layer(llmopt_stage_ctx *ctx, layer_work *L, const awq_family *f, const qz_stats *st, int64_t C,
                          double *before, double *after) {
    for (int i = 0; i < f->n_lin; i++) {
        if (!L->sel[i] || f->clip_from[i] < 0) continue;
        int root = st->root[L->si[i]];
        double b = 0, a = 0;
        int rc = qz_awq_clip(L->w[i], L->rows[i], L->cols[i], (int64_t)f->clip_from[i] * C, L->rows[i], st->gram[root],
                             L->s_in[i], qz_group_dtype(ctx, L->cols[i]), 20, 0.5, &b, &a);
        if (rc) return A->set_error(ctx, rc, "AWQ clipping search on '%s' failed", L->name[i]);
        *before += b, *after += a;
        L->changed[i] = 1;
    }
    return 0;
}

static int set_vec(llmopt_stage_ctx *ctx, llmopt_model *out, const char *name, const llmopt_tensor *t, const float *v) {
    return qz_set_from_f32(ctx, out, name, v, t->ndim, t->shape, t->dtype);
}

/* The checkpoint name prefix of block l: "model.layers.<l>." or GPT-2's "[transformer.]h.<l>." */
static void block_prefix(const llmopt_model *m, int gpt2, int l, char *buf, size_t n) {
    if (!gpt2) snprintf(buf, n, "model.layers.%d.", l);
    else snprintf(buf, n, "%sh.%d.", A->model_get(m, "transformer.wte.weight") ? "transformer." : "", l);
}

static int awq_layer(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const awq_family *f, int gpt2,
                     int l, const qz_stats *st, int gqa, int64_t C, double *gain, int *n_groups, double clip_err[2]) {
    layer_work L;
    memset(&L, 0, sizeof L);
    char pre[64];
    block_prefix(in, gpt2, l, pre, sizeof pre);
    int rc = 0;
    for (int n = 0; !rc && n < 2; n++) {
        snprintf(L.ln[n], sizeof L.ln[n], "%s%s.weight", pre, f->norm[n]);
        snprintf(L.lnb[n], sizeof L.lnb[n], "%s%s.bias", pre, f->norm[n]);
        if ((L.lt[n] = A->model_get(in, L.ln[n])) && !(L.lw[n] = qz_weight_f32(ctx, L.lt[n]))) rc = LLMOPT_EFAIL;
        if (!rc && (L.lbt[n] = A->model_get(in, L.lnb[n])) && !(L.lb[n] = qz_weight_f32(ctx, L.lbt[n]))) rc = LLMOPT_EFAIL;
    }
    for (int i = 0; !rc && i < f->n_lin; i++) {
        snprintf(L.name[i], sizeof L.name[i], "%s%s.weight", pre, f->lin[i]);
        snprintf(L.bias[i], sizeof L.bias[i], "%s%s.bias", pre, f->lin[i]);
        L.si[i] = qz_stats_find(st, L.name[i]);
        L.sel[i] = L.si[i] >= 0;
        if ((L.t[i] = A->model_get(in, L.name[i]))) {
            L.layout[i] = qz_linear_dims(in, L.name[i], &L.rows[i], &L.cols[i]);
            if (!(L.w[i] = qz_linear_f32(ctx, in, L.name[i], &L.rows[i], &L.cols[i]))) rc = LLMOPT_EFAIL;
        }
        if (!rc && (L.b[i] = A->model_get(in, L.bias[i])) && !(L.bw[i] = qz_weight_f32(ctx, L.b[i]))) rc = LLMOPT_EFAIL;
    }
    for (int g = 0; !rc && g < f->n_groups; g++) {
        double before = *gain;
        rc = awq_group_run(ctx, &L, &f->groups[g], g, st, gqa, C, gain);
        *n_groups += *gain != before;
    }
    if (!rc && A->param_bool(ctx, "clip")) rc = awq_clip_layer(ctx, &L, f, st, C, &clip_err[0], &clip_err[1]);
    /* write back: quantize the selected weights, keep the others in their dtype and layout */
    for (int n = 0; !rc && n < 2; n++) {
        if (L.lt[n]) rc = set_vec(ctx, out, L.ln[n], L.lt[n], L.lw[n]);
        if (!rc && L.lbt[n]) rc = set_vec(ctx, out, L.lnb[n], L.lbt[n], L.lb[n]);
    }
    for (int i = 0; !rc && i < f->n_lin; i++) {
        if (!L.t[i]) continue;
        if (L.sel[i])
            rc = qz_linear_set(ctx, out, L.name[i], L.w[i], L.rows[i], L.cols[i], L.layout[i],
                               qz_group_dtype(ctx, L.cols[i]));
        else if (L.changed[i])
            rc = qz_linear_set(ctx, out, L.name[i], L.w[i], L.rows[i], L.cols[i], L.layout[i], L.t[i]->dtype);
        if (!rc && L.bchanged[i]) rc = set_vec(ctx, out, L.bias[i], L.b[i], L.bw[i]);
    }
    layer_free(&L);
    return rc;
}

static int awq_validate(llmopt_stage_ctx *ctx) { return qz_validate_group(ctx); }

static int awq_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    const char *arch = A->model_arch(in);
    int gpt2 = arch && strcmp(arch, "gpt2") == 0;
    const awq_family *f = gpt2 ? &gpt2_family : &llama_family;
    double layers = 0;
    A->model_cfg_get_num(in, gpt2 ? "n_layer" : "num_hidden_layers", &layers);
    int n_layer = (int)layers;
    qz_selection sel;
    qz_stats st;
    memset(&st, 0, sizeof st);
    int rc = qz_select(ctx, in, 1, &sel);
    if (rc) return rc;
    /* every selected weight must be one of a block's linear layers: AWQ folds scales by position */
    for (size_t i = 0; !rc && i < sel.n; i++) {
        int ok = 0;
        for (int l = 0; !ok && l < n_layer; l++)
            for (int k = 0; !ok && k < f->n_lin; k++) {
                char pre[64], want[160];
                block_prefix(in, gpt2, l, pre, sizeof pre);
                snprintf(want, sizeof want, "%s%s.weight", pre, f->lin[k]);
                ok = strcmp(want, sel.names[i]) == 0;
            }
        if (!ok) rc = A->set_error(ctx, LLMOPT_EINVAL, "AWQ quantizes a block's linear weights; '%s' is not one (exclude it)",
                                   sel.names[i]);
        int64_t rows, cols;
        qz_linear_dims(in, sel.names[i], &rows, &cols);
        qz_selection one = {&sel.names[i], 1};
        if (!rc) rc = qz_check_rows(ctx, in, &one, qz_group_dtype(ctx, cols));
    }
    if (!rc) rc = qz_collect(ctx, in, &sel, &st);
    llmopt_model *out = rc ? NULL : A->model_clone(in);
    if (!rc && !out) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    double n_head = 0, n_kv = 0, C = 0, gain = 0;
    A->model_cfg_get_num(in, gpt2 ? "n_head" : "num_attention_heads", &n_head);
    A->model_cfg_get_num(in, gpt2 ? "n_embd" : "hidden_size", &C);
    if (gpt2 || A->model_cfg_get_num(in, "num_key_value_heads", &n_kv)) n_kv = n_head;
    int n_groups = 0;
    double clip_err[2] = {0, 0};
    for (int l = 0; !rc && l < n_layer; l++) {
        rc = awq_layer(ctx, in, out, f, gpt2, l, &st, n_kv != n_head, (int64_t)C, &gain, &n_groups, clip_err);
        A->progress(ctx, (double)(l + 1) / n_layer, "AWQ layer %d/%d", l + 1, n_layer);
        if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    }
    qz_stats_free(&st);
    if (rc) {
        A->model_unref(out);
        qz_selection_free(&sel);
        return rc;
    }
    /* mean over scaled groups of (output error with AWQ scales) / (plain round to nearest) */
    A->metric(ctx, "awq_error_ratio", n_groups ? gain / n_groups : 1.0, NULL, LLMOPT_BETTER_LOWER);
    /* the clipped weights' summed group output error over the unclipped ones' (after scaling) */
    if (A->param_bool(ctx, "clip"))
        A->metric(ctx, "awq_clip_error_ratio", clip_err[0] > 0 ? clip_err[1] / clip_err[0] : 1.0, NULL, LLMOPT_BETTER_LOWER);
    char fields[160];  /* AwqConfig's zero_point; no "version": these are not AutoAWQ's packed layouts */
    snprintf(fields, sizeof fields, "\"zero_point\": %s, \"clip\": %s, \"n_grid\": %lld, \"n_samples\": %lld, \"seq_len\": %lld",
             A->param_bool(ctx, "sym") ? "false" : "true", A->param_bool(ctx, "clip") ? "true" : "false",
             (long long)A->param_int(ctx, "n_grid"), (long long)A->param_int(ctx, "n_samples"), (long long)A->param_int(ctx, "seq_len"));
    rc = qz_record(ctx, in, out, "awq", fields);
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
    QZ_GROUP_PARAMS("4", "false"),
    {.name = "n_grid", .type = LLMOPT_PARAM_INT, .default_value = "20", .min = 1, .max = 1000,
     .doc = "points of the alpha grid over [0, 1]"},
    {.name = "clip", .type = LLMOPT_PARAM_BOOL, .default_value = "true",
     .doc = "after scaling, search each group's clipping range (max |w| times 1, 0.95, ..., 0.55) for the\n"
            "least output error on the calibration inputs, as the paper's implementation does"},
    QZ_CALIB_PARAMS("32"),
    QZ_SELECT_PARAMS(QZ_EXCLUDE_EMBEDDINGS),
    QZ_EVAL_PARAMS,
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to quantize"}};

const llmopt_stage_desc qz_awq_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "quantize.awq",
    .summary = "activation-aware weight quantization (Lin et al. 2023)",
    .doc = "Scales each layer's input channels by s = s_x^alpha (alpha searched on the calibration set\n"
           "from `data`), folds 1/s into the RMSNorm or previous projection, then group-quantizes\n"
           "(GQ(bits, group_size, sym)). GPT-2 and Llama. Metrics: awq_error_ratio, size_bytes,\n"
           "size_ratio, bits_per_weight; ppl_input, ppl, ppl_ratio with eval_data.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = awq_validate,
    .run = awq_run,
};
