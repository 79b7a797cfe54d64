/* Example out-of-tree llmopt plugin: one stage, example.random_init, that creates a randomly
 * initialised GPT-2-shaped model (Hugging Face tensor names, N(0, 0.02) weights as in the GPT-2
 * code). It builds against the installed SDK alone; see README.md here for the two ways. */
#include <llmopt/llmopt.h>

#include <math.h>
#include <stdio.h>

static const llmopt_host_api *api;

/* splitmix64: a small, seedable generator; stage seeds come from the pipeline seed. */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Standard normal by Box-Muller. */
static double normal(uint64_t *s) {
    double u1 = ((double)(next_u64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Adds one f32 tensor: fill 0 = zeros, 1 = ones, 2 = N(0, std). */
static int add(llmopt_stage_ctx *ctx, llmopt_model *m, const char *name, int64_t rows, int64_t cols,
               int fill, double std, uint64_t *rng) {
    int64_t shape[2] = {rows, cols};
    llmopt_tensor *t = api->tensor_new(LLMOPT_DTYPE_F32, cols ? 2 : 1, shape);
    if (!t) return api->set_error(ctx, LLMOPT_ENOMEM, "out of memory allocating %s", name);
    float *x = t->data;
    int64_t n = api->tensor_numel(t);
    for (int64_t i = 0; i < n; i++) x[i] = fill == 0 ? 0.0f : fill == 1 ? 1.0f : (float)(std * normal(rng));
    int rc = api->model_set(m, name, t);
    api->tensor_unref(t);
    return rc;
}

static int random_init_run(llmopt_stage_ctx *ctx) {
    int64_t L = api->param_int(ctx, "n_layer"), C = api->param_int(ctx, "n_embd");
    int64_t H = api->param_int(ctx, "n_head"), V = api->param_int(ctx, "vocab_size");
    int64_t P = api->param_int(ctx, "n_positions");
    double std = api->param_float(ctx, "init_std");
    uint64_t rng = api->seed(ctx);
    llmopt_model *m = api->model_new("gpt2");
    if (!m) return api->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    int rc = add(ctx, m, "transformer.wte.weight", V, C, 2, std, &rng);
    if (!rc) rc = add(ctx, m, "transformer.wpe.weight", P, C, 2, std, &rng);
    for (int64_t l = 0; l < L && !rc; l++) {
        if (api->cancelled(ctx)) {
            rc = api->set_error(ctx, LLMOPT_ECANCELED, "cancelled at layer %lld", (long long)l);
            break;
        }
        api->progress(ctx, (double)l / (double)L, "layer %lld/%lld", (long long)l + 1, (long long)L);
        /* GPT-2 uses Conv1D: weights are stored (in_features, out_features). */
        struct { const char *suffix; int64_t r, c; int fill; } parts[] = {
            {"ln_1.weight", C, 0, 1},          {"ln_1.bias", C, 0, 0},
            {"attn.c_attn.weight", C, 3 * C, 2}, {"attn.c_attn.bias", 3 * C, 0, 0},
            {"attn.c_proj.weight", C, C, 2},   {"attn.c_proj.bias", C, 0, 0},
            {"ln_2.weight", C, 0, 1},          {"ln_2.bias", C, 0, 0},
            {"mlp.c_fc.weight", C, 4 * C, 2},  {"mlp.c_fc.bias", 4 * C, 0, 0},
            {"mlp.c_proj.weight", 4 * C, C, 2}, {"mlp.c_proj.bias", C, 0, 0},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0] && !rc; k++) {
            char name[128];
            snprintf(name, sizeof name, "transformer.h.%lld.%s", (long long)l, parts[k].suffix);
            rc = add(ctx, m, name, parts[k].r, parts[k].c, parts[k].fill, std, &rng);
        }
    }
    if (!rc) rc = add(ctx, m, "transformer.ln_f.weight", C, 0, 1, std, &rng);
    if (!rc) rc = add(ctx, m, "transformer.ln_f.bias", C, 0, 0, std, &rng);
    if (rc) {
        api->model_unref(m);
        return rc;
    }
    /* config.json fields of transformers' GPT2Config */
    api->model_cfg_set_str(m, "model_type", "gpt2");
    api->model_cfg_set_num(m, "n_layer", (double)L);
    api->model_cfg_set_num(m, "n_embd", (double)C);
    api->model_cfg_set_num(m, "n_head", (double)H);
    api->model_cfg_set_num(m, "vocab_size", (double)V);
    api->model_cfg_set_num(m, "n_positions", (double)P);
    api->model_cfg_set_num(m, "layer_norm_epsilon", 1e-5);
    api->model_cfg_set_str(m, "activation_function", "gelu_new");
    double params = 0;
    for (size_t i = 0; i < api->model_n_tensors(m); i++)
        params += (double)api->tensor_numel(api->model_get(m, api->model_tensor_name(m, i)));
    api->metric(ctx, "params", params, NULL, LLMOPT_BETTER_NONE);
    api->metric(ctx, "size_bytes", (double)api->model_nbytes(m), "B", LLMOPT_BETTER_LOWER);
    return api->stage_set_output(ctx, m);
}

/* Cross-parameter check: heads must divide the width. Runs in `validate` too. */
static int random_init_validate(llmopt_stage_ctx *ctx) {
    int64_t C = api->param_int(ctx, "n_embd"), H = api->param_int(ctx, "n_head");
    if (C % H != 0)
        return api->set_error(ctx, LLMOPT_EINVAL, "n_head (%lld) must divide n_embd (%lld)", (long long)H,
                              (long long)C);
    return 0;
}

static const llmopt_param_desc params[] = {
    {.name = "n_layer", .type = LLMOPT_PARAM_INT, .default_value = "2", .min = 1, .max = 96,
     .doc = "number of transformer blocks"},
    {.name = "n_embd", .type = LLMOPT_PARAM_INT, .default_value = "64", .min = 8, .max = 16384,
     .doc = "hidden width"},
    {.name = "n_head", .type = LLMOPT_PARAM_INT, .default_value = "4", .min = 1, .max = 256,
     .doc = "attention heads; must divide n_embd"},
    {.name = "vocab_size", .type = LLMOPT_PARAM_INT, .default_value = "256", .min = 2, .max = 1000000,
     .doc = "vocabulary size"},
    {.name = "n_positions", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 1, .max = 1048576,
     .doc = "context length"},
    {.name = "init_std", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.02", .min = 0, .max = 1,
     .doc = "standard deviation of the weights (GPT-2 uses 0.02)"},
};

static const llmopt_stage_desc random_init = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "example.random_init",
    .summary = "create a randomly initialised GPT-2-shaped model",
    .doc = "Builds every tensor of a GPT-2 checkpoint (Hugging Face names, Conv1D layout) with\n"
           "N(0, init_std) weights, zero biases and unit layer norms, from the stage's seed.\n"
           "Name the stage in 'outputs:' to save it as config.json + model.safetensors.",
    LLMOPT_STAGE_PARAMS(params),
    .inputs = NULL, /* takes no model */
    .validate = random_init_validate,
    .run = random_init_run,
};

static int init(const llmopt_host_api *host, llmopt_registrar *reg) {
    if (host->struct_size < sizeof(llmopt_host_api)) {
        reg->set_error(reg, "host API table too small; this plugin needs llmopt ABI 1.%d", LLMOPT_ABI_MINOR);
        return LLMOPT_EABI;
    }
    api = host;
    return reg->add_stage(reg, &random_init);
}

LLMOPT_PLUGIN(.id = "example", .version = "0.1.0", .license = "MIT",
              .summary = "example out-of-tree plugin: random GPT-2-shaped models", .init = init);
