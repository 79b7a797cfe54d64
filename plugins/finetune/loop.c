/* The training loop the finetune stages share: data, AdamW steps with a learning-rate schedule
 * and gradient accumulation, validation with early stopping, checkpoints (every N steps and on
 * cancel) and resuming. Window order is a function of (seed, step), and checkpoints hold the
 * engine's weights, moments and RNG, so a resumed run ends bitwise where an uninterrupted one
 * does. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "finetune.h"

#define A ft_api

/* ---- the host's tokenizer behind data.h's callbacks ---- */

typedef struct tok_arg {
    llmopt_stage_ctx *ctx;
    const llmopt_model *m;
} tok_arg;

static int tok_encode(void *arg, const char *text, size_t len, int add_special, int32_t **ids, size_t *n) {
    tok_arg *a = arg;
    return A->tokenize(a->ctx, a->m, text, len, add_special, ids, n);
}
static int tok_render(void *arg, const char *const *roles, const char *const *contents, size_t n, int add_gen,
                      char **out, size_t *len) {
    tok_arg *a = arg;
    return A->chat_render(a->ctx, a->m, roles, contents, n, add_gen, out, len);
}
static void tok_free(void *arg, void *p) {
    (void)arg;
    A->mem_free(p);
}

static int load_data(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *entry, int seq, ft_dataset *d) {
    const char *format = A->param_str(ctx, "format");
    ft_data_options o = {
        .format = strcmp(format, "jsonl-sft") == 0 ? FT_FORMAT_JSONL_SFT : FT_FORMAT_TEXT,
        .seq = seq,
        .skip_bad = strcmp(A->param_str(ctx, "on_bad_line"), "skip") == 0,
        .truncate_long = strcmp(A->param_str(ctx, "on_long"), "truncate") == 0,
    };
    tok_arg ta = {ctx, m};
    ft_tokenizer tok = {.arg = &ta, .encode = tok_encode, .render = tok_render, .free_mem = tok_free,
                        .eos = A->token_eos(m)};
    char *text = NULL;
    size_t len = 0;
    int rc = A->data_read(ctx, entry, &text, &len);
    if (rc) return rc;
    char err[768];
    rc = ft_dataset_build(text, len, &o, &tok, d, err, sizeof err);
    A->mem_free(text);
    if (rc) return A->set_error(ctx, rc, "data '%s' (%s): %s", entry, format, err);
    if (d->n_bad) {
        char lines[256] = "";
        size_t shown = d->n_bad < 16 ? d->n_bad : 16;
        for (size_t i = 0, k = 0; i < shown && k < sizeof lines - 24; i++)
            k += (size_t)snprintf(lines + k, sizeof lines - k, "%s%zu", i ? ", " : "", d->bad_lines[i]);
        A->log(LLMOPT_LOG_WARN, "data '%s': skipped %zu malformed line%s: %s%s (line numbers count from the split's start)",
               entry, d->n_bad, d->n_bad == 1 ? "" : "s", lines, d->n_bad > shown ? ", ..." : "");
    }
    if (d->n_truncated)
        A->log(LLMOPT_LOG_WARN, "data '%s': %zu record%s longer than seq_len + 1 = %d tokens %s truncated", entry,
               d->n_truncated, d->n_truncated == 1 ? "" : "s", seq + 1, d->n_truncated == 1 ? "was" : "were");
    int vocab = A->model_vocab(m);
    for (size_t i = 0; i < d->n * (size_t)seq; i++)
        if (d->inputs[i] >= vocab) {
            int32_t id = d->inputs[i];
            ft_dataset_free(d);
            return A->set_error(ctx, LLMOPT_EINVAL, "data '%s': token id %d is outside the model's vocabulary of %d",
                                entry, id, vocab);
        }
    return 0;
}

/* ---- checkpoints ---- */

static char *path_join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

static void rmtree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char *p = path_join(path, e->d_name);
            if (p) rmtree(p);
            free(p);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int is_file(const char *dir, const char *name) {
    char *p = path_join(dir, name);
    struct stat st;
    int ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
}

/* The loop's own state beside the engine's: what early stopping needs. */
typedef struct loop_state {
    double best_val;
    int bad_evals;
} loop_state;

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int bad = fputs(text, f) < 0;
    bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    return bad ? -1 : 0;
}

