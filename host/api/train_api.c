/* The training part of the host API table: the engine of runtime/train.h behind an opaque
 * llmopt_trainer, plus what training stages need to write their results (models, plain
 * safetensors files, side files) and to render chat data. Errors go to the stage context. */
#include <stdlib.h>
#include <string.h>

#include "train_api.h"
#include "runtime_api.h"
#include "../runtime/chat_template.h"
#include "../runtime/runtime.h"
#include "../runtime/train.h"

struct llmopt_trainer {
    tr_trainer *t;
};

static int fail(llmopt_stage_ctx *ctx, const llmopt_error *e) {
    if (ctx) {
        ctx->err = *e;
        if (!ctx->err.status) ctx->err.status = LLMOPT_EFAIL;
    }
    return e->status ? e->status : LLMOPT_EFAIL;
}

static void api_train_options_default(llmopt_train_options *o) {
    tr_options d;
    tr_options_default(&d);
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->batch = d.batch, o->seq = d.seq, o->lora_rank = d.lora_rank;
    o->lora_alpha = d.lora_alpha, o->lora_dropout = d.lora_dropout;
    o->beta1 = d.beta1, o->beta2 = d.beta2, o->eps = d.eps, o->weight_decay = d.weight_decay;
    o->seed = d.seed;
    o->optimizer_bits = 32;
}

static llmopt_trainer *api_trainer_new(llmopt_stage_ctx *ctx, const llmopt_model *m, const llmopt_train_options *o) {
    llmopt_error err = {0};
    if (!o || o->struct_size < offsetof(llmopt_train_options, seed) + sizeof o->seed) {
        error_set(&err, LLMOPT_EINVAL, "trainer_new: options too small (fill them with train_options_default)");
        fail(ctx, &err);
        return NULL;
    }
    tr_options t;
    tr_options_default(&t);
    t.batch = o->batch, t.seq = o->seq;
    t.trainable = o->trainable, t.n_trainable = o->n_trainable;
    t.lora_rank = o->lora_rank, t.lora_alpha = o->lora_alpha, t.lora_dropout = o->lora_dropout;
    t.lora_targets = o->lora_targets, t.n_lora_targets = o->n_lora_targets;
    t.beta1 = o->beta1, t.beta2 = o->beta2, t.eps = o->eps, t.weight_decay = o->weight_decay;
    t.seed = o->seed;
    if (o->struct_size >= offsetof(llmopt_train_options, recompute) + sizeof o->recompute) t.recompute = o->recompute;
    if (o->struct_size >= offsetof(llmopt_train_options, optimizer_bits) + sizeof o->optimizer_bits)
        t.optimizer_bits = o->optimizer_bits;
    if (ctx && ctx->p) t.matmul_precision = ctx->p->matmul_precision;
    llmopt_trainer *h = calloc(1, sizeof *h);
    if (!h) {
        error_set(&err, LLMOPT_ENOMEM, "out of memory");
        fail(ctx, &err);
        return NULL;
    }
    /* the engine references the model and never writes its tensors */
    if (tr_new((llmopt_model *)m, &t, &h->t, &err) != 0) {
        fail(ctx, &err);
        free(h);
        return NULL;
    }
    return h;
}

static void api_trainer_free(llmopt_trainer *t) {
    if (!t) return;
    tr_free(t->t);
    free(t);
}

static size_t api_trainer_n_trainable(const llmopt_trainer *t) { return tr_n_trainable(t->t); }

static int api_trainer_forward_backward(llmopt_stage_ctx *ctx, llmopt_trainer *t, const int32_t *inputs,
                                        const int32_t *targets, double *loss_sum, size_t *n_targets) {
    llmopt_error err = {0};
    return tr_forward_backward(t->t, inputs, targets, loss_sum, n_targets, &err) ? fail(ctx, &err) : 0;
}

static int api_trainer_eval(llmopt_stage_ctx *ctx, llmopt_trainer *t, const int32_t *inputs, const int32_t *targets,
                            double *loss_sum, size_t *n_targets) {
    llmopt_error err = {0};
    return tr_eval(t->t, inputs, targets, loss_sum, n_targets, &err) ? fail(ctx, &err) : 0;
}

