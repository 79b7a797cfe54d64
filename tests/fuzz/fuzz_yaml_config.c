/* libFuzzer target: bytes as a pipeline YAML through cfg_parse_text; a tree that parses is
 * emitted with cfg_emit, re-parsed (the resolved config a run directory keeps must read back),
 * copied, and given a few --set overrides (stage ids, indices, flow values, bad paths). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/yaml_tree.h"

static const char *const overrides[] = {
    "stages.tiny.with.n_layer=3", "stages.0.with.bits=[1, {a: b}]", "seed=7", "outputs.1=x",
    "a.b.c={x: 1}", "stages..x=1", "=1",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cfg_node *root = NULL;
    llmopt_error err = {0};
    if (cfg_parse_text("fuzz.yaml", (const char *)data, size, &root, &err) != 0) return 0;

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f) {
        int rc = cfg_emit(root, f);
        fclose(f);
        cfg_node *again = NULL;
        if (rc == 0 && cfg_parse_text("emitted.yaml", text, len, &again, &err) != 0) abort();
        cfg_free(again);
        free(text);
    }

    cfg_node *copy = cfg_copy(root);
    for (size_t i = 0; copy && i < sizeof overrides / sizeof overrides[0]; i++)
        cfg_apply_override(copy, overrides[i], &err);
    cfg_free(copy);
    cfg_free(root);
    return 0;
}
