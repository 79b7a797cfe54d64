/* The numeric cores of the prune stages: which weights of a layer go (magnitude, Wanda) and
 * SparseGPT's optimal-brain-surgeon reconstruction, on plain arrays. Shapes: W [rows, cols],
 * rows = outputs, cols = inputs (a linear layer's y = W x). */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "prune.h"
#include "quantize.h"

#define A qz_api

int pr_pattern_parse(const char *s, pr_pattern *p) {
    if (strcmp(s, "unstructured") == 0) {
        p->n = p->m = 0;
        return 0;
    }
    int n = 0, m = 0, used = 0;
    if (sscanf(s, "%d:%d%n", &n, &m, &used) != 2 || s[used] != '\0' || n <= 0 || m <= n || m > 256) return -1;
    p->n = n, p->m = m;
    return 0;
}

/* The k-th smallest (from 0) of v [n], k < n; v is reordered (Wirth's selection, expected
 * linear time). */
static float kth_smallest(float *v, size_t n, size_t k) {
    int64_t l = 0, h = (int64_t)n - 1, kk = (int64_t)k;
    while (l < h) {
        const float x = v[kk];
        int64_t i = l, j = h;
        do {
            while (v[i] < x) i++;
            while (x < v[j]) j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j], v[j] = t;
                i++, j--;
            }
        } while (i <= j);
        if (j < kk) l = i;
        if (kk < i) h = j;
    }
    return v[kk];
}

/* Marks the k lowest of score [n] in mask: those below the k-th smallest value, then those
 * equal to it in order of position, as a stable sort ranks them. tmp: scratch of n floats. */
static void mark_lowest(const float *score, size_t n, size_t k, uint8_t *mask, float *tmp) {
    if (k == 0) return;
    for (size_t i = 0; i < n; i++) tmp[i] = score[i];
    const float t = kth_smallest(tmp, n, k - 1);
    size_t below = 0;
    for (size_t i = 0; i < n; i++) below += score[i] < t;
    size_t ties = k - below;
    for (size_t i = 0; i < n; i++) {
        const float s = score[i];
        if (s < t) mask[i] = 1;
        else if (s == t && ties) mask[i] = 1, ties--;
    }
}

/* N:M: in each of a row's groups of m, the m - n lowest-scoring go (ties: the earlier first) */
static void mark_nm(const float *score, int64_t cols, int n, int m, uint8_t *mask) {
    for (int64_t c0 = 0; c0 < cols; c0 += m) {
        int idx[256];
        for (int i = 0; i < m; i++) idx[i] = i;
        for (int i = 1; i < m; i++) /* insertion sort by (score, position): m is small */
            for (int j = i; j > 0 && score[c0 + idx[j]] < score[c0 + idx[j - 1]]; j--) {
                int t = idx[j];
                idx[j] = idx[j - 1], idx[j - 1] = t;
            }
        for (int i = 0; i < m - n; i++) mask[c0 + idx[i]] = 1;
    }
}

typedef struct rows_job {
    const float *score;
    int64_t cols;
    const pr_pattern *p;
    uint8_t *mask;
    atomic_int failed;
} rows_job;

static void mask_rows(void *arg, int64_t r0, int64_t r1) {
    rows_job *j = arg;
    float *tmp = j->p->m ? NULL : malloc((size_t)j->cols * sizeof *tmp);
    if (!j->p->m && !tmp) {
        atomic_store(&j->failed, 1);
        return;
    }
    const size_t k = (size_t)floor((double)j->cols * j->p->sparsity);
    for (int64_t r = r0; r < r1; r++) {
        if (j->p->m) mark_nm(j->score + r * j->cols, j->cols, j->p->n, j->p->m, j->mask + r * j->cols);
        else mark_lowest(j->score + r * j->cols, (size_t)j->cols, k, j->mask + r * j->cols, tmp);
    }
    free(tmp);
}

