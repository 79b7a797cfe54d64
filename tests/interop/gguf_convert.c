/* A test driver for the GGUF writer until a pipeline stage writes GGUF: loads a model (a Hugging
 * Face directory, or a .gguf file) and writes it as GGUF.  Usage: gguf_convert MODEL OUT.gguf */
#include <stdio.h>

#include "runtime/gguf.h"
#include "runtime/runtime.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: gguf_convert MODEL_DIR_OR_GGUF OUT.gguf\n");
        return 2;
    }
    llmopt_error err = {0};
    llmopt_model *m = NULL;
    if (rt_model_load(argv[1], &m, &err) != 0 || gguf_write(m, argv[2], &err) != 0) {
        fprintf(stderr, "gguf_convert: %s\n", err.msg);
        rt_model_unref(m);
        return 1;
    }
    rt_model_unref(m);
    return 0;
}