/* <dir>/checkpoint-<step>, made under a temporary name and renamed whole, so a failure (a full
 * disk) leaves the previous checkpoints as they were. */
static int save_checkpoint(llmopt_stage_ctx *ctx, llmopt_trainer *t, const char *dir, const loop_state *ls,
                           char *saved, size_t saved_len) {
    int step = A->trainer_steps(t);
    char name[64], tmpname[96];
    snprintf(name, sizeof name, "checkpoint-%d", step);
    snprintf(tmpname, sizeof tmpname, ".checkpoint-%d.tmp-%ld", step, (long)getpid());
    char *final = path_join(dir, name), *tmp = path_join(dir, tmpname), *js = tmp ? path_join(tmp, "finetune.json") : NULL;
    int rc = final && tmp && js ? 0 : A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    if (!rc) {
        rmtree(tmp);
        rc = A->trainer_save_state(ctx, t, tmp);
    }
    if (!rc) {
        char text[256];
        snprintf(text, sizeof text, "{\"step\": %d, \"best_val_loss\": %.17g, \"bad_evals\": %d}\n", step,
                 isfinite(ls->best_val) ? ls->best_val : -1.0, ls->bad_evals);
        if (write_file(js, text) != 0)
            rc = A->set_error(ctx, LLMOPT_EIO, "%s: cannot write: %s", js, strerror(errno));
    }
    if (!rc) {
        rmtree(final);
        if (rename(tmp, final) != 0)
            rc = A->set_error(ctx, LLMOPT_EIO, "%s: cannot rename into place: %s", final, strerror(errno));
    }
    if (rc) {
        rmtree(tmp);
        if (rc != LLMOPT_ENOMEM) {
            /* keep the engine's message, and say the earlier checkpoints are intact */
            A->log(LLMOPT_LOG_ERROR, "checkpoint at step %d failed; earlier checkpoints in %s are kept", step, dir);
        }
    } else if (saved) {
        snprintf(saved, saved_len, "%s", final);
    }
    free(final), free(tmp), free(js);
    return rc;
}

/* The checkpoint to resume: `from` itself when it holds one, else its checkpoint-<N> with the
 * largest N. */
static char *find_checkpoint(const char *from) {
    if (is_file(from, "train_state.json")) return strdup(from);
    DIR *d = opendir(from);
    if (!d) return NULL;
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *endp;
        if (strncmp(e->d_name, "checkpoint-", 11) != 0) continue;
        long n = strtol(e->d_name + 11, &endp, 10);
        if (*endp || n < 0 || n <= best) continue;
        char *p = path_join(from, e->d_name);
        if (p && is_file(p, "train_state.json")) best = n;
        free(p);
    }
    closedir(d);
    if (best < 0) return NULL;
    char name[64];
    snprintf(name, sizeof name, "checkpoint-%ld", best);
    return path_join(from, name);
}

static void read_loop_state(const char *ck, loop_state *ls) {
    char *p = path_join(ck, "finetune.json");
    json_t *j = p ? json_load_file(p, 0, NULL) : NULL;
    free(p);
    if (!j) return;
    double b = json_number_value(json_object_get(j, "best_val_loss"));
    if (b >= 0) ls->best_val = b;
    ls->bad_evals = (int)json_integer_value(json_object_get(j, "bad_evals"));
    json_decref(j);
}

/* <run dir>/<stage id>.checkpoints: beside the stage's directory, which the host removes when
 * the stage fails or is cancelled. */
static char *default_checkpoint_dir(llmopt_stage_ctx *ctx) {
    const char *sd = A->stage_dir(ctx);
    const char *slash = strrchr(sd, '/');
    size_t dl = slash ? (size_t)(slash - sd) : 1;
    const char *id = A->stage_id(ctx);
    size_t n = dl + strlen(id) + 16;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%.*s/%s.checkpoints", (int)dl, slash ? sd : ".", id);
    return p;
}

/* ---- evaluation ---- */

