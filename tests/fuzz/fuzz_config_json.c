/* libFuzzer target: bytes as a model's config.json, through rt_model_config_load, then
 * arch_from_model (GPT-2 and Llama field checks; no tensors, so a valid config ends at the first
 * missing tensor), then a dump and reload of the config (the run directory's round trip). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arch.h"
#include "runtime/runtime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    llmopt_model *m = rt_model_new("");
    if (!m) return 0;
    llmopt_error err = {0};
    if (rt_model_config_load(m, (const char *)data, size, &err) == 0) {
        arch_config c;
        arch_from_model(m, &c, &err);
        char *dump = rt_model_config_dump(m);
        if (dump) {
            llmopt_model *m2 = rt_model_new("");
            if (m2 && rt_model_config_load(m2, dump, strlen(dump), &err) != 0) abort();
            rt_model_unref(m2);
            free(dump);
        }
    }
    rt_model_unref(m);
    return 0;
}
