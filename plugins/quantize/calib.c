/* Calibration for GPTQ and AWQ (the inputs each selected linear layer sees on a calibration
 * set, summarised as X^T X and per-channel |x| sums), and what every quantize stage reports:
 * sizes, bits per weight and, on request, the perplexity of the input and the output. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "quantize.h"

#define A qz_api

/* ---- calibration tokens ---- */

int qz_calib_tokens(llmopt_stage_ctx *ctx, const llmopt_model *m, int32_t **out, size_t *n_seq, size_t *seq_len) {
    const char *entry = A->param_str(ctx, "data");
    size_t n = (size_t)A->param_int(ctx, "n_samples"), len = (size_t)A->param_int(ctx, "seq_len");
    int n_ctx = A->model_context(m);
    if (n_ctx <= 0) return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a runnable model (llama)");
    if (len > (size_t)n_ctx) {
        A->log(LLMOPT_LOG_INFO, "calibration: seq_len %zu is above the model's context; using %d", len, n_ctx);
        len = (size_t)n_ctx;
    }
    char *text = NULL;
    size_t tlen = 0, nt = 0;
    int32_t *ids = NULL;
    int rc = A->data_read(ctx, entry, &text, &tlen);
    if (!rc) rc = A->tokenize(ctx, m, text, tlen, 0, &ids, &nt);
    A->mem_free(text);
    if (rc) return rc;
    if (nt == 0) {
        A->mem_free(ids);
        return A->set_error(ctx, LLMOPT_EINVAL, "calibration data '%s' is empty", entry);
    }
    if (nt < n * len) {
        A->mem_free(ids);
        return A->set_error(ctx, LLMOPT_EINVAL,
                            "calibration data '%s' has %zu tokens; n_samples=%zu sequences of seq_len=%zu need %zu "
                            "(give more text or lower n_samples / seq_len)", entry, nt, n, len, n * len);
    }
    int32_t *tok = malloc(n * len * sizeof *tok);
    if (!tok) {
        A->mem_free(ids);
        return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    }
    /* sequences spread evenly over the text, so the calibration sees all of it */
    size_t step = n > 1 ? (nt - len) / (n - 1) : 0;
    for (size_t i = 0; i < n; i++) memcpy(tok + i * len, ids + i * step, len * sizeof *tok);
    A->mem_free(ids);
    *out = tok;
    *n_seq = n;
    *seq_len = len;
    return 0;
}

/* ---- statistics ---- */

int qz_stats_find(const qz_stats *st, const char *name) {
    for (size_t i = 0; i < st->n; i++)
        if (strcmp(st->names[i], name) == 0) return (int)i;
    return -1;
}

/* One input x [rows, cols] of a weight and the statistic a job adds it to. */
typedef struct x_job {
    const float *x;
    int64_t rows, cols;
    float *g;      /* the Gram matrix (gram_rows) */
    double *absum; /* the sums of |x| per column (absum_cols) */
    double *sumsq; /* the sums of x^2 per column (sumsq_cols) */
} x_job;

/* absum += |x| for the columns [c0, c1), on the host's compute threads */
static void absum_cols(void *arg, int64_t c0, int64_t c1) {
    const x_job *j = arg;
    for (int64_t r = 0; r < j->rows; r++) {
        const float *xr = j->x + r * j->cols;
        for (int64_t c = c0; c < c1; c++) j->absum[c] += fabsf(xr[c]);
    }
}

/* sumsq += x^2 for the columns [c0, c1) */
static void sumsq_cols(void *arg, int64_t c0, int64_t c1) {
    const x_job *j = arg;
    for (int64_t r = 0; r < j->rows; r++) {
        const float *xr = j->x + r * j->cols;
        for (int64_t c = c0; c < c1; c++) j->sumsq[c] += (double)xr[c] * (double)xr[c];
    }
}

/* G += x^T x, the upper triangle (mirrored once at the end, qz_stats_mirror), in block rows of
 * GRAM_BS on the host's threads: block row b is one sgemm, G[i:i+bs, i:] += x[:, i:i+bs]^T
 * x[:, i:], so every element has one writer and a partition that depends on cols alone; the rows
 * come largest first, claimed as threads free up. It used to be one ssyrk on OpenBLAS's own
 * threads, widened around the call from the stage's thread; but that setting is process-wide,
 * and under --jobs 2 a stage beside it ran its matmuls on wide OpenBLAS inside the pool (another
 * order of sums: a different perplexity of the same model), and two such stages restoring each
 * other's count left OpenBLAS wide for the rest of the run. */
