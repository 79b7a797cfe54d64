/* finetune.pretrain: a GPT-2 or Llama model from scratch, initialised as transformers does
 * (_init_weights: weights normal(0, 0.02), biases 0, norms 1; GPT-2's c_proj weights get
 * std 0.02 / sqrt(2 n_layer), Radford et al. 2019 section 2.3), with a tokenizer taken from an
 * input model or a directory, then trained by the shared loop. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune.h"

#define A ft_api

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Standard normal by Box-Muller. */
static double randn(uint64_t *s) {
    double u1 = ((double)(splitmix64(s) >> 11) + 0.5) * 0x1.0p-53, u2 = (double)(splitmix64(s) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* fill: 0 zeros, 1 ones, 2 normal(0, std). cols 0: a vector. */
static int add(llmopt_stage_ctx *ctx, llmopt_model *m, const char *name, int64_t rows, int64_t cols, int fill,
               double std, uint64_t *rng) {
    int64_t shape[2] = {rows, cols};
    llmopt_tensor *t = A->tensor_new(LLMOPT_DTYPE_F32, cols ? 2 : 1, shape);
    if (!t) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory for %s", name);
    float *d = t->data;
    int64_t n = A->tensor_numel(t);
    for (int64_t i = 0; i < n; i++) d[i] = fill == 0 ? 0.0f : fill == 1 ? 1.0f : (float)(std * randn(rng));
    int rc = A->model_set(m, name, t);
    A->tensor_unref(t);
    return rc ? A->set_error(ctx, rc, "cannot add %s", name) : 0;
}

/* The tokenizer's size: one more than the largest id of tokenizer.json's vocabulary and added tokens. */
static int tokenizer_size(const char *json, size_t len) {
    json_t *j = json_loadb(json, len, 0, NULL);
    if (!j) return -1;
    long long max = -1;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(json_object_get(j, "model"), "vocab"), k, v)
        if (json_integer_value(v) > max) max = json_integer_value(v);
    size_t i;
    json_array_foreach(json_object_get(j, "added_tokens"), i, v) {
        long long id = json_integer_value(json_object_get(v, "id"));
        if (id > max) max = id;
    }
    json_decref(j);
    return (int)(max + 1);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

/* The tokenizer files, from the `tokenizer` input model or the `tokenizer` directory. */
static int copy_tokenizer(llmopt_stage_ctx *ctx, llmopt_model *m) {
    const llmopt_model *src = A->stage_input(ctx, "tokenizer");
    const char *dir = A->param_str(ctx, "tokenizer");
    if (src) {
        if (!A->model_get_file(src, "tokenizer.json", NULL))
            return A->set_error(ctx, LLMOPT_EINVAL, "the 'tokenizer' input model has no tokenizer.json");
        for (size_t i = 0; i < A->model_n_files(src); i++) {
            const char *name = A->model_file_name(src, i);
            if (strncmp(name, "tokenizer", 9) != 0 && strcmp(name, "special_tokens_map.json") != 0) continue;
            size_t len = 0;
            const char *data = A->model_get_file(src, name, &len);
            if (A->model_set_file(m, name, data, len)) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        }
        return 0;
    }
    int64_t train_vocab = A->param_int(ctx, "tokenizer_vocab");
    if ((!dir || !*dir) && train_vocab > 0) {
        /* a byte-level BPE trained here on the training data (the same merges as HF's trainer) */
        char *text = NULL;
        size_t len = 0;
        int rc = A->data_read(ctx, A->param_str(ctx, "data"), &text, &len);
        const char *specials[] = {"<|endoftext|>"};
        if (!rc) rc = A->tokenizer_train(ctx, text, len, (int)train_vocab, 2, specials, 1, m);
        A->mem_free(text);
        return rc;
    }
    if (!dir || !*dir)
        return A->set_error(ctx, LLMOPT_EINVAL, "no tokenizer: wire an input (inputs: {tokenizer: <stage>}), set "
                            "the `tokenizer` parameter to a directory with tokenizer.json, or set tokenizer_vocab "
                            "to train one on the data");
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t n = strlen(dir) + strlen(files[i]) + 2, len = 0;
        char *p = malloc(n);
        if (!p) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        snprintf(p, n, "%s/%s", dir, files[i]);
        char *data = read_file(p, &len);
        int rc = 0;
        if (!data && i == 0) rc = A->set_error(ctx, LLMOPT_ENOTFOUND, "tokenizer: cannot read %s", p);
        else if (data && A->model_set_file(m, files[i], data, len)) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        free(p), free(data);
        if (rc) return rc;
    }
    return 0;
}

static int build_gpt2(llmopt_stage_ctx *ctx, llmopt_model *m, int64_t L, int64_t C, int64_t H, int64_t V, int64_t P,
                      int64_t F, uint64_t *rng) {
    const double std = 0.02, proj_std = 0.02 / sqrt(2.0 * (double)L);
    int rc = add(ctx, m, "transformer.wte.weight", V, C, 2, std, rng);
    if (!rc) rc = add(ctx, m, "transformer.wpe.weight", P, C, 2, std, rng);
    for (int64_t l = 0; l < L && !rc; l++) {
        /* Conv1D weights are stored [in, out] */
        struct { const char *suffix; int64_t r, c; int fill; double std; } parts[] = {
            {"ln_1.weight", C, 0, 1, 0},       {"ln_1.bias", C, 0, 0, 0},
            {"attn.c_attn.weight", C, 3 * C, 2, std}, {"attn.c_attn.bias", 3 * C, 0, 0, 0},
            {"attn.c_proj.weight", C, C, 2, proj_std}, {"attn.c_proj.bias", C, 0, 0, 0},
            {"ln_2.weight", C, 0, 1, 0},       {"ln_2.bias", C, 0, 0, 0},
            {"mlp.c_fc.weight", C, F, 2, std}, {"mlp.c_fc.bias", F, 0, 0, 0},
            {"mlp.c_proj.weight", F, C, 2, proj_std}, {"mlp.c_proj.bias", C, 0, 0, 0},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0] && !rc; k++) {
            char name[128];
            snprintf(name, sizeof name, "transformer.h.%lld.%s", (long long)l, parts[k].suffix);
            rc = add(ctx, m, name, parts[k].r, parts[k].c, parts[k].fill, parts[k].std, rng);
        }
    }
    if (!rc) rc = add(ctx, m, "transformer.ln_f.weight", C, 0, 1, 0, rng);
    if (!rc) rc = add(ctx, m, "transformer.ln_f.bias", C, 0, 0, 0, rng);
    A->model_cfg_set_str(m, "model_type", "gpt2");
    A->model_cfg_set_num(m, "n_layer", (double)L);
    A->model_cfg_set_num(m, "n_embd", (double)C);
    A->model_cfg_set_num(m, "n_head", (double)H);
    A->model_cfg_set_num(m, "n_inner", (double)F);
    A->model_cfg_set_num(m, "vocab_size", (double)V);
    A->model_cfg_set_num(m, "n_positions", (double)P);
    A->model_cfg_set_num(m, "n_ctx", (double)P);
    A->model_cfg_set_num(m, "layer_norm_epsilon", 1e-5);
    A->model_cfg_set_num(m, "initializer_range", std);
    A->model_cfg_set_str(m, "activation_function", "gelu_new");
    return rc;
}

