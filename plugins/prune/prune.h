/* The prune plugin's parts: the numeric cores of magnitude pruning, Wanda and SparseGPT on one
 * layer (mask.c, plain arrays, so the unit tests run them on random layers) and the stages
 * (stages.c). Layer selection, calibration statistics, the inverse Hessian factor and the
 * comparison with the input model are the quantize plugin's (plugins/quantize, compiled in). */
#ifndef PLUGINS_PRUNE_PRUNE_H
#define PLUGINS_PRUNE_PRUNE_H

#include <stddef.h>
#include <stdint.h>
#include <llmopt/llmopt.h>

extern const llmopt_stage_desc pr_magnitude_stage, pr_wanda_stage, pr_sparsegpt_stage;

/* What to remove from a layer W [rows, cols] (rows = outputs, cols = inputs): with m == 0, the
 * fraction `sparsity` of the comparison group (per layer for magnitude, per output row for
 * Wanda, per block of columns for SparseGPT), exactly floor(size * sparsity) weights; with
 * m > 0 (N:M, as sparse tensor cores take it), all but the n largest-scoring of every m
 * consecutive inputs of a row (cols % m == 0). */
typedef struct pr_pattern {
    double sparsity;
    int n, m;
} pr_pattern;

/* Parses "unstructured" (m = 0) or "N:M" (0 < N < M <= 256); -1 when s is neither. */
int pr_pattern_parse(const char *s, pr_pattern *p);

/* mask [rows * cols] gets 1 where a weight is pruned: the lowest-scoring weights, ties broken
 * by position (a stable sort, as torch.sort(stable=True)); score [rows, cols] is read only.
 * per_row: unstructured groups are rows (Wanda) rather than the whole layer (magnitude).
 * -1 when out of memory. */
int pr_mask_lowest(const float *score, int64_t rows, int64_t cols, const pr_pattern *p, int per_row, uint8_t *mask);

/* Magnitude pruning (the baseline of Han et al. 2015 and of the Wanda and SparseGPT papers,
 * layer-wise): score |W|, one group a layer. W is pruned in place; returns -1 when out of memory. */
int pr_magnitude_layer(float *W, int64_t rows, int64_t cols, const pr_pattern *p);

/* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models",
 * section 3): score |W_ij| * ||X_j||_2, compared per output row. sumsq [cols] is sum x_j^2 over
 * the calibration tokens. W is pruned in place; -1 when out of memory. */
int pr_wanda_layer(float *W, int64_t rows, int64_t cols, const double *sumsq, const pr_pattern *p);

typedef struct pr_sparsegpt_opts {
    pr_pattern pattern;
    double damp;  /* lambda = damp * mean(diag H) */
    int block;    /* columns per mask selection and lazy batch (128) */
} pr_sparsegpt_opts;

/* SparseGPT (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
 * Pruned in One-Shot", Algorithm 1): for H = 2 X X^T / n ([cols, cols], read only), columns are
 * pruned one at a time and each one's error w - q is spread over the later columns of its row
 * through the upper Cholesky factor of H^-1 (optimal brain surgeon updates), in lazy batches of
 * `block` columns; the mask of each block is chosen when the block is reached, from the
 * weights as updated so far, by w^2 / [H^-1]_jj^2 (adaptive mask selection), over the whole
 * block for unstructured patterns, per row and m columns for N:M. W [rows, cols] is replaced
 * in place. *damp_used gets the dampening used; non-zero with a message in msg on failure. */
int pr_sparsegpt_layer(float *W, int64_t rows, int64_t cols, const float *H, const pr_sparsegpt_opts *o,
                       double *damp_used, char *msg, size_t msg_len);

#endif
