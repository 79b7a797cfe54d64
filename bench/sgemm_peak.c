/* OpenBLAS sgemm GFLOP/s on this machine: square sizes 512..2048 and the matmul shapes of a
 * 512-token GPT-2 124M prefill, at 1 and 2 threads (openblas_set_num_threads), best of N runs.
 *
 *   cc -O2 -Ihost -o sgemm_peak bench/sgemm_peak.c host/plugin/blas_env.c $(pkg-config --cflags --libs openblas)
 *   ./sgemm_peak [--reps N] [--threads 1,2]
 *
 * One line per measurement, `key=value` fields (bench/run.sh greps them):
 *   sgemm threads=2 shape=square-1024 M=1024 N=1024 K=1024 transB=0 best_s=... gflops=...
 * and at the end, per thread count, `peak threads=T gflops=...` (the best square or GPT-2 shape). */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "plugin/blas_env.h"

/* OpenBLAS extensions (declared in its cblas.h on Debian, repeated here for other builds) */
void openblas_set_num_threads(int);
char *openblas_get_corename(void);
char *openblas_get_config(void);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct shape {
    const char *name;
    int M, N, K, transB; /* C[M,N] = A[M,K] · B, B is [K,N] or (transB) [N,K] */
} shape;

static const shape shapes[] = {
    {"square-512", 512, 512, 512, 0},
    {"square-768", 768, 768, 768, 0},
    {"square-1024", 1024, 1024, 1024, 0},
    {"square-1536", 1536, 1536, 1536, 0},
    {"square-2048", 2048, 2048, 2048, 0},
    /* GPT-2 124M, 512 tokens; HF Conv1D weights are [in, out] = [K, N] */
    {"gpt2-qkv", 512, 2304, 768, 0},
    {"gpt2-attn_proj", 512, 768, 768, 0},
    {"gpt2-mlp_fc", 512, 3072, 768, 0},
    {"gpt2-mlp_proj", 512, 768, 3072, 0},
    /* the tied LM head [vocab, 768] over every position (what a full-sequence logits call does) */
    {"gpt2-lm_head_all", 512, 50257, 768, 1},
};

int main(int argc, char **argv) {
    /* OpenBLAS picked its kernels when it loaded, before main; the host sets OPENBLAS_CORETYPE
     * before it loads the CPU plugin (host/plugin/blas_env.h), so measure under the same kernels:
     * when the rule sets it, start again with it */
    const char *core = NULL;
    if (blas_env_prepare(&core)) {
        execv("/proc/self/exe", argv);
        perror("sgemm_peak: exec /proc/self/exe");
        return 1;
    }
    int reps = 7, threads[8] = {1, 2}, nt = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            nt = 0;
            for (char *s = strtok(argv[++i], ","); s && nt < 8; s = strtok(NULL, ",")) threads[nt++] = atoi(s);
        } else {
            fprintf(stderr, "usage: %s [--reps N] [--threads 1,2]\n", argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    printf("openblas core=%s config=\"%s\"\n", openblas_get_corename(), openblas_get_config());
    size_t maxa = 0, maxb = 0, maxc = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const shape *p = &shapes[s];
        if ((size_t)p->M * p->K > maxa) maxa = (size_t)p->M * p->K;
        if ((size_t)p->K * p->N > maxb) maxb = (size_t)p->K * p->N;
        if ((size_t)p->M * p->N > maxc) maxc = (size_t)p->M * p->N;
    }
    float *a = malloc(maxa * sizeof *a), *b = malloc(maxb * sizeof *b), *c = malloc(maxc * sizeof *c);
    if (!a || !b || !c) return fprintf(stderr, "out of memory\n"), 1;
    srand(1);
    for (size_t i = 0; i < maxa; i++) a[i] = (float)rand() / RAND_MAX - 0.5f;
    for (size_t i = 0; i < maxb; i++) b[i] = (float)rand() / RAND_MAX - 0.5f;
    memset(c, 0, maxc * sizeof *c);
    for (int t = 0; t < nt; t++) {
        openblas_set_num_threads(threads[t]);
        double peak = 0, peak_sq = 0;
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            const shape *p = &shapes[s];
            double flops = 2.0 * p->M * p->N * p->K, best = 1e30;
            /* one warm-up, then `reps` timed runs (at least 0.3 s of them in all) */
            int done = 0;
            double spent = 0;
            for (int r = -1; r < reps || spent < 0.3; r++) {
                double t0 = now();
                cblas_sgemm(CblasRowMajor, CblasNoTrans, p->transB ? CblasTrans : CblasNoTrans, p->M, p->N, p->K, 1.0f,
                            a, p->K, b, p->transB ? p->K : p->N, 0.0f, c, p->N);
                double dt = now() - t0;
                if (r >= 0) {
                    if (dt < best) best = dt;
                    spent += dt, done++;
                }
                if (done > 1000) break;
            }
            double gf = flops / best * 1e-9;
            if (gf > peak) peak = gf;
            if (!strncmp(p->name, "square", 6) && gf > peak_sq) peak_sq = gf;
            printf("sgemm threads=%d shape=%s M=%d N=%d K=%d transB=%d runs=%d best_s=%.6f gflops=%.1f\n", threads[t],
                   p->name, p->M, p->N, p->K, p->transB, done, best, gf);
            fflush(stdout);
        }
        printf("peak threads=%d gflops=%.1f square_gflops=%.1f\n", threads[t], peak, peak_sq);
    }
    free(a);
    free(b);
    free(c);
    return 0;
}