int pr_mask_lowest(const float *score, int64_t rows, int64_t cols, const pr_pattern *p, int per_row, uint8_t *mask) {
    memset(mask, 0, (size_t)(rows * cols));
    if (!p->m && !per_row) {
        const size_t n = (size_t)(rows * cols);
        float *tmp = malloc(n * sizeof *tmp);
        if (!tmp) return -1;
        mark_lowest(score, n, (size_t)floor((double)n * p->sparsity), mask, tmp);
        free(tmp);
        return 0;
    }
    rows_job j = {.score = score, .cols = cols, .p = p, .mask = mask};
    atomic_init(&j.failed, 0);
    A->parallel_for(rows, 16, mask_rows, &j);
    return atomic_load(&j.failed) ? -1 : 0;
}

/* W *= !mask, with the score of each weight made by the caller */
static int prune_by(float *W, int64_t rows, int64_t cols, float *score, const pr_pattern *p, int per_row) {
    uint8_t *mask = malloc((size_t)(rows * cols));
    int rc = mask ? pr_mask_lowest(score, rows, cols, p, per_row, mask) : -1;
    for (int64_t i = 0; !rc && i < rows * cols; i++)
        if (mask[i]) W[i] = 0;
    free(mask);
    return rc;
}

int pr_magnitude_layer(float *W, int64_t rows, int64_t cols, const pr_pattern *p) {
    if (rows <= 0 || cols <= 0) return 0;
    float *score = malloc((size_t)(rows * cols) * sizeof *score);
    if (!score) return -1;
    for (int64_t i = 0; i < rows * cols; i++) score[i] = fabsf(W[i]);
    int rc = prune_by(W, rows, cols, score, p, 0);
    free(score);
    return rc;
}

int pr_wanda_layer(float *W, int64_t rows, int64_t cols, const double *sumsq, const pr_pattern *p) {
    if (rows <= 0 || cols <= 0) return 0;
    float *score = malloc((size_t)(rows * cols) * sizeof *score), *norm = malloc((size_t)cols * sizeof *norm);
    if (!score || !norm) {
        free(score), free(norm);
        return -1;
    }
    for (int64_t c = 0; c < cols; c++) norm[c] = (float)sqrt(sumsq[c]);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) score[r * cols + c] = fabsf(W[r * cols + c]) * norm[c];
    int rc = prune_by(W, rows, cols, score, p, 1);
    free(score), free(norm);
    return rc;
}

/* ---- SparseGPT ---- */

/* One block [i1, i2) of the columns for rows [r0, r1): with the mask chosen (unstructured) or
 * chosen here m columns at a time (N:M), each column's pruned weights are zeroed and the error
 * (w - q) / [H^-1]_ii spread over the block's later columns; then the lazy update of the
 * columns after the block, W[:, i2:] -= Err Hinv[i1:i2, i2:]. */
typedef struct sgpt_job {
    float *W;
    const float *Hinv;
    uint8_t *mask; /* [rows, cnt]: the block's mask */
    int64_t cols, i1, i2;
    int n, m;
    atomic_int failed;
} sgpt_job;

static void sgpt_rows(void *arg, int64_t r0, int64_t r1) {
    sgpt_job *j = arg;
    const int64_t cols = j->cols, i1 = j->i1, i2 = j->i2, cnt = i2 - i1, nr = r1 - r0;
    const float *Hinv = j->Hinv;
    float *Err = malloc((size_t)(nr * cnt) * sizeof *Err), *tmp = j->m ? malloc((size_t)j->m * sizeof *tmp) : NULL;
    if (!Err || (j->m && !tmp)) {
        free(Err), free(tmp);
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        float *wr = j->W + r * cols, *er = Err + (r - r0) * cnt;
        uint8_t *mr = j->mask + r * cnt;
        for (int64_t i = i1; i < i2; i++) {
            if (j->m && (i - i1) % j->m == 0) { /* w^2 / [H^-1]_jj^2 of the next m columns, as updated */
                for (int k = 0; k < j->m; k++) {
                    const float d = Hinv[(i + k) * cols + i + k];
                    tmp[k] = wr[i + k] * wr[i + k] / (d * d);
                }
                mark_nm(tmp, j->m, j->n, j->m, mr + (i - i1));
            }
            const float w = wr[i], q = mr[i - i1] ? 0.0f : w, e = (w - q) / Hinv[i * cols + i];
            er[i - i1] = e;
            const float *hr = Hinv + i * cols;
            for (int64_t k = i + 1; k < i2; k++) wr[k] -= e * hr[k];
            wr[i] = q;
        }
    }
    if (i2 < cols)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)(cols - i2), (int)cnt, -1.0f, Err, (int)cnt,
                    Hinv + i1 * cols + i2, (int)cols, 1.0f, j->W + r0 * cols + i2, (int)cols);
    free(Err), free(tmp);
}

