/* Parameters the quantize stages share (expanded inside each stage's parameter table). */
#ifndef PLUGINS_QUANTIZE_PARAMS_H
#define PLUGINS_QUANTIZE_PARAMS_H

#define QZ_SELECT_PARAMS(default_exclude)                                                                     \
    {.name = "include", .type = LLMOPT_PARAM_LIST, .default_value = "",                                       \
     .doc = "globs over checkpoint names of the tensors to convert ('*' any run); empty: every candidate"},  \
    {.name = "exclude", .type = LLMOPT_PARAM_LIST, .default_value = default_exclude,                         \
     .doc = "globs of tensors to leave as they are"}

#define QZ_EXCLUDE_EMBEDDINGS "*embed_tokens*|*lm_head*|*wte*|*wpe*"

#define QZ_EVAL_PARAMS                                                                                        \
    {.name = "eval_data", .type = LLMOPT_PARAM_STRING, .default_value = "",                                   \
     .doc = "a data entry to measure the perplexity of the input and the output on (ppl_input, ppl, "         \
            "ppl_ratio); empty: none"},                                                                       \
    {.name = "eval_tokens", .type = LLMOPT_PARAM_INT, .default_value = "8192", .min = 0, .max = 1e12,          \
     .doc = "score at most this many tokens of eval_data (0: all)"}

#define QZ_GROUP_PARAMS(bits_default, sym_default)                                                            \
    {.name = "bits", .type = LLMOPT_PARAM_INT, .default_value = bits_default, .min = 2, .max = 8,             \
     .doc = "bits per weight code: 2, 3, 4 or 8"},                                                            \
    {.name = "group_size", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 0, .max = 1 << 22,        \
     .doc = "weights per scale along a row (32, 64, 128 have CPU kernels); 0: one group per row"},            \
    {.name = "sym", .type = LLMOPT_PARAM_BOOL, .default_value = sym_default,                                  \
     .doc = "symmetric codes around 0 (true) or a zero point per group (false)"}

#define QZ_CALIB_PARAMS(samples_default)                                                                      \
    {.name = "data", .type = LLMOPT_PARAM_STRING, .default_value = "train",                                   \
     .doc = "the pipeline data entry whose text calibrates (its split applies)"},                             \
    {.name = "n_samples", .type = LLMOPT_PARAM_INT, .default_value = samples_default, .min = 1, .max = 1 << 20, \
     .doc = "calibration sequences, spread evenly over the data"},                                            \
    {.name = "seq_len", .type = LLMOPT_PARAM_INT, .default_value = "512", .min = 1, .max = 1 << 20,            \
     .doc = "tokens per calibration sequence (at most the model's context)"}

#endif