static int api_trainer_step(llmopt_stage_ctx *ctx, llmopt_trainer *t, float lr, float clip, float *grad_norm) {
    llmopt_error err = {0};
    float norm = 0;
    if (tr_step(t->t, lr, clip, &norm, &err)) return fail(ctx, &err);
    if (grad_norm) *grad_norm = norm;
    return 0;
}

static void api_trainer_zero_grad(llmopt_trainer *t) { tr_zero_grad(t->t); }
static void api_trainer_finish(llmopt_trainer *t) { tr_finish(t->t); }
static int api_trainer_steps(const llmopt_trainer *t) { return tr_steps(t->t); }

static int api_trainer_export(llmopt_stage_ctx *ctx, llmopt_trainer *t, int merge_lora, llmopt_model **out) {
    llmopt_error err = {0};
    return tr_export(t->t, merge_lora, out, &err) ? fail(ctx, &err) : 0;
}

static int api_trainer_lora_export(llmopt_stage_ctx *ctx, llmopt_trainer *t, llmopt_model **out) {
    llmopt_error err = {0};
    return tr_lora_export(t->t, out, &err) ? fail(ctx, &err) : 0;
}

static int api_trainer_save_state(llmopt_stage_ctx *ctx, const llmopt_trainer *t, const char *dir) {
    llmopt_error err = {0};
    return tr_save_state(t->t, dir, &err) ? fail(ctx, &err) : 0;
}

static int api_trainer_load_state(llmopt_stage_ctx *ctx, llmopt_trainer *t, const char *dir) {
    llmopt_error err = {0};
    return tr_load_state(t->t, dir, &err) ? fail(ctx, &err) : 0;
}

static int api_model_save(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *dir) {
    llmopt_error err = {0};
    return rt_model_save(m, dir, &err) ? fail(ctx, &err) : 0;
}

static int api_tensors_save(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *path) {
    llmopt_error err = {0};
    return rt_safetensors_write(m, path, &err) ? fail(ctx, &err) : 0;
}

static int api_chat_render(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *const *roles,
                           const char *const *contents, size_t n, int add_generation_prompt, char **out,
                           size_t *len) {
    llmopt_error err = {0};
    const tok_tokenizer *t = rt_model_get_file(m, "tokenizer.json", NULL) ? rt_model_tokenizer(m, &err) : NULL;
    if (err.status) return fail(ctx, &err);
    const char *tmpl = t ? tok_chat_template(t) : NULL;
    if (!tmpl) return LLMOPT_ENOTFOUND;
    chat_message *msgs = calloc(n ? n : 1, sizeof *msgs);
    if (!msgs) {
        error_set(&err, LLMOPT_ENOMEM, "out of memory");
        return fail(ctx, &err);
    }
    for (size_t i = 0; i < n; i++) msgs[i].role = roles[i], msgs[i].content = contents[i];
    int32_t bos = tok_bos(t), eos = tok_eos(t);
    int rc = chat_render(tmpl, msgs, n, bos >= 0 ? tok_token(t, bos) : NULL, eos >= 0 ? tok_token(t, eos) : NULL,
                         add_generation_prompt, out, len, &err);
    free(msgs);
    if (rc) {
        error_prefix(&err, "chat template");
        return fail(ctx, &err);
    }
    return 0;
}

void train_api_fill(llmopt_host_api *api) {
    api->train_options_default = api_train_options_default;
    api->trainer_new = api_trainer_new;
    api->trainer_free = api_trainer_free;
    api->trainer_n_trainable = api_trainer_n_trainable;
    api->trainer_forward_backward = api_trainer_forward_backward;
    api->trainer_eval = api_trainer_eval;
    api->trainer_step = api_trainer_step;
    api->trainer_zero_grad = api_trainer_zero_grad;
    api->trainer_steps = api_trainer_steps;
    api->trainer_export = api_trainer_export;
    api->trainer_lora_export = api_trainer_lora_export;
    api->trainer_save_state = api_trainer_save_state;
    api->trainer_load_state = api_trainer_load_state;
    api->trainer_finish = api_trainer_finish;
    api->model_save = api_model_save;
    api->tensors_save = api_tensors_save;
    api->model_set_file = rt_model_set_file;
    api->model_get_file = rt_model_get_file;
    api->model_n_files = rt_model_n_files;
    api->model_file_name = rt_model_file_name;
    api->chat_render = api_chat_render;
}
