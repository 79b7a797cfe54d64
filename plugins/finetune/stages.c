/* finetune.full and finetune.lora: the stages over an input model (finetune.qlora, in qlora.c,
 * trains LoRA through ft_lora_train below). LoRA adapters are saved in
 * PEFT's on-disk format (adapter/adapter_config.json, adapter/adapter_model.safetensors), so
 * PeftModel.from_pretrained loads them onto the transformers model. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "finetune.h"

#define A ft_api

/* A LIST parameter as an array of borrowed strings (NULL when empty). */
static const char **param_list(llmopt_stage_ctx *ctx, const char *name, size_t *n) {
    *n = A->param_list_len(ctx, name);
    if (*n == 0) return NULL;
    const char **v = calloc(*n, sizeof *v);
    for (size_t i = 0; v && i < *n; i++) v[i] = A->param_list_at(ctx, name, i);
    return v;
}

static int full_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    size_t n = 0;
    const char **trainable = param_list(ctx, "trainable", &n);
    ft_job job = {.model = m, .trainable = trainable, .n_trainable = n};
    llmopt_trainer *t = NULL;
    int rc = ft_train(ctx, &job, &t);
    free(trainable);
    llmopt_model *out = NULL;
    if (!rc) rc = A->trainer_export(ctx, t, 0, &out);
    A->trainer_free(t);
    return rc ? rc : A->stage_set_output(ctx, out);
}

/* ---- LoRA ---- */

static char *path_join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* PEFT's target_modules: the names as given when they are plain module names (PEFT matches
 * them as suffixes, as we do), else a regex (PEFT fullmatches a string) of exactly the modules
 * that got adapters. */
static json_t *target_modules(const char *const *targets, size_t n, const llmopt_model *adapters) {
    int plain = 1;
    for (size_t i = 0; i < n; i++)
        if (strpbrk(targets[i], "*.?[")) plain = 0;
    if (plain) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(a, json_string(targets[i]));
        return a;
    }
    size_t cap = 64, len = 0;
    char *re = malloc(cap);
    if (!re) return NULL;
    len = (size_t)snprintf(re, cap, "^(");
    const char *prefix = "base_model.model.", *suffix = ".lora_A.weight";
    int first = 1;
    for (size_t i = 0; i < A->model_n_tensors(adapters); i++) {
        const char *name = A->model_tensor_name(adapters, i);
        size_t nl = strlen(name), sl = strlen(suffix), pl = strlen(prefix);
        if (nl <= sl + pl || strcmp(name + nl - sl, suffix) != 0) continue;
        size_t need = len + 2 * (nl - sl - pl) + 8;
        if (need > cap) {
            while (cap < need) cap *= 2;
            char *r = realloc(re, cap);
            if (!r) { free(re); return NULL; }
            re = r;
        }
        if (!first) re[len++] = '|';
        first = 0;
        for (size_t k = pl; k < nl - sl; k++) {
            if (name[k] == '.') re[len++] = '\\';
            re[len++] = name[k];
        }
    }
    snprintf(re + len, cap - len, ")$");
    json_t *s = json_string(re);
    free(re);
    return s;
}

