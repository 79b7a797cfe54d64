/* Test driver for tests/interop/test_train.py: reads a JSON job on stdin
 *   {"model": DIR, "out": DIR, "inputs": [[ids]...], "targets": [[ids]...] (-100 ignored),
 *    "steps": N, "lr": F, "clip": F, "weight_decay": F, "betas": [F, F], "eps": F, "seed": N,
 *    "threads": N, "lora": {"rank": N, "alpha": F, "dropout": F, "targets": [names]} (optional),
 *    "grads": true|false, "accum": N (optional, default 1), "matmul_precision": "highest"|"medium",
 *    "recompute": 0|1 (optional, tr_options.recompute),
 *    "optimizer_bits": 32|8, "min_8bit": N (optional, tr_options' 8-bit AdamW moments)}
 * runs N optimizer steps on the batch (accum micro-batches of consecutive sequences, one
 * gradient step over all of them), then, when "grads", one more forward/backward, and writes
 * <out>/params/model.safetensors (the trainable tensors after the steps),
 * <out>/grads/model.safetensors (gradients of the mean loss over the targets, as torch's
 * loss.backward() of transformers' loss gives) and <out>/result.json (losses; norms: each step's
 * global gradient norm before clipping, as tr_step reports it). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/loader.h"
#include "runtime/runtime.h"
#include "runtime/threadpool.h"
#include "runtime/train.h"
#include "sched/stage_ctx.h"
#include "util/fs.h"

static int die(const char *what, const llmopt_error *err) {
    fprintf(stderr, "train_driver: %s: %s\n", what, err ? err->msg : "");
    return 1;
}

static double num(json_t *o, const char *key, double dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* Saves tensors (copies, scaled) under dir/model.safetensors. */
static int save(tr_trainer *t, int grads, double scale, const char *dir, llmopt_error *err) {
    llmopt_model *m = rt_model_new("tensors");
    for (size_t i = 0; i < tr_n_params(t); i++) {
        const llmopt_tensor *src = grads ? tr_param_grad(t, i) : tr_param_value(t, i);
        llmopt_tensor *c = rt_tensor_new(LLMOPT_DTYPE_F32, src->ndim, src->shape);
        const float *s = src->data;
        float *d = c->data;
        for (int64_t j = 0; j < rt_tensor_numel(src); j++) d[j] = (float)(s[j] * scale);
        rt_model_set(m, tr_param_name(t, i), c);
        rt_tensor_unref(c);
    }
    int rc = rt_model_save(m, dir, err);
    rt_model_unref(m);
    return rc;
}

