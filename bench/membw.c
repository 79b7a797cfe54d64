/* STREAM-like read bandwidth: the sum of a 1 GiB float array, with 1 and 2 threads (pthreads,
 * each summing its own contiguous half), best of N passes; GB/s = 1e9 bytes per second.
 *
 *   cc -O2 -mavx2 -mfma -pthread -o membw bench/membw.c
 *   ./membw [--mib 1024] [--reps N] [--threads 1,2]
 *
 * One line per thread count: `membw threads=T bytes=... best_s=... gbps=...`. The loop keeps 8
 * independent accumulators so the adds never limit it; the array is written once first, so every
 * page is resident (no page faults in the timed passes). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct part {
    const float *p;
    size_t n;
    double sum;
} part;

static void *sum_part(void *arg) {
    part *q = arg;
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= q->n; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += q->p[i + k];
    double s = 0;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; i < q->n; i++) s += q->p[i];
    q->sum = s;
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = 1024;
    int reps = 10, threads[8] = {1, 2}, nt = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            nt = 0;
            for (char *s = strtok(argv[++i], ","); s && nt < 8; s = strtok(NULL, ",")) threads[nt++] = atoi(s);
        } else {
            fprintf(stderr, "usage: %s [--mib N] [--reps N] [--threads 1,2]\n", argv[0]);
            return 2;
        }
    }
    size_t n = mib * 1024 * 1024 / sizeof(float);
    float *a = aligned_alloc(64, n * sizeof *a);
    if (!a) return fprintf(stderr, "out of memory\n"), 1;
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7) * 0.125f;
    double check = 0;
    for (int t = 0; t < nt; t++) {
        int T = threads[t] < 1 ? 1 : threads[t] > 64 ? 64 : threads[t];
        double best = 1e30;
        for (int r = 0; r < reps + 1; r++) { /* the first pass is a warm-up */
            pthread_t th[64];
            part parts[64];
            double t0 = now();
            for (int k = 0; k < T; k++) {
                size_t b = n / T * k, e = k == T - 1 ? n : n / T * (k + 1);
                parts[k] = (part){a + b, e - b, 0};
                if (k) pthread_create(&th[k], NULL, sum_part, &parts[k]);
            }
            sum_part(&parts[0]);
            for (int k = 1; k < T; k++) pthread_join(th[k], NULL);
            double dt = now() - t0;
            for (int k = 0; k < T; k++) check += parts[k].sum;
            if (r > 0 && dt < best) best = dt;
        }
        printf("membw threads=%d bytes=%zu best_s=%.6f gbps=%.2f\n", T, n * sizeof *a, best,
               (double)(n * sizeof *a) / best * 1e-9);
        fflush(stdout);
    }
    fprintf(stderr, "(checksum %g)\n", check);
    free(a);
    return 0;
}
