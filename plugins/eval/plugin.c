/* The eval plugin's descriptor and registration. */
#include <math.h>

#include "eval.h"

const llmopt_host_api *eval_api;

double eval_nll(const float *logits, int vocab, int32_t target) {
    double max = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - max);
    return log(sum) + max - (double)logits[target];
}

static int init(const llmopt_host_api *api, llmopt_registrar *reg) {
    if (api->struct_size < sizeof(llmopt_host_api)) {
        reg->set_error(reg, "the host's API table is older than this plugin's (needs the model runtime)");
        return LLMOPT_EABI;
    }
    eval_api = api;
    const llmopt_stage_desc *stages[] = {&eval_perplexity_stage, &eval_choice_stage, &eval_generate_stage,
                                         &eval_speed_stage};
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        int rc = reg->add_stage(reg, stages[i]);
        if (rc) return rc;
    }
    return 0;
}

LLMOPT_PLUGIN(.id = "eval", .version = "0.1.0", .license = "MIT",
              .summary = "evaluation: perplexity, multiple choice, completions, speed", .init = init);