int pr_sparsegpt_layer(float *W, int64_t rows, int64_t cols, const float *Hin, const pr_sparsegpt_opts *o,
                       double *damp_used, char *msg, size_t msg_len) {
    const pr_pattern *p = &o->pattern;
    if (p->m && cols % p->m != 0) {
        snprintf(msg, msg_len, "%d:%d needs inputs in groups of %d; the layer has %lld", p->n, p->m, p->m, (long long)cols);
        return LLMOPT_EINVAL;
    }
    int64_t B = o->block > 0 ? o->block : 128;
    if (p->m) B = (B + p->m - 1) / p->m * p->m; /* an N:M group never straddles two blocks */
    if (B > cols) B = cols;
    double *H = malloc((size_t)(cols * cols) * sizeof *H), *U = malloc((size_t)(cols * cols) * sizeof *U);
    double *R = malloc((size_t)(cols * cols) * sizeof *R);
    float *Hinv = malloc((size_t)(cols * cols) * sizeof *Hinv), *score = malloc((size_t)(rows * B) * sizeof *score);
    float *tmp = malloc((size_t)(rows * B) * sizeof *tmp);
    uint8_t *mask = malloc((size_t)(rows * B));
    int rc = 0;
    if (!H || !U || !R || !Hinv || !score || !tmp || !mask) {
        snprintf(msg, msg_len, "out of memory for a %lld x %lld layer", (long long)rows, (long long)cols);
        rc = LLMOPT_ENOMEM;
        goto done;
    }
    for (int64_t i = 0; i < cols * cols; i++) H[i] = Hin[i];
    /* dead inputs (never non-zero in the calibration set): H_ii = 1 and the weight 0, as the
     * reference implementation does */
    for (int64_t i = 0; i < cols; i++)
        if (H[i * cols + i] == 0) {
            H[i * cols + i] = 1;
            for (int64_t r = 0; r < rows; r++) W[r * cols + i] = 0;
        }
    double damp = o->damp;
    if (qz_damped_inverse_upper(H, cols, &damp, U, R, msg, msg_len)) {
        rc = LLMOPT_EFAIL;
        goto done;
    }
    if (damp_used) *damp_used = damp;
    for (int64_t i = 0; i < cols * cols; i++) Hinv[i] = (float)U[i];

    for (int64_t i1 = 0; i1 < cols; i1 += B) {
        const int64_t i2 = i1 + B < cols ? i1 + B : cols, cnt = i2 - i1;
        memset(mask, 0, (size_t)(rows * cnt));
        if (!p->m) { /* the block's mask, over all its rows and columns at once */
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cnt; c++) {
                    const float w = W[r * cols + i1 + c], d = Hinv[(i1 + c) * cols + i1 + c];
                    score[r * cnt + c] = w * w / (d * d);
                }
            const size_t n = (size_t)(rows * cnt);
            mark_lowest(score, n, (size_t)floor((double)n * p->sparsity), mask, tmp);
        }
        sgpt_job j = {.W = W, .Hinv = Hinv, .mask = mask, .cols = cols, .i1 = i1, .i2 = i2, .n = p->n, .m = p->m};
        atomic_init(&j.failed, 0);
        A->parallel_for(rows, 8, sgpt_rows, &j);
        if (atomic_load(&j.failed)) {
            snprintf(msg, msg_len, "out of memory");
            rc = LLMOPT_ENOMEM;
            goto done;
        }
    }
done:
    free(H), free(U), free(R), free(Hinv), free(score), free(tmp), free(mask);
    return rc;
}
