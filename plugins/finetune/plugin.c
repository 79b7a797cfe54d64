/* The finetune plugin's descriptor and registration. */
#include "finetune.h"

const llmopt_host_api *ft_api;

static int init(const llmopt_host_api *api, llmopt_registrar *reg) {
    if (api->struct_size < sizeof(llmopt_host_api)) {
        reg->set_error(reg, "the host's API table is older than this plugin's (needs the training engine)");
        return LLMOPT_EABI;
    }
    ft_api = api;
    const llmopt_stage_desc *stages[] = {&ft_full_stage, &ft_lora_stage, &ft_qlora_stage, &ft_pretrain_stage};
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        int rc = reg->add_stage(reg, stages[i]);
        if (rc) return rc;
    }
    return 0;
}

LLMOPT_PLUGIN(.id = "finetune", .version = "0.1.0", .license = "MIT",
              .summary = "training: full fine-tuning, LoRA and QLoRA (PEFT format), pretraining from scratch", .init = init);