static int build_llama(llmopt_stage_ctx *ctx, llmopt_model *m, int64_t L, int64_t C, int64_t H, int64_t KV, int64_t V,
                       int64_t P, int64_t F, int tied, uint64_t *rng) {
    const double std = 0.02;
    int64_t hd = C / H;
    int rc = add(ctx, m, "model.embed_tokens.weight", V, C, 2, std, rng);
    for (int64_t l = 0; l < L && !rc; l++) {
        /* nn.Linear weights are stored [out, in] */
        struct { const char *suffix; int64_t r, c; int fill; } parts[] = {
            {"input_layernorm.weight", C, 0, 1},
            {"self_attn.q_proj.weight", H * hd, C, 2},  {"self_attn.k_proj.weight", KV * hd, C, 2},
            {"self_attn.v_proj.weight", KV * hd, C, 2}, {"self_attn.o_proj.weight", C, H * hd, 2},
            {"post_attention_layernorm.weight", C, 0, 1},
            {"mlp.gate_proj.weight", F, C, 2}, {"mlp.up_proj.weight", F, C, 2}, {"mlp.down_proj.weight", C, F, 2},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0] && !rc; k++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, parts[k].suffix);
            rc = add(ctx, m, name, parts[k].r, parts[k].c, parts[k].fill, std, rng);
        }
    }
    if (!rc) rc = add(ctx, m, "model.norm.weight", C, 0, 1, 0, rng);
    if (!rc && !tied) rc = add(ctx, m, "lm_head.weight", V, C, 2, std, rng);
    A->model_cfg_set_str(m, "model_type", "llama");
    A->model_cfg_set_num(m, "num_hidden_layers", (double)L);
    A->model_cfg_set_num(m, "hidden_size", (double)C);
    A->model_cfg_set_num(m, "num_attention_heads", (double)H);
    A->model_cfg_set_num(m, "num_key_value_heads", (double)KV);
    A->model_cfg_set_num(m, "intermediate_size", (double)F);
    A->model_cfg_set_num(m, "vocab_size", (double)V);
    A->model_cfg_set_num(m, "max_position_embeddings", (double)P);
    A->model_cfg_set_num(m, "rms_norm_eps", 1e-5);
    A->model_cfg_set_num(m, "rope_theta", 10000.0);
    A->model_cfg_set_num(m, "initializer_range", std);
    A->model_cfg_set_str(m, "hidden_act", "silu");
    A->model_cfg_set_num(m, "tie_word_embeddings", tied ? 1 : 0);
    return rc;
}

