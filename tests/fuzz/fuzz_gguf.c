/* libFuzzer target: a whole GGUF file in memory through gguf_parse (magic, version, counts,
 * strings, metadata types, arrays, tensor infos, alignment, bounds, overlaps), then every
 * accessor over what it indexed; every tensor it returns must lie inside the buffer. Then the
 * same bytes through the loader, gguf_load_mem: architecture and config keys, tensor names,
 * blocks, types and shapes against the config (q/k un-permuted, GPT-2 weights transposed), the
 * rebuilt tokenizer. Every tensor of a model it returns must hold exactly its dtype's bytes for
 * its shape (each byte is read, so ASan sees one outside), a quantized one must dequantize, and
 * the model must pass arch_from_model, the check the transformer runs before a forward. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "runtime/arch.h"
#include "runtime/gguf.h"
#include "runtime/quant.h"
#include "runtime/runtime.h"
#include "runtime/tokenizer.h"

static void parse(const uint8_t *data, size_t size) {
    gguf_file *f = NULL;
    llmopt_error err = {0};
    if (gguf_parse("fuzz.gguf", data, size, &f, &err) != 0) return;
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
}

static volatile uint8_t sink;

static void load(const uint8_t *data, size_t size) {
    llmopt_model *m = NULL;
    llmopt_error err = {0};
    if (gguf_load_mem("fuzz.gguf", data, size, &m, &err) != 0) {
        if (m || !err.msg[0]) abort();  /* a failure leaves no model and says why */
        return;
    }
    for (size_t i = 0; i < rt_model_n_tensors(m); i++) {
        const llmopt_tensor *t = rt_model_get(m, rt_model_tensor_name(m, i));
        if (!t || t->nbytes != rt_dtype_nbytes(t->dtype, t->ndim, t->shape)) abort();
        uint8_t x = 0;
        for (size_t b = 0; b < t->nbytes; b++) x ^= ((const uint8_t *)t->data)[b];
        sink = x;
        if (rt_dtype_traits(t->dtype)->is_quantized && t->ndim == 2) {
            llmopt_tensor *f = NULL;
            if (q_dequantize_tensor(t, &f, &err) != 0) abort();  /* the loader accepted its blocks */
            rt_tensor_unref(f);
        }
    }
    arch_config c;
    arch_from_model(m, &c, &err);
    size_t len = 0, clen = 0, glen = 0;
    const char *tj = rt_model_get_file(m, "tokenizer.json", &len);
    const char *tc = rt_model_get_file(m, "tokenizer_config.json", &clen);
    const char *gc = rt_model_get_file(m, "generation_config.json", &glen);
    tok_tokenizer *tok = NULL;
    if (tj && tok_load_mem("fuzz.gguf/tokenizer.json", tj, len, tc, clen, gc, glen, &tok, &err) == 0) tok_free(tok);
    rt_model_unref(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    parse(data, size);
    load(data, size);
    return 0;
}
