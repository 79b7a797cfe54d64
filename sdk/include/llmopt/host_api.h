/* llmopt SDK: the host API table, every host service a plugin may use (the SQLite
 * sqlite3_api_routines pattern). A plugin links against no part of the host: it keeps the table
 * it gets in init and calls through it. The table is append-only; check struct_size (or
 * abi_minor) before using a member added after the minor you were built with. */
#ifndef LLMOPT_HOST_API_H
#define LLMOPT_HOST_API_H

#include "common.h"
#include "tensor.h"
#include "model.h"
#include "stage.h"
#include "kernel.h"

#ifdef __cplusplus
extern "C" {
#endif

struct llmopt_host_api {
    uint32_t struct_size;
    uint16_t abi_major;
    uint16_t abi_minor;
    const char *host_version; /**< e.g. "0.1.0" */

    /* ---- logging ---- */
    /** One line to the host's log (stderr), prefixed with the level. No trailing newline needed. */
    void (*log)(int level, const char *fmt, ...) LLMOPT_PRINTF(2, 3);

    /* ---- dtypes and tensors ---- */
    /** Traits of a dtype, or NULL for an unknown value. */
    const llmopt_dtype_traits *(*dtype_traits)(int dtype);
    /** Looks a dtype up by its name ("f16"); -1 when unknown. */
    int (*dtype_from_name)(const char *name);
    /** A new zero-filled CPU tensor with one reference, owned by the caller; NULL on a bad shape
     *  (rows not a whole number of blocks) or out of memory. Write it before sharing it. */
    llmopt_tensor *(*tensor_new)(int dtype, int ndim, const int64_t *shape);
    /** Adds a reference; returns t. */
    const llmopt_tensor *(*tensor_ref)(const llmopt_tensor *t);
    /** Drops a reference; the storage is freed with the last one. NULL is ignored. */
    void (*tensor_unref)(const llmopt_tensor *t);
    /** Number of elements (product of the shape). */
    int64_t (*tensor_numel)(const llmopt_tensor *t);

    /* ---- models ---- */
    /** An empty model of an architecture ("gpt2", "llama"), refcount 1. */
    llmopt_model *(*model_new)(const char *arch);
    /** A copy sharing every tensor with src (copy on write), refcount 1. */
    llmopt_model *(*model_clone)(const llmopt_model *src);
    /** Drops a reference; NULL is ignored. */
    void (*model_unref)(llmopt_model *m);
    /** The architecture string. */
    const char *(*model_arch)(const llmopt_model *m);
    /** Number of tensors, and the name of the i-th in insertion (checkpoint) order. */
    size_t (*model_n_tensors)(const llmopt_model *m);
    const char *(*model_tensor_name)(const llmopt_model *m, size_t i);
    /** The tensor of that name (borrowed; immutable), or NULL. */
    const llmopt_tensor *(*model_get)(const llmopt_model *m, const char *name);
    /** Sets or replaces a tensor; the model takes its own reference (the caller keeps its). */
    int (*model_set)(llmopt_model *m, const char *name, const llmopt_tensor *t);
    /** Removes a tensor; LLMOPT_ENOTFOUND when absent. */
    int (*model_remove)(llmopt_model *m, const char *name);
    /** Architecture config (config.json) values by key; get returns LLMOPT_ENOTFOUND / NULL
     *  when the key is absent or of the other kind. */
    int (*model_cfg_get_num)(const llmopt_model *m, const char *key, double *out);
    const char *(*model_cfg_get_str)(const llmopt_model *m, const char *key);
    int (*model_cfg_set_num)(llmopt_model *m, const char *key, double v);
    int (*model_cfg_set_str)(llmopt_model *m, const char *key, const char *v);
    /** Total bytes of tensor data, counting shared tensors once per model. */
    size_t (*model_nbytes)(const llmopt_model *m);

    /* ---- the running stage ---- */
    /** The stage's id in the pipeline ("q4"). */
    const char *(*stage_id)(llmopt_stage_ctx *ctx);
    /** The user pointer of the stage's descriptor. */
    void *(*stage_user)(llmopt_stage_ctx *ctx);
    /** An input model by slot name ("model", "teacher"), borrowed; NULL when not wired. */
    const llmopt_model *(*stage_input)(llmopt_stage_ctx *ctx, const char *slot);
    /** Sets the output model; the host takes the caller's reference. */
    int (*stage_set_output)(llmopt_stage_ctx *ctx, llmopt_model *m);
    /** Validated parameter values by name (defaults filled in). Asking for a name that is
     *  not in the schema, or as the wrong type, logs an error and returns 0 / NULL. */
    int (*param_bool)(llmopt_stage_ctx *ctx, const char *name);
    int64_t (*param_int)(llmopt_stage_ctx *ctx, const char *name);
    double (*param_float)(llmopt_stage_ctx *ctx, const char *name);
    const char *(*param_str)(llmopt_stage_ctx *ctx, const char *name); /**< STRING and ENUM */
    size_t (*param_list_len)(llmopt_stage_ctx *ctx, const char *name);
    const char *(*param_list_at)(llmopt_stage_ctx *ctx, const char *name, size_t i);
    /** A pipeline `data:` entry's field ("path", "split") by entry name ("train"), or NULL. */
    const char *(*data_get)(llmopt_stage_ctx *ctx, const char *entry, const char *field);
    /** Records a metric for the report. better: llmopt_better. unit may be NULL. */
    int (*metric)(llmopt_stage_ctx *ctx, const char *name, double value, const char *unit,
                  int better);
    /** Reports progress: fraction in [0,1] (negative when unknown) and a short status. */
    void (*progress)(llmopt_stage_ctx *ctx, double fraction, const char *fmt, ...)
        LLMOPT_PRINTF(3, 4);
    /** Non-zero once the run is cancelled; long loops poll it and return LLMOPT_ECANCELED. */
    int (*cancelled)(llmopt_stage_ctx *ctx);
    /** Records why the stage failed; returns status, so `return api->set_error(ctx, ...)`. */
    int (*set_error)(llmopt_stage_ctx *ctx, int status, const char *fmt, ...) LLMOPT_PRINTF(3, 4);
    /** The pipeline seed mixed with the stage id: deterministic per stage. */
    uint64_t (*seed)(llmopt_stage_ctx *ctx);
    /** A directory for the stage's files. It is renamed into the run directory when the stage
     *  succeeds and removed when it fails, so nothing half-written is ever left. */
    const char *(*stage_dir)(llmopt_stage_ctx *ctx);
    /** The device the pipeline asked for (llmopt_device). */
    int (*device)(llmopt_stage_ctx *ctx);

    /* ---- kernels ---- */
    /** The registered kernel for (op, device, dtype), falling back to dtype ANY; NULL if none. */
    const llmopt_kernel_desc *(*kernel_find)(const char *op, int device, int dtype);

    /* ---- compute threads (plugins start no threads of their own) ---- */
    /** Runs fn(arg, begin, end) over [0, n) split into chunks of at least `grain` items on the
     *  host's compute threads (the caller's thread takes part) and returns when all are done.
     *  Chunks are contiguous and run in no particular order. Safe to call from stage threads;
     *  a nested call runs inline. */
    void (*parallel_for)(int64_t n, int64_t grain, void (*fn)(void *arg, int64_t begin, int64_t end),
                         void *arg);
    /** Number of compute threads parallel_for uses (the --threads option, default: all cores). */
    int (*n_threads)(void);
};
LLMOPT_PIN(llmopt_host_api, abi_major, 4);
LLMOPT_PIN(llmopt_host_api, host_version, 8);
LLMOPT_PIN(llmopt_host_api, log, 16);
LLMOPT_PIN(llmopt_host_api, dtype_traits, 24);
LLMOPT_PIN(llmopt_host_api, tensor_new, 40);
LLMOPT_PIN(llmopt_host_api, model_new, 72);
LLMOPT_PIN(llmopt_host_api, model_nbytes, 176);
LLMOPT_PIN(llmopt_host_api, stage_id, 184);
LLMOPT_PIN(llmopt_host_api, set_error, 296);
LLMOPT_PIN(llmopt_host_api, kernel_find, 328);
LLMOPT_PIN(llmopt_host_api, parallel_for, 336);
LLMOPT_PIN(llmopt_host_api, n_threads, 344);

#ifdef __cplusplus
}
#endif
#endif
