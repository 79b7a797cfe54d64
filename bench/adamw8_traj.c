/* The adamw_8bit kernel of the cpu plugin (its reference loop, which the fast kernel equals to
 * the byte: tests/unit/test_backward_kernels.c) on a given parameter and gradients, for
 * bench/adamw8_vs_bnb.py. Reads IN: n (int64), steps (int32), lr, beta1, beta2, eps,
 * weight_decay (f32), the n initial values, then steps x n gradients (f32, little-endian);
 * writes OUT: steps x n parameter values, one row after each step; and both dynamic maps
 * (2 x 256 f32) to OUT.maps. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"

static llmopt_tensor view(int dtype, int64_t n, void *data, size_t es) {
    llmopt_tensor t;
    memset(&t, 0, sizeof t);
    t.struct_size = sizeof t, t.dtype = dtype, t.device = LLMOPT_DEVICE_CPU, t.ndim = 1, t.shape[0] = n;
    t.data = data, t.nbytes = (size_t)n * es;
    return t;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: adamw8_traj IN OUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    int64_t n;
    int32_t steps;
    float h[5];
    if (!in || !out || fread(&n, 8, 1, in) != 1 || fread(&steps, 4, 1, in) != 1 || fread(h, 4, 5, in) != 5 || n < 1) {
        fprintf(stderr, "adamw8_traj: cannot read %s or write %s\n", argv[1], argv[2]);
        return 1;
    }
    int64_t blocks = (n + LLMOPT_ADAMW8_BLOCK - 1) / LLMOPT_ADAMW8_BLOCK;
    float *p = malloc((size_t)n * 4), *g = malloc((size_t)n * 4), *am = calloc((size_t)blocks, 4),
          *av = calloc((size_t)blocks, 4);
    uint8_t *m = calloc((size_t)n, 1), *v = calloc((size_t)n, 1);
    if (!p || !g || !am || !av || !m || !v || fread(p, 4, (size_t)n, in) != (size_t)n) return 1;
    llmopt_tensor tg = view(LLMOPT_DTYPE_F32, n, g, 4), tp = view(LLMOPT_DTYPE_F32, n, p, 4),
                  tm = view(LLMOPT_DTYPE_U8, n, m, 1), tv = view(LLMOPT_DTYPE_U8, n, v, 1),
                  ta = view(LLMOPT_DTYPE_F32, blocks, am, 4), tb = view(LLMOPT_DTYPE_F32, blocks, av, 4);
    const llmopt_tensor *ins[1] = {&tg};
    for (int32_t s = 1; s <= steps; s++) {
        if (fread(g, 4, (size_t)n, in) != (size_t)n) return 1;
        llmopt_op_adamw_8bit a = {sizeof a, h[0], h[1], h[2], h[3], h[4], 1.0f, s, &tm, &tv, &ta, &tb};
        if (cpu_ref_adamw_8bit(ins, 1, &tp, &a) != 0) return 1;
        fwrite(p, 4, (size_t)n, out);
    }
    fclose(out);
    char mp[4200];
    snprintf(mp, sizeof mp, "%s.maps", argv[2]);
    FILE *fm = fopen(mp, "wb");
    float maps[2][256];
    llmopt_adamw8_map(1, maps[0]), llmopt_adamw8_map(0, maps[1]);
    if (!fm || fwrite(maps, 4, 512, fm) != 512) return 1;
    fclose(fm);
    return 0;
}
