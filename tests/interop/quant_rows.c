/* The row quantizers as a filter, for tests/interop/test_quant_bytes.py to compare with the gguf
 * package's: `quant_rows q DTYPE N` reads rows of N little-endian f32 values on stdin and writes
 * their blocks (q_quantize_row); `quant_rows d DTYPE N` reads blocks and writes f32 values
 * (q_dequantize_row). DTYPE is a dtype name (q8_0, q4_0, q4_1, gq4g32a, ...). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/quant.h"
#include "runtime/runtime.h"

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "q") != 0 && strcmp(argv[1], "d") != 0)) {
        fprintf(stderr, "usage: quant_rows q|d DTYPE N  (rows of N values on stdin)\n");
        return 2;
    }
    const int quantize = argv[1][0] == 'q';
    const int dtype = rt_dtype_from_name(argv[2]);
    const llmopt_dtype_traits *t = dtype < 0 ? NULL : rt_dtype_traits(dtype);
    const long long n = strtoll(argv[3], NULL, 10);
    if (!t || !t->is_quantized) {
        fprintf(stderr, "quant_rows: '%s' is not a block-quantized dtype\n", argv[2]);
        return 2;
    }
    if (n <= 0 || n % t->block_size != 0) {
        fprintf(stderr, "quant_rows: N = %s is not a positive multiple of %s's block size %lld\n", argv[3], t->name,
                (long long)t->block_size);
        return 2;
    }
    const size_t fbytes = (size_t)n * sizeof(float), qbytes = (size_t)(n / t->block_size) * t->type_size;
    const size_t in_bytes = quantize ? fbytes : qbytes, out_bytes = quantize ? qbytes : fbytes;
    void *in = malloc(in_bytes), *out = malloc(out_bytes);
    if (!in || !out) {
        fprintf(stderr, "quant_rows: out of memory for rows of %lld\n", n);
        return 1;
    }
    size_t got;
    int rc = 0;
    while (rc == 0 && (got = fread(in, 1, in_bytes, stdin)) == in_bytes) {
        rc = quantize ? q_quantize_row(dtype, in, out, n) : q_dequantize_row(dtype, in, out, n);
        if (rc == 0 && fwrite(out, 1, out_bytes, stdout) != out_bytes) rc = 1;
    }
    if (rc == 0 && got != 0) {
        fprintf(stderr, "quant_rows: %zu bytes at the end of stdin are not a whole row of %zu\n", got, in_bytes);
        rc = 1;
    }
    free(in);
    free(out);
    return rc ? 1 : 0;
}
