/* libFuzzer target: a whole GGUF file in memory through gguf_parse (magic, version, counts,
 * strings, metadata types, arrays, tensor infos, alignment, bounds, overlaps), then every
 * accessor over what it indexed. Every tensor it returns must lie inside the buffer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "runtime/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f = NULL;
    llmopt_error err = {0};
    if (gguf_parse("fuzz.gguf", data, size, &f, &err) != 0) return 0;
    for (size_t i = 0; i < gguf_n_kv(f); i++) {
        uint64_t u;
        double d;
        size_t len;
        gguf_get_u64(f, i, &u);
        gguf_get_f64(f, i, &d);
        gguf_get_str(f, i, &len);
        size_t n = gguf_arr_n(f, i);
        for (size_t j = 0; j < n && j < 64; j++) {
            gguf_arr_f64(f, i, j, &d);
            gguf_arr_str(f, i, j, &len);
        }
    }
    for (size_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor_info *t = gguf_tensor(f, i);
        if (t->offset > size || t->nbytes > size - t->offset) abort();
    }
    gguf_file_free(f);
    return 0;
}
