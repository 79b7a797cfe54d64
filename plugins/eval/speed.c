/* eval.speed: prefill tokens/s at prompt lengths 128 and 512, decode tokens/s, time to first
 * token, peak RSS, and model bytes in memory and on disk (the files it was loaded from). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "eval.h"

#define A eval_api

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best of `reps` runs of a prefill of n tokens: seconds. */
static int time_prefill(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *ids, int n, float *logits, int reps,
                        double *best) {
    *best = 1e30;
    for (int r = 0; r < reps; r++) {
        A->session_rewind(s, 0);
        double t0 = now();
        int rc = A->session_forward(ctx, s, ids, n, logits, 0);
        double t = now() - t0;
        if (rc) return rc;
        if (t < *best) *best = t;
    }
    return 0;
}

/* Bytes of the checkpoint on disk, from the weights file the model was loaded from: a .gguf
 * file's size, or the sum of the *.safetensors files (every shard) in the directory of
 * model.safetensors or its index. -1 when a file cannot be read. */
static double disk_bytes(const char *source) {
    struct stat st;
    size_t n = strlen(source);
    if (n > 5 && strcmp(source + n - 5, ".gguf") == 0) return stat(source, &st) == 0 ? (double)st.st_size : -1;
    const char *slash = strrchr(source, '/');
    size_t dn = slash ? (size_t)(slash - source) : 1;
    char *dir = malloc(dn + 1);
    if (!dir) return -1;
    memcpy(dir, slash ? source : ".", dn);
    dir[dn] = '\0';
    DIR *d = opendir(dir);
    double sum = d ? 0 : -1;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t en = strlen(e->d_name);
        if (en <= 12 || strcmp(e->d_name + en - 12, ".safetensors") != 0) continue;
        char *path = malloc(dn + 1 + en + 1);
        if (!path) { sum = -1; break; }
        snprintf(path, dn + 1 + en + 1, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) sum += (double)st.st_size;
        free(path);
    }
    if (d) closedir(d);
    free(dir);
    return sum;
}


/* This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss keeps the RSS of the
 * process that forked us: a Python driver holding torch would count as ours). */
static double peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) break;
    if (f) fclose(f);
    struct rusage ru;
    if (!kb && getrusage(RUSAGE_SELF, &ru) == 0) kb = (unsigned long long)ru.ru_maxrss;
    return (double)kb * 1024.0;
}

static int speed_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    int vocab = A->model_vocab(m), n_ctx = A->model_context(m);
    int decode = (int)A->param_int(ctx, "decode_tokens"), reps = (int)A->param_int(ctx, "repeats");
    if (vocab <= 0) return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a runnable model (gpt2, llama)");
    llmopt_session *s = A->session_new(ctx, m, 0);
    int32_t *ids = malloc((size_t)n_ctx * sizeof *ids);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!s || !ids || !logits) {
        A->session_free(s);
        free(ids);
        free(logits);
        return s ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory") : LLMOPT_EFAIL;
    }
    uint64_t x = A->seed(ctx) | 1;
    for (int i = 0; i < n_ctx; i++) { /* a fixed pseudo-random token sequence */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)vocab);
    }
    int rc = 0, lens[2] = {128, 512};
    for (int k = 0; !rc && k < 2; k++) {
        if (lens[k] > n_ctx) continue;
        double t;
        A->progress(ctx, k * 0.3, "prefill of %d tokens", lens[k]);
        rc = time_prefill(ctx, s, ids, lens[k], logits, reps, &t);
        if (!rc) {
            char name[32];
            snprintf(name, sizeof name, "prefill%d_tok_s", lens[k]);
            A->metric(ctx, name, lens[k] / t, "tok/s", LLMOPT_BETTER_HIGHER);
            if (k == 0) A->metric(ctx, "ttft128_s", t, "s", LLMOPT_BETTER_LOWER);
        }
    }
    /* decode: `decode` single-token steps after a 128-token prompt */
    int prompt = n_ctx <= 128 ? n_ctx / 2 : 128; /* leave room to decode in short contexts */
    if (!rc && prompt + decode > n_ctx) decode = n_ctx - prompt;
    if (!rc && decode > 0) {
        A->progress(ctx, 0.6, "decode of %d tokens", decode);
        A->session_rewind(s, 0);
        rc = A->session_forward(ctx, s, ids, prompt, logits, 0);
        double t0 = now();
        for (int i = 0; !rc && i < decode; i++) rc = A->session_forward(ctx, s, ids + prompt + i, 1, logits, 0);
        double t = now() - t0;
        if (!rc) A->metric(ctx, "decode_tok_s", decode / t, "tok/s", LLMOPT_BETTER_HIGHER);
    }
    if (!rc) {
        A->metric(ctx, "peak_rss_bytes", peak_rss(), "B", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "model_bytes", (double)A->model_nbytes(m), "B", LLMOPT_BETTER_LOWER);
        const char *src = A->model_source(m);
        double disk = src ? disk_bytes(src) : -1;
        if (disk >= 0) A->metric(ctx, "disk_bytes", disk, "B", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "threads", (double)A->n_threads(), NULL, LLMOPT_BETTER_NONE);
    }
    free(ids);
    free(logits);
    A->session_free(s);
    return rc;
}

static const llmopt_param_desc params[] = {
    {.name = "decode_tokens", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 1, .max = 1 << 20,
     .doc = "tokens decoded one at a time after a 128-token prompt"},
    {.name = "repeats", .type = LLMOPT_PARAM_INT, .default_value = "3", .min = 1, .max = 1000,
     .doc = "prefill timings are the best of this many runs"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to time"}};

const llmopt_stage_desc eval_speed_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "eval.speed",
    .summary = "prefill and decode tokens/s, time to first token, memory",
    .doc = "Times a prefill of 128 and of 512 tokens (best of `repeats`), then `decode_tokens`\n"
           "single-token steps after a 128-token prompt. Also reports the process's peak RSS,\n"
           "the model's bytes in memory (model_bytes) and its checkpoint's bytes on disk\n"
           "(disk_bytes: the .gguf, or every *.safetensors file in the model directory). A model\n"
           "that did not come from disk as it is (a stage's output, changed in memory) has no\n"
           "disk_bytes.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = speed_run,
};
