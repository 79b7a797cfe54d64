/* The quantize plugin's shared parts: the host table, layer selection (select.c), calibration
 * statistics and evaluation (calib.c), and the numeric cores of GPTQ (gptq.c) and AWQ (awq.c),
 * which take plain arrays so the unit tests can run them on random layers. */
#ifndef PLUGINS_QUANTIZE_QUANTIZE_H
#define PLUGINS_QUANTIZE_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>
#include <llmopt/llmopt.h>

/* The host API table (set in init; the unit tests set it to the host's own). */
extern const llmopt_host_api *qz_api;

extern const llmopt_stage_desc qz_cast_stage, qz_rtn_stage, qz_gptq_stage, qz_awq_stage, qz_gguf_stage, qz_export_stage;

/* ---- select.c: which tensors a stage touches ---- */

/* Shell-style match: '*' any run of characters (also '.'), '?' one character. */
int qz_glob(const char *pattern, const char *s);

/* The tensors the stage's include/exclude lists select, in checkpoint order. Candidates are
 * f32/f16/bf16 tensors; with weights_only, only 2-D ones named "*.weight" (the linear weights).
 * An include pattern that matches no candidate, or an empty selection, is an error. */
typedef struct qz_selection {
    const char **names; /* borrowed from the input model */
    size_t n;
} qz_selection;
int qz_select(llmopt_stage_ctx *ctx, const llmopt_model *m, int weights_only, qz_selection *sel);
void qz_selection_free(qz_selection *sel);

/* Linear weights are handled as [rows = outputs, cols = inputs], the layout quantized rows take.
 * GPT-2's float Conv1D weights are stored [in, out] (the host's model_linear_layout says which):
 * qz_linear_dims gives a weight's [rows, cols] and returns its stored layout (negative when name
 * is no 2-D tensor); qz_linear_f32 its f32 values as [rows, cols] (transposed from [in, out]);
 * qz_linear_set sets it from [rows, cols] values: quantized types as [rows, cols], float ones
 * back in the stored layout; qz_quantize_linear quantizes one weight of in into out (RTN). */
int qz_linear_dims(const llmopt_model *m, const char *name, int64_t *rows, int64_t *cols);
float *qz_linear_f32(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *name, int64_t *rows, int64_t *cols);
int qz_linear_set(llmopt_stage_ctx *ctx, llmopt_model *m, const char *name, const float *w, int64_t rows, int64_t cols,
                  int layout, int dtype);
int qz_quantize_linear(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const char *name, int dtype);

/* A weight's f32 values (a new [rows, cols] buffer, malloc'd), from f32, f16 or bf16. */
float *qz_weight_f32(llmopt_stage_ctx *ctx, const llmopt_tensor *w);
/* Sets name in m to a new tensor of dtype made from f32 values [rows, cols] (quantized by
 * round to nearest when dtype is block-quantized). */
int qz_set_from_f32(llmopt_stage_ctx *ctx, llmopt_model *m, const char *name, const float *v, int ndim,
                    const int64_t *shape, int dtype);
/* The dtype GQ(bits, group, asym) with a readable error when the host has no such type or the
 * group does not divide a selected row. */
int qz_check_rows(llmopt_stage_ctx *ctx, const llmopt_model *m, const qz_selection *sel, int dtype);

/* GQ(bits, group_size, !sym) from the stage's parameters; group_size 0 means one group per row
 * of cols. Validates bits (2, 3, 4, 8). */
int qz_group_dtype(llmopt_stage_ctx *ctx, int64_t cols);
int qz_validate_group(llmopt_stage_ctx *ctx);

/* GQ blocks (the rules in host/runtime/quant.h): IEEE f16 to f32; a block's scale and offset
 * (the zero point, or 2^(bits-1) for sym); code i of a block's codes (which follow the f16
 * scale, and the f16 zero when asym). */
float qz_f16_to_f32(uint16_t h);
void qz_gq_params(int dtype, const uint8_t *b, float *scale, float *offset);
unsigned qz_gq_code(const uint8_t *codes, int64_t i, int bits);
void qz_gq_set_code(uint8_t *codes, int64_t i, int bits, unsigned q);

/* ---- calib.c: calibration statistics, metrics, evaluation ---- */

/* Per selected weight, statistics of its input x over the calibration set: the Gram matrix
 * G = sum x^T x ([cols, cols] f32) and the per-channel sum of |x|. Weights that read the same
 * input (q/k/v) share one (root). */
typedef struct qz_stats {
    size_t n;
    const char **names;
    int64_t *cols;
    int *root;         /* index whose statistics this weight uses; -2 until it was called */
    float **gram;      /* [n]: set for roots */
    double **absum;    /* [n]: set for roots, unless no_absum */
    int no_absum;      /* set before the first input: only X^T X is wanted (GPTQ) */
    int no_gram;       /* set before the first input: no X^T X (Wanda: the squares alone) */
    double **sumsq;    /* [n]: set for roots when want_sumsq: the sums of x^2 per column */
    int want_sumsq;
    int64_t *rows;     /* [n]: calibration rows seen, for roots */
    int prev;          /* index of the previous call's weight, -1 if none / unselected */
    const float *prev_x;
    int64_t prev_rows;
} qz_stats;

/* Tokenizes the stage's `data` entry into n_samples sequences of seq_len tokens spread evenly
 * over it, runs them through m and fills st for the weights in sel. */
int qz_collect(llmopt_stage_ctx *ctx, const llmopt_model *m, const qz_selection *sel, qz_stats *st);
/* The pieces of qz_collect, for a caller that drives the calibration itself (sequential GPTQ):
 * the calibration tokens of the stage's data/n_samples/seq_len; empty statistics for sel; the
 * calibrate callback (arg: a qz_collect_arg) adding one input; a root's Gram matrix completed. */