static int pretrain_validate(llmopt_stage_ctx *ctx) {
    int64_t C = A->param_int(ctx, "width"), H = A->param_int(ctx, "heads"), KV = A->param_int(ctx, "kv_heads");
    if (C % H) return A->set_error(ctx, LLMOPT_EINVAL, "heads (%lld) must divide width (%lld)", (long long)H, (long long)C);
    if (KV && H % KV)
        return A->set_error(ctx, LLMOPT_EINVAL, "kv_heads (%lld) must divide heads (%lld)", (long long)KV, (long long)H);
    if (KV && KV != H && strcmp(A->param_str(ctx, "family"), "gpt2") == 0)
        return A->set_error(ctx, LLMOPT_EINVAL, "gpt2 has no grouped-query attention: leave kv_heads at 0");
    return 0;
}

static int pretrain_run(llmopt_stage_ctx *ctx) {
    int rc = pretrain_validate(ctx);
    if (rc) return rc;
    const char *family = A->param_str(ctx, "family");
    int gpt2 = strcmp(family, "gpt2") == 0;
    int64_t L = A->param_int(ctx, "layers"), C = A->param_int(ctx, "width"), H = A->param_int(ctx, "heads");
    int64_t KV = A->param_int(ctx, "kv_heads"), V = A->param_int(ctx, "vocab"), P = A->param_int(ctx, "context");
    int64_t F = A->param_int(ctx, "ffn");
    if (!KV) KV = H;
    /* transformers' defaults: GPT-2 4 C; Llama's 11008 for 4096 is about 8/3 C, here rounded up to 8 */
    if (!F) F = gpt2 ? 4 * C : (8 * C / 3 + 7) / 8 * 8;
    llmopt_model *m = A->model_new(gpt2 ? "gpt2" : "llama");
    if (!m) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    rc = copy_tokenizer(ctx, m);
    if (!rc) {
        size_t len = 0;
        const char *tj = A->model_get_file(m, "tokenizer.json", &len);
        int tv = tokenizer_size(tj, len);
        if (tv <= 0) rc = A->set_error(ctx, LLMOPT_EFORMAT, "tokenizer.json: cannot find the vocabulary size");
        else if (V == 0) V = tv;
        else if (V < tv)
            rc = A->set_error(ctx, LLMOPT_EINVAL, "vocab %lld is smaller than the tokenizer's %d tokens", (long long)V, tv);
    }
    uint64_t seed_p = (uint64_t)A->param_int(ctx, "seed");
    uint64_t rng = A->param_int(ctx, "seed") < 0 ? A->seed(ctx) : seed_p;
    rng ^= 0x5851f42d4c957f2dull; /* init draws differ from the data order's */
    if (!rc) rc = gpt2 ? build_gpt2(ctx, m, L, C, H, V, P, F, &rng)
                       : build_llama(ctx, m, L, C, H, KV, V, P, F, A->param_bool(ctx, "tie_embeddings"), &rng);
    llmopt_trainer *t = NULL;
    if (!rc) {
        ft_job job = {.model = m};
        rc = ft_train(ctx, &job, &t);
    }
    llmopt_model *out = NULL;
    if (!rc) rc = A->trainer_export(ctx, t, 0, &out);
    A->trainer_free(t);
    A->model_unref(m);
    return rc ? rc : A->stage_set_output(ctx, out);
}

