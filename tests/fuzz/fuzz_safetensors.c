/* libFuzzer target: a whole safetensors file (8-byte header length, JSON header, data) held in
 * memory, through rt_safetensors_parse_header: header length, JSON, dtypes, shapes, offsets,
 * overlaps and gaps. Every entry it returns must lie inside the buffer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "runtime/runtime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rt_safetensors_entry *e = NULL;
    size_t n = 0;
    llmopt_error err = {0};
    if (rt_safetensors_parse_header("fuzz.safetensors", data, size, &e, &n, &err) != 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].offset > size || e[i].nbytes > size - e[i].offset) abort();
    rt_safetensors_free(e, n);
    return 0;
}