static int evaluate(llmopt_stage_ctx *ctx, llmopt_trainer *t, const ft_dataset *d, int B, int64_t max_batches,
                    double *mean) {
    size_t T = (size_t)d->seq;
    int32_t *in = calloc((size_t)B * T, sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    if (!in || !tg) {
        free(in), free(tg);
        return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    }
    double sum = 0;
    size_t count = 0;
    int rc = 0;
    int64_t nb = 0;
    for (size_t w = 0; !rc && w < d->n && (max_batches == 0 || nb < max_batches); w += (size_t)B, nb++) {
        for (size_t r = 0; r < (size_t)B; r++) {
            if (w + r < d->n) {
                memcpy(in + r * T, d->inputs + (w + r) * T, T * sizeof *in);
                memcpy(tg + r * T, d->targets + (w + r) * T, T * sizeof *tg);
            } else { /* a short last batch: rows without targets */
                memset(in + r * T, 0, T * sizeof *in);
                for (size_t i = 0; i < T; i++) tg[r * T + i] = FT_IGNORE;
            }
        }
        double s = 0;
        size_t n = 0;
        rc = A->trainer_eval(ctx, t, in, tg, &s, &n);
        sum += s, count += n;
    }
    free(in), free(tg);
    if (!rc) *mean = count ? sum / (double)count : NAN;
    return rc;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process (every thread): with wall time, how much of the machine a
 * run got, which on a shared machine can be far less than its threads. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t peak_rss(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (size_t)ru.ru_maxrss * 1024u : 0;
}

/* ---- the loop ---- */

int ft_train(llmopt_stage_ctx *ctx, const ft_job *job, llmopt_trainer **out) {
    *out = NULL;
    const llmopt_model *m = job->model;
    int n_ctx = A->model_context(m);
    if (n_ctx <= 0) return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a trainable model (gpt2, llama)");
    int64_t seq = A->param_int(ctx, "seq_len");
    if (seq == 0) seq = n_ctx;
    if (seq > n_ctx)
        return A->set_error(ctx, LLMOPT_EINVAL, "seq_len %lld is longer than the model's context (%d)", (long long)seq, n_ctx);
    int B = (int)A->param_int(ctx, "batch"), accum = (int)A->param_int(ctx, "accum");
    int64_t seed_p = A->param_int(ctx, "seed");
    uint64_t seed = seed_p < 0 ? A->seed(ctx) : (uint64_t)seed_p;
    const char *eval_entry = A->param_str(ctx, "eval_data");

    ft_dataset train = {0}, eval = {0};
    int rc = load_data(ctx, m, A->param_str(ctx, "data"), (int)seq, &train);
    if (rc) return rc;
    if (eval_entry && *eval_entry && (rc = load_data(ctx, m, eval_entry, (int)seq, &eval)) != 0) {
        ft_dataset_free(&train);
        return rc;
    }
    int64_t total = A->param_int(ctx, "steps");
    if (total == 0) {
        double per_step = (double)B * (double)accum;
        total = (int64_t)ceil(A->param_float(ctx, "epochs") * (double)train.n / per_step);
        if (total < 1) total = 1;
    }

    llmopt_train_options o;
    A->train_options_default(&o);
    o.batch = B, o.seq = (int)seq, o.seed = seed;
    o.weight_decay = (float)A->param_float(ctx, "weight_decay");
    o.trainable = job->trainable, o.n_trainable = job->n_trainable;
    o.lora_rank = job->lora_rank, o.lora_alpha = job->lora_alpha, o.lora_dropout = job->lora_dropout;
    o.lora_targets = job->lora_targets, o.n_lora_targets = job->n_lora_targets;
    o.recompute = A->param_bool(ctx, "gradient_checkpointing");
    const char *opt = A->param_str(ctx, "optimizer");
    o.optimizer_bits = opt && strcmp(opt, "adamw_8bit") == 0 ? 8 : 32;
    llmopt_trainer *t = A->trainer_new(ctx, m, &o);
    ft_order order = {0};
    char *ckdir = NULL;
    int32_t *in = NULL, *tg = NULL;
    loop_state ls = {.best_val = INFINITY, .bad_evals = 0};
    if (!t) rc = LLMOPT_EFAIL;
    if (!rc && ft_order_init(&order, train.n, seed, A->param_bool(ctx, "shuffle"))) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    const char *ckp = A->param_str(ctx, "checkpoint_dir");
    if (!rc) ckdir = ckp && *ckp ? strdup(ckp) : default_checkpoint_dir(ctx);
    in = malloc((size_t)B * (size_t)seq * sizeof *in);
    tg = malloc((size_t)B * (size_t)seq * sizeof *tg);
    if (!rc && (!ckdir || !in || !tg)) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");

    const char *resume = A->param_str(ctx, "resume_from");
    if (!rc && resume && *resume) {
        char *ck = find_checkpoint(resume);
        if (!ck) rc = A->set_error(ctx, LLMOPT_ENOTFOUND, "resume_from: %s holds no checkpoint (train_state.json, or "
                                   "checkpoint-<step>/ directories)", resume);
        else if ((rc = A->trainer_load_state(ctx, t, ck)) == 0) {
            read_loop_state(ck, &ls);
            A->log(LLMOPT_LOG_INFO, "resuming from %s at step %d", ck, A->trainer_steps(t));
        }
        free(ck);
    }

    int sched = strcmp(A->param_str(ctx, "schedule"), "constant") == 0 ? FT_SCHED_CONSTANT
                : strcmp(A->param_str(ctx, "schedule"), "cosine") == 0 ? FT_SCHED_COSINE
                                                                       : FT_SCHED_LINEAR;
    double lr = A->param_float(ctx, "lr"), clip = A->param_float(ctx, "grad_clip");
    int warmup = (int)A->param_int(ctx, "warmup");
    int64_t eval_every = A->param_int(ctx, "eval_every"), eval_batches = A->param_int(ctx, "eval_batches");
    int64_t patience = A->param_int(ctx, "patience"), ck_every = A->param_int(ctx, "checkpoint_every");
    int start = t ? A->trainer_steps(t) : 0;
    double t0 = now_s(), last_loss = NAN, loss_window = 0, val = NAN;
    /* tokens: every input position of every window (padding too), the unit PyTorch benches
     * count; targets: the positions with a loss (fewer in SFT, where prompts are masked).
     * train_s: seconds in forward/backward and optimizer steps only (not validation or
     * checkpoints); step1_s: this run's first step, for the rate without it; *_cpu_s: the
     * same in process CPU seconds */
    size_t tokens = 0, targets = 0;
    double train_s = 0, step1_s = 0, train_cpu_s = 0, step1_cpu_s = 0;
    const size_t step_tokens = (size_t)B * (size_t)seq * (size_t)accum;
    int window_n = 0, stopped_early = 0;
    size_t T = (size_t)seq;
    int s = start;
    for (; !rc && s < total; s++) {
        double ts = now_s(), tc = cpu_s(), step_sum = 0;
        size_t step_n = 0;
        for (int a = 0; !rc && a < accum; a++) {
            for (int r = 0; r < B; r++) {
                uint64_t g = ((uint64_t)s * (uint64_t)accum + (uint64_t)a) * (uint64_t)B + (uint64_t)r;
                size_t w = ft_order_at(&order, g);
                memcpy(in + (size_t)r * T, train.inputs + w * T, T * sizeof *in);
                memcpy(tg + (size_t)r * T, train.targets + w * T, T * sizeof *tg);
            }
            double ls_ = 0;
            size_t n = 0;
            rc = A->trainer_forward_backward(ctx, t, in, tg, &ls_, &n);
            step_sum += ls_, step_n += n;
        }
        if (rc) break;
        double lr_s = ft_lr_at(sched, lr, warmup, (int)total, s);
        float norm = 0;
        if ((rc = A->trainer_step(ctx, t, (float)lr_s, (float)clip, &norm)) != 0) break;
        double dt = now_s() - ts, dc = cpu_s() - tc;
        train_s += dt, train_cpu_s += dc;
        if (s == start) step1_s = dt, step1_cpu_s = dc;
        tokens += step_tokens, targets += step_n;
        last_loss = step_n ? step_sum / (double)step_n : NAN;
        loss_window += last_loss, window_n++;
        double el = now_s() - t0, done = (double)(s + 1 - start);
        double eta = el / done * (double)(total - s - 1);
        A->progress(ctx, (double)(s + 1) / (double)total, "step %d/%lld loss %.4f lr %.3g %.0f tok/s ETA %.0fs", s + 1,
                    (long long)total, last_loss, lr_s, train_s > 0 ? (double)tokens / train_s : 0.0, eta);
        if (eval.n && eval_every && (s + 1) % eval_every == 0 && s + 1 < total) {
            if ((rc = evaluate(ctx, t, &eval, B, eval_batches, &val)) != 0) break;
            A->log(LLMOPT_LOG_INFO, "step %d: val_loss %.4f val_ppl %.3f", s + 1, val, exp(val));
            if (val < ls.best_val) ls.best_val = val, ls.bad_evals = 0;
            else ls.bad_evals++;
            if (patience && ls.bad_evals >= patience) {
                A->log(LLMOPT_LOG_INFO, "early stop at step %d: no better val_loss in %d evaluations (best %.4f)", s + 1,
                       ls.bad_evals, ls.best_val);
                stopped_early = 1;
            }
        }
        if (ck_every && (s + 1) % ck_every == 0 && (rc = save_checkpoint(ctx, t, ckdir, &ls, NULL, 0)) != 0) break;
        if (stopped_early) {
            s++;
            break;
        }
        if (A->cancelled(ctx)) {
            char saved[4200] = "";
            rc = save_checkpoint(ctx, t, ckdir, &ls, saved, sizeof saved);
            if (!rc) {
                /* the host reports a cancelled stage without its message: say where the state is */
                A->log(LLMOPT_LOG_WARN, "stage '%s': cancelled after step %d; checkpoint saved in %s (continue with "
                       "resume_from: %s)", A->stage_id(ctx), s + 1, saved, saved);
                rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled after step %d; checkpoint saved in %s", s + 1, saved);
            }
            break;
        }
    }
    /* no more steps: the gradients and moments go before the final evaluation and the export
     * (whose copy of the weights would otherwise come on top of them: the run's peak) */
    if (!rc) A->trainer_finish(t);
    if (!rc && eval.n) {
        rc = evaluate(ctx, t, &eval, B, eval_batches, &val);
        if (!rc) {
            A->metric(ctx, "val_loss", val, "nats/token", LLMOPT_BETTER_LOWER);
            A->metric(ctx, "val_ppl", exp(val), NULL, LLMOPT_BETTER_LOWER);
        }
    }
    if (!rc) {
        if (window_n) A->metric(ctx, "train_loss", last_loss, "nats/token", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "tokens_per_s", train_s > 0 ? (double)tokens / train_s : 0, "tok/s", LLMOPT_BETTER_HIGHER);
        A->metric(ctx, "target_tokens_per_s", train_s > 0 ? (double)targets / train_s : 0, "tok/s",
                  LLMOPT_BETTER_HIGHER);
        /* the first step also pays for first-touch page faults of the activations, gradients
         * and moments: the rate after it is what a long run sees, and what benches time */
        size_t n_run = (size_t)(s - start);
        if (n_run > 1 && train_s > step1_s)
            A->metric(ctx, "steady_tokens_per_s", (double)(n_run - 1) * (double)step_tokens / (train_s - step1_s),
                      "tok/s", LLMOPT_BETTER_HIGHER);
        if (n_run > 1 && train_cpu_s > step1_cpu_s)
            A->metric(ctx, "steady_tokens_per_cpu_s",
                      (double)(n_run - 1) * (double)step_tokens / (train_cpu_s - step1_cpu_s), "tok/s",
                      LLMOPT_BETTER_HIGHER);
        A->metric(ctx, "train_tokens", (double)tokens, "tokens", LLMOPT_BETTER_NONE);
        A->metric(ctx, "train_s", train_s, "s", LLMOPT_BETTER_NONE);
        A->metric(ctx, "train_cpu_s", train_cpu_s, "s", LLMOPT_BETTER_NONE);
        A->metric(ctx, "peak_rss_bytes", (double)peak_rss(), "B", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "trainable_params", (double)A->trainer_n_trainable(t), NULL, LLMOPT_BETTER_NONE);
        A->metric(ctx, "steps", (double)A->trainer_steps(t), NULL, LLMOPT_BETTER_NONE);
        A->metric(ctx, "train_windows", (double)train.n, NULL, LLMOPT_BETTER_NONE);
        *out = t;
        t = NULL;
    }
    (void)loss_window;
    A->trainer_free(t);
    ft_order_free(&order);
    ft_dataset_free(&train);
    ft_dataset_free(&eval);
    free(in), free(tg), free(ckdir);
    return rc;
}