#define GRAM_BS 128

static void gram_rows(void *arg, int64_t b0, int64_t b1) {
    const x_job *j = arg;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t i = b * GRAM_BS, bs = j->cols - i < GRAM_BS ? j->cols - i : GRAM_BS;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)bs, (int)(j->cols - i), (int)j->rows, 1.0f,
                    j->x + i, (int)j->cols, j->x + i, (int)j->cols, 1.0f, j->g + i * j->cols + i, (int)j->cols);
    }
}

static void gram_update(const float *x, int64_t rows, int64_t cols, float *g) {
    x_job j = {.x = x, .rows = rows, .cols = cols, .g = g};
    A->parallel_for((cols + GRAM_BS - 1) / GRAM_BS, 1, gram_rows, &j);
}

int qz_stats_input(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols) {
    qz_collect_arg *a = arg;
    qz_stats *st = a->st;
    int i = qz_stats_find(st, weight);
    int prev = st->prev;
    const float *prev_x = st->prev_x;
    int64_t prev_rows = st->prev_rows;
    st->prev = i, st->prev_x = x, st->prev_rows = rows;
    if (i < 0) return 0;
    if (cols != st->cols[i])
        return A->set_error(a->ctx, LLMOPT_EFAIL, "calibration: '%s' got inputs of %lld features, expected %lld", weight,
                            (long long)cols, (long long)st->cols[i]);
    if (st->root[i] == -2) {
        /* the first call decides: a weight called right after another one on the same input
         * buffer reads the same activations (q/k/v, gate/up) and shares its statistics */
        if (prev >= 0 && prev_x == x && prev_rows == rows && st->cols[prev] == cols && st->root[prev] >= 0) {
            st->root[i] = st->root[prev];
        } else {
            st->root[i] = i;
            st->gram[i] = st->no_gram ? NULL : calloc((size_t)(cols * cols), sizeof(float));
            st->absum[i] = st->no_absum ? NULL : calloc((size_t)cols, sizeof(double));
            if (st->want_sumsq) st->sumsq[i] = calloc((size_t)cols, sizeof(double));
            if ((!st->no_gram && !st->gram[i]) || (!st->no_absum && !st->absum[i]) || (st->want_sumsq && !st->sumsq[i]))
                return A->set_error(a->ctx, LLMOPT_ENOMEM, "out of memory for a %lld x %lld Gram matrix", (long long)cols,
                                    (long long)cols);
        }
    }
    if (st->root[i] != i) return 0;
    if (!st->no_gram) gram_update(x, rows, cols, st->gram[i]);
    if (st->want_sumsq) {
        x_job j = {.x = x, .rows = rows, .cols = cols, .sumsq = st->sumsq[i]};
        A->parallel_for(cols, 64, sumsq_cols, &j);
    }
    if (!st->no_absum) {
        x_job j = {.x = x, .rows = rows, .cols = cols, .absum = st->absum[i]};
        A->parallel_for(cols, 64, absum_cols, &j);
    }
    st->rows[i] += rows;
    return 0;
}

int qz_stats_init(llmopt_stage_ctx *ctx, const llmopt_model *m, const qz_selection *sel, qz_stats *st) {
    const int no_absum = st->no_absum, no_gram = st->no_gram, want_sumsq = st->want_sumsq; /* the caller's choice */
    memset(st, 0, sizeof *st);
    st->no_absum = no_absum, st->no_gram = no_gram, st->want_sumsq = want_sumsq;
    st->n = sel->n;
    st->names = sel->names;
    st->cols = calloc(sel->n, sizeof *st->cols);
    st->root = calloc(sel->n, sizeof *st->root);
    st->gram = calloc(sel->n, sizeof *st->gram);
    st->absum = calloc(sel->n, sizeof *st->absum);
    st->rows = calloc(sel->n, sizeof *st->rows);
    st->sumsq = calloc(sel->n, sizeof *st->sumsq);
    st->prev = -1;
    if (!st->cols || !st->root || !st->gram || !st->absum || !st->rows || !st->sumsq) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (size_t i = 0; i < sel->n; i++) {
        int64_t rows;
        qz_linear_dims(m, sel->names[i], &rows, &st->cols[i]);
        st->root[i] = -2;
    }
    return 0;
}

/* The lower triangle of root i's Gram matrix from its upper one (gram_update fills the upper part);
 * call once, after the last input. */