typedef struct qz_collect_arg {
    llmopt_stage_ctx *ctx;
    qz_stats *st;
} qz_collect_arg;
int qz_calib_tokens(llmopt_stage_ctx *ctx, const llmopt_model *m, int32_t **out, size_t *n_seq, size_t *seq_len);
/* qz_stats_init keeps what st's no_absum, no_gram and want_sumsq say (set them first, on a
 * zeroed st) and resets the rest. */
int qz_stats_init(llmopt_stage_ctx *ctx, const llmopt_model *m, const qz_selection *sel, qz_stats *st);
int qz_stats_input(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols);
void qz_stats_mirror(qz_stats *st, size_t i);
void qz_stats_free(qz_stats *st);
/* A sequential calibration's block_done, the part GPTQ and the prune stages share: completes the
 * Gram matrices of the roots not done yet, calls fn(arg, i) on each weight i that saw its inputs
 * in this step (root >= 0, !done[i]) and marks it done, then frees the statistics of every root
 * whose weights are all done. A non-zero return from fn stops and is returned. */
int qz_seq_step(qz_stats *st, unsigned char *done, int (*fn)(void *arg, size_t i), void *arg);
int qz_stats_find(const qz_stats *st, const char *name);

/* Both models on the stage's eval_tokens of data entry `entry`, in consecutive windows of the
 * context: metrics ppl_input, ppl, ppl_ratio, kl_div (mean KL(p_in || p_out)) and top1_agree. */
int qz_eval_pair(llmopt_stage_ctx *ctx, const llmopt_model *in, const llmopt_model *out, const char *entry);
/* Records size_bytes, bits_per_weight, ... and, when `eval_data` is set, the perplexity of the
 * input and of the output on it; then hands out to the stage as its output. */
int qz_finish(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const qz_selection *sel);

/* ---- record.c: the method, in config.json's quantization_config ---- */

/* Sets out's quantization_config to {"quant_method": "llmopt", "method": method, <fields>}
 * (fields: JSON members without braces, or NULL); only {"quant_method": "llmopt"} when method is
 * NULL (round to nearest: nothing beyond what the tensors' dtypes say, and no earlier stage's
 * record left standing) or in holds quantized tensors already. */
int qz_record(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const char *method, const char *fields);

/* ---- gptq.c: GPTQ (Frantar et al. 2022, Algorithm 1) on one layer ---- */

typedef struct qz_gptq_opts {
    int dtype;       /* GQ(bits, group, asym) */
    int act_order;   /* columns in order of decreasing H_ii; groups stay contiguous (static) */
    double damp;     /* lambda = damp * mean(diag H) added to the diagonal */
    int block;       /* lazy-batch block size (128) */
} qz_gptq_opts;

/* Quantizes W [rows, cols] (f32) into blocks (rows * cols / group blocks of dtype, row-major)
 * minimising ||(W - Q) X||^2 for the inputs whose H = 2 X X^T / n is given ([cols, cols], read
 * only). A Hessian that is not positive definite is retried with 10x the dampening, up to 1e4x;
 * then LLMOPT_EFAIL with a message in msg. *damp_used gets the dampening used. */
int qz_gptq_layer(const float *W, int64_t rows, int64_t cols, const float *H, const qz_gptq_opts *o, void *blocks,
                  double *damp_used, char *msg, size_t msg_len);

/* ---- hinv.c: the inverse Hessian factor of GPTQ and SparseGPT ---- */

/* U = the upper Cholesky factor of (H + lambda I)^-1 (row-major, [n, n] doubles; H symmetric,
 * read only; R is scratch of n*n doubles), lambda = *damp times H's mean diagonal. When that is
 * not positive definite, *damp is raised 10x at a time up to 5 times. 0 with *damp set to what
 * was used, or -1 with the reason in msg. */
int qz_damped_inverse_upper(const double *H, int64_t n, double *damp, double *U, double *R, char *msg, size_t msg_len);

/* ---- awq.c: activation-aware scaling (Lin et al. 2023, section 3.2) ---- */

/* For weights W[k] [out[k], in] that read the same input, with G = X^T X ([in, in]) and
 * x_mean = mean |x| per input channel: the scales s = x_mean^alpha / sqrt(max * min), alpha on a
 * grid of n_grid points in [0, 1], that minimise sum_k ||(Q(W_k diag(s)) diag(s)^-1 - W_k) X^T||^2.
 * s [in] gets the best scales; err_best and err_rtn (alpha = 0, plain round to nearest) the errors. */
int qz_awq_search(const float *G, const float *x_mean, int64_t in, const float *const *W, const int64_t *out, int n_w,
                  int dtype, int n_grid, float *s, double *err_best, double *err_rtn);
/* AWQ's clipping search on rows [row0, row1) of W [rows, in] (scaled by s already; s NULL: not
 * scaled), G = X^T X of the unscaled inputs: for each row and group of dtype, the clip c in
 * 1, 1 - 1/n_grid, ... (max_shrink * n_grid values) of [-c max|w|, c max|w|] whose quantized
 * group gives the least output error (Q(clip(w)) - w) G_group (Q(clip(w)) - w)^T; W's groups are
 * clipped to it in place. err_before / err_after: the summed errors without / with clipping. */
int qz_awq_clip(float *W, int64_t rows, int64_t in, int64_t row0, int64_t row1, const float *G, const float *s, int dtype,
                int n_grid, double max_shrink, double *err_before, double *err_after);
/* ||(Q(W diag(s)) diag(s)^-1 - W) X^T||^2 through G = X^T X; s NULL means all ones. */
double qz_awq_error(const float *G, int64_t in, const float *W, int64_t out, int dtype, const float *s);

#endif