/* forward/backward of accum micro-batches of `per` tokens each: summed loss and target count */
static int fb_all(tr_trainer *t, const int32_t *in, const int32_t *tg, int accum, size_t per, double *loss, size_t *n,
                  llmopt_error *err) {
    *loss = 0, *n = 0;
    for (int a = 0; a < accum; a++) {
        double l;
        size_t k;
        int rc = tr_forward_backward(t, in + (size_t)a * per, tg + (size_t)a * per, &l, &k, err);
        if (rc) return rc;
        *loss += l, *n += k;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *plugins = argc > 1 ? argv[1] : getenv("LLMOPT_PLUGINS");
    json_error_t jerr;
    json_t *job = json_loadf(stdin, 0, &jerr);
    if (!job || !plugins) {
        fprintf(stderr, "train_driver: need a JSON job on stdin and the plugin directory (argv[1] or LLMOPT_PLUGINS)\n");
        return 2;
    }
    llmopt_error err = {0};
    tp_set_threads((int)num(job, "threads", 2));
    registry *reg = registry_new();
    const char *dirs[] = {plugins};
    if (loader_load_dirs(reg, dirs, 1, host_api_table(), &err) != 0) return die("loading plugins", &err);
    host_api_set_registry(reg);
    llmopt_model *m = NULL;
    if (rt_model_load(json_string_value(json_object_get(job, "model")), &m, &err) != 0) return die("loading the model", &err);

    json_t *inputs = json_object_get(job, "inputs"), *targets = json_object_get(job, "targets");
    int Bn = (int)json_array_size(inputs), Tn = (int)json_array_size(json_array_get(inputs, 0));
    int32_t *in = calloc((size_t)(Bn * Tn), sizeof *in), *tg = calloc((size_t)(Bn * Tn), sizeof *tg);
    for (int b = 0; b < Bn; b++)
        for (int i = 0; i < Tn; i++) {
            in[b * Tn + i] = (int32_t)json_integer_value(json_array_get(json_array_get(inputs, (size_t)b), (size_t)i));
            tg[b * Tn + i] = (int32_t)json_integer_value(json_array_get(json_array_get(targets, (size_t)b), (size_t)i));
        }
    int accum = (int)num(job, "accum", 1);
    if (accum < 1 || Bn % accum != 0) {
        fprintf(stderr, "train_driver: accum %d does not divide the %d sequences\n", accum, Bn);
        return 2;
    }
    const int mb = Bn / accum; /* sequences per micro-batch */
    tr_options o;
    tr_options_default(&o);
    o.batch = mb, o.seq = Tn;
    o.weight_decay = (float)num(job, "weight_decay", 0.01);
    o.eps = (float)num(job, "eps", 1e-8);
    o.seed = (uint64_t)num(job, "seed", 0);
    o.recompute = (int)num(job, "recompute", 0);
    o.optimizer_bits = (int)num(job, "optimizer_bits", 32);
    o.min_8bit = (int)num(job, "min_8bit", 0);
    const char *prec = json_string_value(json_object_get(job, "matmul_precision"));
    o.matmul_precision = prec && strcmp(prec, "medium") == 0 ? LLMOPT_MATMUL_MEDIUM : LLMOPT_MATMUL_HIGHEST;
    json_t *betas = json_object_get(job, "betas");
    if (betas) o.beta1 = (float)json_number_value(json_array_get(betas, 0)), o.beta2 = (float)json_number_value(json_array_get(betas, 1));
    json_t *lora = json_object_get(job, "lora");
    const char *tnames[32];
    if (lora) {
        o.lora_rank = (int)num(lora, "rank", 4);
        o.lora_alpha = (float)num(lora, "alpha", 8);
        o.lora_dropout = (float)num(lora, "dropout", 0);
        json_t *ts = json_object_get(lora, "targets");
        o.n_lora_targets = json_array_size(ts) < 32 ? json_array_size(ts) : 32;
        for (size_t i = 0; i < o.n_lora_targets; i++) tnames[i] = json_string_value(json_array_get(ts, i));
        o.lora_targets = tnames;
    }
    tr_trainer *t = NULL;
    if (tr_new(m, &o, &t, &err) != 0) return die("tr_new", &err);
    int steps = (int)num(job, "steps", 0);
    float lr = (float)num(job, "lr", 1e-3), clip = (float)num(job, "clip", 0);
    json_t *losses = json_array(), *norms = json_array();
    double loss;
    size_t n;
    for (int s = 0; s < steps; s++) {
        float norm;
        if (fb_all(t, in, tg, accum, (size_t)mb * (size_t)Tn, &loss, &n, &err) || tr_step(t, lr, clip, &norm, &err))
            return die("step", &err);
        json_array_append_new(losses, json_real(loss / (double)n));
        json_array_append_new(norms, json_real(norm));
    }
    const char *out = json_string_value(json_object_get(job, "out"));
    char *pdir = fs_join(out, "params"), *gdir = fs_join(out, "grads"), *rpath = fs_join(out, "result.json");
    if (save(t, 0, 1.0, pdir, &err)) return die("saving params", &err);
    if (json_is_true(json_object_get(job, "grads"))) {
        if (fb_all(t, in, tg, accum, (size_t)mb * (size_t)Tn, &loss, &n, &err)) return die("forward_backward", &err);
        json_array_append_new(losses, json_real(loss / (double)n));
        if (save(t, 1, 1.0 / (double)n, gdir, &err)) return die("saving grads", &err);
    }
    json_t *res = json_pack("{s:o, s:o}", "losses", losses, "norms", norms);
    char *text = json_dumps(res, 0);
    if (fs_write_atomic(rpath, text, strlen(text), &err)) return die("writing result.json", &err);
    free(text), json_decref(res), json_decref(job);
    free(pdir), free(gdir), free(rpath), free(in), free(tg);
    tr_free(t);
    rt_model_unref(m);
    host_api_set_registry(NULL);
    registry_free(reg);
    return 0;
}