void qz_stats_mirror(qz_stats *st, size_t i) {
    int64_t c = st->cols[i];
    float *g = st->gram[i];
    if (!g) return;
    for (int64_t r = 0; r < c; r++)
        for (int64_t k = 0; k < r; k++) g[r * c + k] = g[k * c + r];
}

int qz_seq_step(qz_stats *st, unsigned char *done, int (*fn)(void *arg, size_t i), void *arg) {
    st->prev = -1; /* the next step's first weight shares no statistics with this step's */
    for (size_t i = 0; i < st->n; i++)
        if (!done[i] && st->root[i] == (int)i) qz_stats_mirror(st, i);
    for (size_t i = 0; i < st->n; i++) {
        if (done[i] || st->root[i] < 0) continue;
        int rc = fn(arg, i);
        if (rc) return rc;
        done[i] = 1;
    }
    for (size_t r = 0; r < st->n; r++) { /* a root all of whose weights are done */
        if (st->root[r] != (int)r) continue;
        int need = 0;
        for (size_t i = 0; i < st->n; i++) need |= st->root[i] == (int)r && !done[i];
        if (!need) {
            free(st->gram[r]), free(st->absum[r]);
            st->gram[r] = NULL, st->absum[r] = NULL;
            if (st->sumsq) free(st->sumsq[r]), st->sumsq[r] = NULL;
        }
    }
    return 0;
}

int qz_collect(llmopt_stage_ctx *ctx, const llmopt_model *m, const qz_selection *sel, qz_stats *st) {
    int rc = qz_stats_init(ctx, m, sel, st);
    if (rc) return rc;
    int32_t *tok = NULL;
    size_t n_seq = 0, len = 0;
    rc = qz_calib_tokens(ctx, m, &tok, &n_seq, &len);
    if (rc) return rc;
    A->progress(ctx, 0.0, "calibrating on %zu x %zu tokens", n_seq, len);
    qz_collect_arg a = {ctx, st};
    rc = A->calibrate(ctx, m, tok, n_seq, len, qz_stats_input, &a);
    free(tok);
    if (rc) return rc;
    for (size_t i = 0; i < st->n; i++) {
        if (st->root[i] == -2)
            return A->set_error(ctx, LLMOPT_EINVAL, "'%s' saw no calibration input: it is not a linear layer of the forward "
                                "pass (exclude it)", st->names[i]);
        if (st->root[i] == (int)i) qz_stats_mirror(st, i);
    }
    return 0;
}

void qz_stats_free(qz_stats *st) {
    for (size_t i = 0; st->gram && i < st->n; i++) {
        free(st->gram[i]);
        free(st->absum[i]);
        if (st->sumsq) free(st->sumsq[i]);
    }
    free(st->cols), free(st->root), free(st->gram), free(st->absum), free(st->rows), free(st->sumsq);
    memset(st, 0, sizeof *st);
}

/* ---- evaluation: both models on the same tokens, in consecutive windows of the context ----
 * perplexity of each, and how far the output's next-token distributions moved from the input's:
 * mean KL(p_in || p_out) and top-1 agreement (what llama.cpp's perplexity tool reports). */

typedef struct eval_acc {
    double nll_in, nll_out, kl;
    size_t count, agree;
} eval_acc;

/* log-softmax of logits into lp; returns the argmax */
static int log_softmax(const float *logits, int vocab, double *lp) {
    int arg = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[arg]) arg = i;
    double max = logits[arg], sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - max);
    double lse = log(sum) + max;
    for (int i = 0; i < vocab; i++) lp[i] = (double)logits[i] - lse;
    return arg;
}

static void score(const float *li, const float *lo, int vocab, int32_t target, double *a, double *b, eval_acc *e) {
    int ai = log_softmax(li, vocab, a), ao = log_softmax(lo, vocab, b);
    double kl = 0;
    for (int i = 0; i < vocab; i++) kl += exp(a[i]) * (a[i] - b[i]);
    e->nll_in -= a[target], e->nll_out -= b[target], e->kl += kl;
    e->agree += ai == ao;
    e->count++;
}

#define CHUNK 128