static int save_adapter(llmopt_stage_ctx *ctx, llmopt_trainer *t, const char *const *targets, size_t n_targets,
                        int rank, double alpha, double dropout, int fan_in_fan_out) {
    llmopt_model *ad = NULL;
    int rc = A->trainer_lora_export(ctx, t, &ad);
    if (rc) return rc;
    char *dir = path_join(A->stage_dir(ctx), "adapter");
    char *st = dir ? path_join(dir, "adapter_model.safetensors") : NULL;
    char *cfgp = dir ? path_join(dir, "adapter_config.json") : NULL;
    if (!st || !cfgp) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    if (!rc && mkdir(dir, 0777) != 0 && errno != EEXIST)
        rc = A->set_error(ctx, LLMOPT_EIO, "%s: cannot create: %s", dir, strerror(errno));
    if (!rc) rc = A->tensors_save(ctx, ad, st);
    if (!rc) {
        /* the fields PEFT's LoraConfig (0.14) writes; from_pretrained reads them back */
        const char *base = A->param_str(ctx, "base_model_name_or_path");
        json_t *c = json_object();
        json_object_set_new(c, "peft_type", json_string("LORA"));
        json_object_set_new(c, "task_type", json_string("CAUSAL_LM"));
        json_object_set_new(c, "base_model_name_or_path", json_string(base ? base : ""));
        json_object_set_new(c, "r", json_integer(rank));
        json_object_set_new(c, "lora_alpha", json_real(alpha));
        json_object_set_new(c, "lora_dropout", json_real(dropout));
        json_object_set_new(c, "target_modules", target_modules(targets, n_targets, ad));
        json_object_set_new(c, "bias", json_string("none"));
        json_object_set_new(c, "fan_in_fan_out", json_boolean(fan_in_fan_out));
        json_object_set_new(c, "inference_mode", json_true());
        json_object_set_new(c, "init_lora_weights", json_true());
        json_object_set_new(c, "modules_to_save", json_null());
        json_object_set_new(c, "layers_to_transform", json_null());
        json_object_set_new(c, "layers_pattern", json_null());
        json_object_set_new(c, "rank_pattern", json_object());
        json_object_set_new(c, "alpha_pattern", json_object());
        json_object_set_new(c, "use_rslora", json_false());
        json_object_set_new(c, "use_dora", json_false());
        json_object_set_new(c, "revision", json_null());
        if (json_dump_file(c, cfgp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
            rc = A->set_error(ctx, LLMOPT_EIO, "%s: cannot write", cfgp);
        json_decref(c);
    }
    A->model_unref(ad);
    free(dir), free(st), free(cfgp);
    return rc;
}

int ft_lora_train(llmopt_stage_ctx *ctx, const llmopt_model *m, int merge, llmopt_model **out) {
    *out = NULL;
    const char *arch = A->model_arch(m);
    size_t n = 0;
    const char **targets = param_list(ctx, "targets", &n);
    static const char *gpt2_default[] = {"c_attn"}, *llama_default[] = {"q_proj", "v_proj"};
    const char *const *tg = targets;
    if (n == 0) { /* PEFT's defaults for the architecture */
        int gpt2 = arch && strcmp(arch, "gpt2") == 0;
        tg = gpt2 ? gpt2_default : llama_default;
        n = gpt2 ? 1 : 2;
    }
    int rank = (int)A->param_int(ctx, "rank");
    double alpha = A->param_float(ctx, "alpha"), dropout = A->param_float(ctx, "dropout");
    ft_job job = {.model = m, .lora_rank = rank, .lora_alpha = (float)alpha, .lora_dropout = (float)dropout,
                  .lora_targets = tg, .n_lora_targets = n};
    llmopt_trainer *t = NULL;
    int rc = ft_train(ctx, &job, &t);
    /* GPT-2's linear layers are Conv1D, weights stored [in, out]: PEFT's fan_in_fan_out */
    if (!rc) rc = save_adapter(ctx, t, tg, n, rank, alpha, dropout, arch && strcmp(arch, "gpt2") == 0);
    if (!rc) rc = A->trainer_export(ctx, t, merge, out);
    A->trainer_free(t);
    free(targets);
    return rc;
}

static int lora_run(llmopt_stage_ctx *ctx) {
    llmopt_model *out = NULL;
    int rc = ft_lora_train(ctx, A->stage_input(ctx, "model"), A->param_bool(ctx, "merge"), &out);
    return rc ? rc : A->stage_set_output(ctx, out);
}

static const llmopt_param_desc full_params[] = {
    {.name = "trainable", .type = LLMOPT_PARAM_LIST, .default_value = "",
     .doc = "checkpoint names (globs, '*') of the tensors to train; empty = every floating-point tensor"},
    FT_COMMON_PARAMS,
};
static const llmopt_param_desc lora_params[] = {
    FT_LORA_PARAMS,
    FT_COMMON_PARAMS,
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to fine-tune"}};

const llmopt_stage_desc ft_full_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "finetune.full",
    .summary = "full fine-tuning (all parameters or a chosen subset) with AdamW",
    .doc = "Trains every floating-point tensor, or those matching `trainable`, on text or JSONL SFT data.\n"
           "Metrics: train_loss, val_loss, val_ppl, tokens_per_s (every input position), target_tokens_per_s,\n"
           "steady_tokens_per_s (after the first step), train_tokens, train_s, peak_rss_bytes, trainable_params, steps.",
    LLMOPT_STAGE_PARAMS(full_params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = full_run,
};

const llmopt_stage_desc ft_lora_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "finetune.lora",
    .summary = "LoRA fine-tuning (Hu et al. 2021), adapters saved in PEFT's format",
    .doc = "Freezes the model and trains rank-r adapters on the target modules. Writes\n"
           "adapter/adapter_config.json and adapter/adapter_model.safetensors (PeftModel.from_pretrained\n"
           "loads them). The output model is the base, or with merge: true the merged checkpoint.\n"
           "Metrics: train_loss, val_loss, val_ppl, tokens_per_s (every input position), target_tokens_per_s,\n"
           "steady_tokens_per_s (after the first step), train_tokens, train_s, peak_rss_bytes, trainable_params, steps.",
    LLMOPT_STAGE_PARAMS(lora_params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = lora_run,
};