static const llmopt_param_desc params[] = {
    {.name = "family", .type = LLMOPT_PARAM_ENUM, .default_value = "gpt2", .choices = "gpt2|llama",
     .doc = "architecture"},
    {.name = "layers", .type = LLMOPT_PARAM_INT, .default_value = "2", .min = 1, .max = 256, .doc = "transformer blocks"},
    {.name = "width", .type = LLMOPT_PARAM_INT, .default_value = "64", .min = 8, .max = 65536, .doc = "hidden size"},
    {.name = "heads", .type = LLMOPT_PARAM_INT, .default_value = "4", .min = 1, .max = 1024,
     .doc = "attention heads; must divide width"},
    {.name = "kv_heads", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1024,
     .doc = "key/value heads (llama grouped-query attention); 0 = heads"},
    {.name = "ffn", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1 << 20,
     .doc = "MLP width; 0 = 4 x width (gpt2) or 8/3 x width rounded up to 8 (llama)"},
    {.name = "vocab", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1 << 24,
     .doc = "vocabulary size; 0 = the tokenizer's"},
    {.name = "context", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 2, .max = 1 << 20,
     .doc = "positions (n_positions / max_position_embeddings)"},
    {.name = "tie_embeddings", .type = LLMOPT_PARAM_BOOL, .default_value = "false",
     .doc = "llama: share the embedding with the output head (gpt2 always does)"},
    {.name = "tokenizer", .type = LLMOPT_PARAM_STRING, .default_value = "",
     .doc = "a directory with tokenizer.json (+ tokenizer_config.json), when no tokenizer input is wired"},
    {.name = "tokenizer_vocab", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1 << 20,
     .doc = "with no tokenizer given: train a byte-level BPE of this many tokens on the training data"},
    FT_COMMON_PARAMS,
};
static const llmopt_input_desc inputs[] = {
    {.name = "tokenizer", .required = 0, .doc = "a model whose tokenizer files the new model takes"}};

const llmopt_stage_desc ft_pretrain_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "finetune.pretrain",
    .summary = "train a GPT-2 or Llama model from scratch",
    .doc = "Initialises a model as transformers does (normal(0, 0.02), zero biases, unit norms; GPT-2's\n"
           "c_proj weights scaled by 1/sqrt(2 n_layer)) with the tokenizer of the `tokenizer` input or\n"
           "directory, and trains it on the data. Metrics as finetune.full.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = pretrain_validate,
    .run = pretrain_run,
};