static int compare(llmopt_stage_ctx *ctx, const llmopt_model *in, const llmopt_model *out, const int32_t *ids, size_t n,
                   eval_acc *e) {
    int vocab = A->model_vocab(out), window = A->model_context(out);
    if (A->model_vocab(in) != vocab) return A->set_error(ctx, LLMOPT_EINVAL, "the input and output vocabularies differ");
    llmopt_session *si = A->session_new(ctx, in, window), *so = si ? A->session_new(ctx, out, window) : NULL;
    float *li = malloc((size_t)CHUNK * (size_t)vocab * sizeof *li), *lo = malloc((size_t)CHUNK * (size_t)vocab * sizeof *lo);
    double *a = malloc((size_t)vocab * sizeof *a), *b = malloc((size_t)vocab * sizeof *b);
    int rc = !si || !so ? LLMOPT_EFAIL : 0;
    if (!rc && (!li || !lo || !a || !b)) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (size_t w = 0; !rc && w + 1 < n; w += (size_t)window) {
        size_t end = w + (size_t)window < n ? w + (size_t)window : n;
        A->session_rewind(si, 0);
        A->session_rewind(so, 0);
        for (size_t p = w; !rc && p + 1 < end; p += CHUNK) {
            size_t k = end - 1 - p < CHUNK ? end - 1 - p : CHUNK; /* positions p..p+k-1 predict p+1..p+k */
            rc = A->session_forward(ctx, si, ids + p, (int)k, li, 1);
            if (!rc) rc = A->session_forward(ctx, so, ids + p, (int)k, lo, 1);
            for (size_t j = 0; !rc && j < k; j++)
                score(li + j * (size_t)vocab, lo + j * (size_t)vocab, vocab, ids[p + j + 1], a, b, e);
        }
        if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    }
    free(li), free(lo), free(a), free(b);
    A->session_free(si);
    A->session_free(so);
    return rc;
}

int qz_eval_pair(llmopt_stage_ctx *ctx, const llmopt_model *in, const llmopt_model *out, const char *entry) {
    char *text = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    int rc = A->data_read(ctx, entry, &text, &len);
    if (!rc) rc = A->tokenize(ctx, out, text, len, 1, &ids, &n);
    A->mem_free(text);
    if (rc) return rc;
    size_t max = (size_t)A->param_int(ctx, "eval_tokens");
    if (max && n > max) n = max;
    eval_acc e = {0};
    if (n < 2) rc = A->set_error(ctx, LLMOPT_EINVAL, "eval_data '%s' has %zu tokens; perplexity needs at least 2", entry, n);
    if (!rc) A->progress(ctx, 0.95, "comparing with the input on %zu tokens", n);
    if (!rc) rc = compare(ctx, in, out, ids, n, &e);
    A->mem_free(ids);
    if (rc) return rc;
    double c = (double)e.count, p0 = exp(e.nll_in / c), p1 = exp(e.nll_out / c);
    A->metric(ctx, "ppl_input", p0, NULL, LLMOPT_BETTER_LOWER);
    A->metric(ctx, "ppl", p1, NULL, LLMOPT_BETTER_LOWER);
    A->metric(ctx, "ppl_ratio", p1 / p0, NULL, LLMOPT_BETTER_LOWER);
    A->metric(ctx, "kl_div", e.kl / c, "nats/token", LLMOPT_BETTER_LOWER);
    A->metric(ctx, "top1_agree", (double)e.agree / c, NULL, LLMOPT_BETTER_HIGHER);
    return 0;
}

int qz_finish(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const qz_selection *sel) {
    double params = 0, bytes = 0;
    for (size_t i = 0; i < sel->n; i++) {
        const llmopt_tensor *t = A->model_get(out, sel->names[i]);
        params += (double)A->tensor_numel(t);
        bytes += (double)t->nbytes;
    }
    size_t n_in = A->model_nbytes(in), n_out = A->model_nbytes(out);
    A->metric(ctx, "size_bytes", (double)n_out, "B", LLMOPT_BETTER_LOWER);
    A->metric(ctx, "size_ratio", n_out ? (double)n_in / (double)n_out : 0, NULL, LLMOPT_BETTER_HIGHER);
    A->metric(ctx, "bits_per_weight", params ? 8.0 * bytes / params : 0, "bits", LLMOPT_BETTER_LOWER);
    A->metric(ctx, "converted_params", params, NULL, LLMOPT_BETTER_NONE);
    A->metric(ctx, "converted_bytes", bytes, "B", LLMOPT_BETTER_LOWER);
    const char *entry = A->param_str(ctx, "eval_data");
    int rc = entry && *entry ? qz_eval_pair(ctx, in, out, entry) : 0;
    if (rc) {
        A->model_unref(out);
        return rc;
    }
    return A->stage_set_output(ctx, out);
}
