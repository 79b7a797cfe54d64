/* The training engine (host/runtime/train.h) on a tiny random GPT-2 (tied embeddings, biases,
 * layernorm, gelu) and a tiny Llama (grouped-query attention, linear rope scaling, attention
 * biases, untied head), built here by hand, with the cpu plugin's kernels. Gradients themselves
 * are held to torch autograd by tests/interop/test_train.py; here, the engine's behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cpu_fixture.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin/loader.h"
#include "runtime/quant.h"
#include "runtime/runtime.h"
#include "runtime/threadpool.h"
#include "runtime/train.h"
#include "sched/stage_ctx.h"
#include "testutil.h"

#define VOCAB 23
#define B 2
#define T 8

#include "tiny_models.h"

static registry *g_reg;
/* A batch: random tokens, targets the inputs shifted by one, the first target ignored. */
static void batch(uint64_t seed, int n, int32_t *in, int32_t *tg) {
    g_rng = seed * 7919 + 1;
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < T; i++) in[s * T + i] = (int32_t)(frand(0, 1) * VOCAB) % VOCAB;
        for (int i = 0; i < T; i++) tg[s * T + i] = i + 1 < T ? in[s * T + i + 1] : (int32_t)((s * 5 + 3) % VOCAB);
        tg[s * T] = -100;
    }
}

static tr_options opts(int batch) {
    tr_options o;
    tr_options_default(&o);
    o.batch = batch;
    o.seq = T;
    o.seed = 42;
    return o;
}

static tr_trainer *trainer(llmopt_model *m, const tr_options *o) {
    tr_trainer *t = NULL;
    llmopt_error err = {0};
    if (tr_new(m, o, &t, &err) != 0) fail_msg("tr_new: %s", err.msg);
    return t;
}

static double fb(tr_trainer *t, const int32_t *in, const int32_t *tg) {
    double loss;
    size_t n;
    llmopt_error err = {0};
    if (tr_forward_backward(t, in, tg, &loss, &n, &err) != 0) fail_msg("forward_backward: %s", err.msg);
    return loss / (double)n;
}

static double eval(tr_trainer *t, const int32_t *in, const int32_t *tg) {
    double loss;
    size_t n;
    llmopt_error err = {0};
    if (tr_eval(t, in, tg, &loss, &n, &err) != 0) fail_msg("eval: %s", err.msg);
    return loss / (double)n;
}

static void step(tr_trainer *t, float lr) {
    llmopt_error err = {0};
    float norm;
    if (tr_step(t, lr, 1.0f, &norm, &err) != 0) fail_msg("step: %s", err.msg);
}

static llmopt_model *model(int which) { return which == 0 ? tiny_gpt2(1, 2) : tiny_llama(2); }
static const char *const model_name[] = {"gpt2", "llama"};

static int group_setup(void **state) {
    (void)state;
    plugin_rec *cpu = NULL;
    if (cpu_fixture_load(2, &cpu) != 0 || cpu->state != PLUGIN_LOADED) return -1;
    g_reg = cpu_fixture_reg;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    cpu_fixture_unload();
    return 0;
}

/* ---- tests ---- */

static void loss_falls_below_half_when_overfitting_one_batch_for_30_steps(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        tr_options o = opts(B);
        tr_trainer *t = trainer(m, &o);
        int32_t in[B * T], tg[B * T];
        batch(1, B, in, tg);
        double first = fb(t, in, tg), last = first;
        step(t, 1e-2f);
        for (int i = 1; i < 30; i++) {
            last = fb(t, in, tg);
            step(t, 1e-2f);
        }
        if (!(last < 0.5 * first)) fail_msg("%s: loss %.4f -> %.4f after 30 steps", model_name[w], first, last);
        assert_int_equal(tr_steps(t), 30);
        tr_free(t);
        rt_model_unref(m);
    }
}

/* Norm-wise relative difference of two f32 tensors. */
static double rel_diff(const llmopt_tensor *a, const llmopt_tensor *b) {
    const float *x = a->data, *y = b->data;
    double d = 0, n = 0;
    for (int64_t i = 0; i < rt_tensor_numel(a); i++) d += ((double)x[i] - y[i]) * ((double)x[i] - y[i]), n += (double)y[i] * y[i];
    return sqrt(d) / (sqrt(n) + 1e-30);
}

static void two_micro_batches_accumulate_to_the_gradient_of_one_batch_of_both(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        tr_options o2 = opts(2), o1 = opts(1);
        tr_trainer *both = trainer(m, &o2), *one = trainer(m, &o1);
        int32_t in[2 * T], tg[2 * T];
        batch(3, 2, in, tg);
        fb(both, in, tg);
        fb(one, in, tg);
        fb(one, in + T, tg + T);
        assert_int_equal(tr_n_params(both), tr_n_params(one));
        double worst = 0;
        for (size_t i = 0; i < tr_n_params(one); i++) {
            double r = rel_diff(tr_param_grad(one, i), tr_param_grad(both, i));
            if (r > worst) worst = r;
            if (!(r < 1e-5)) fail_msg("%s: gradient of %s differs by %.3g", model_name[w], tr_param_name(one, i), r);
        }
        tr_free(both), tr_free(one);
        rt_model_unref(m);
    }
}

static void same_seed_gives_identical_weights_after_five_steps(void **state) {
    (void)state;
    llmopt_model *m = model(1);
    tr_options o = opts(B);
    const char *targets[] = {"q_proj", "down_proj"};
    o.lora_rank = 4, o.lora_dropout = 0.2f, o.lora_targets = targets, o.n_lora_targets = 2;
    tr_trainer *a = trainer(m, &o), *b = trainer(m, &o);
    int32_t in[B * T], tg[B * T];
    for (int s = 0; s < 5; s++) {
        batch((uint64_t)s, B, in, tg);
        fb(a, in, tg), step(a, 1e-2f);
        fb(b, in, tg), step(b, 1e-2f);
    }
    for (size_t i = 0; i < tr_n_params(a); i++) {
        const llmopt_tensor *x = tr_param_value(a, i), *y = tr_param_value(b, i);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    tr_free(a), tr_free(b);
    rt_model_unref(m);
}

/* The loss and its gradient by cross_entropy_fused in place (the cpu plugin has it), or by
 * cross_entropy and cross_entropy_backward in blocks of rows (3 here: blocks cross sequence
 * edges and the last is short), and an export that frees the batch buffers the next forward
 * allocates again: none changes a bit of the losses or of the weights five full fine-tuning
 * steps end at. */
static void blocked_cross_entropy_and_an_export_mid_run_change_no_weight(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        tr_options o = opts(B), blocked = opts(B);
        blocked.ce_rows = 3, blocked.unfused_ce = 1;
        tr_trainer *a = trainer(m, &o), *b = trainer(m, &blocked);
        int32_t in[B * T], tg[B * T];
        for (int s = 0; s < 5; s++) {
            batch((uint64_t)s + 11, B, in, tg);
            assert_true(fb(a, in, tg) == fb(b, in, tg));
            step(a, 1e-2f), step(b, 1e-2f);
            if (s == 1) {
                llmopt_model *ex = NULL;
                llmopt_error err = {0};
                assert_int_equal(tr_export(b, 0, &ex, &err), 0);
                for (size_t i = 0; i < tr_n_params(b); i++) {
                    const llmopt_tensor *x = tr_param_value(b, i), *y = rt_model_get(ex, tr_param_name(b, i));
                    assert_non_null(y);
                    assert_memory_equal(x->data, y->data, x->nbytes);
                }
                rt_model_unref(ex);
            }
        }
        assert_true(tr_n_params(a) > 0);
        for (size_t i = 0; i < tr_n_params(a); i++) {
            const llmopt_tensor *x = tr_param_value(a, i), *y = tr_param_value(b, i);
            assert_memory_equal(x->data, y->data, x->nbytes);
        }
        tr_free(a), tr_free(b);
        rt_model_unref(m);
    }
}

/* tr_finish after three steps: the export (the f32 masters themselves) equals the one taken
 * before it, tr_eval still gives the same loss, the exported weights outlive the trainer, and
 * whatever needs the gradients or moments is refused saying why. LoRA: the merged export is the
 * same too. */
static void finishing_frees_the_optimizer_and_exports_the_same_weights(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++)
        for (int lora = 0; lora < 2; lora++) {
            llmopt_model *m = model(w);
            tr_options o = opts(B);
            const char *targets[] = {w == 0 ? "c_attn" : "q_proj"};
            if (lora) o.lora_rank = 2, o.lora_targets = targets, o.n_lora_targets = 1;
            tr_trainer *t = trainer(m, &o);
            int32_t in[B * T], tg[B * T];
            for (int s = 0; s < 3; s++) {
                batch((uint64_t)s + 5, B, in, tg);
                fb(t, in, tg), step(t, 1e-2f);
            }
            llmopt_error err = {0};
            llmopt_model *before = NULL, *after = NULL;
            assert_int_equal(tr_export(t, 1, &before, &err), 0);
            const double loss = eval(t, in, tg);
            tr_finish(t);
            assert_null(tr_param_grad(t, 0));
            assert_true(eval(t, in, tg) == loss);
            assert_int_equal(tr_export(t, 1, &after, &err), 0);
            double l;
            size_t n;
            assert_int_equal(tr_forward_backward(t, in, tg, &l, &n, &err), LLMOPT_EINVAL);
            assert_non_null(strstr(err.msg, "training is finished"));
            float norm;
            assert_int_equal(tr_step(t, 1e-2f, 1.0f, &norm, &err), LLMOPT_EINVAL);
            char dir[] = "/tmp/llmopt-finish-XXXXXX";
            assert_non_null(mkdtemp(dir));
            err.msg[0] = 0;
            assert_int_equal(tr_save_state(t, dir, &err), LLMOPT_EINVAL);
            assert_non_null(strstr(err.msg, "save_state: training is finished"));
            rmdir(dir);
            tr_zero_grad(t); /* a no-op, not a crash */
            for (size_t i = 0; !lora && i < tr_n_params(t); i++) /* shared, not copied */
                assert_ptr_equal(rt_model_get(after, tr_param_name(t, i)), tr_param_value(t, i));
            tr_free(t);
            for (size_t i = 0; i < rt_model_n_tensors(before); i++) {
                const char *name = rt_model_tensor_name(before, i);
                const llmopt_tensor *x = rt_model_get(before, name), *y = rt_model_get(after, name);
                assert_non_null(y);
                assert_int_equal(x->nbytes, y->nbytes);
                assert_memory_equal(x->data, y->data, x->nbytes);
            }
            rt_model_unref(before), rt_model_unref(after);
            rt_model_unref(m);
        }
}

/* The LM head in blocks of 5 rows (crossing the sequence edge; the last block one row, which
 * takes the kernel's M = 1 path) against all 16 at once, fused and unfused cross-entropy: the
 * losses and every parameter's gradient agree, to the rounding of sums taken in another order
 * (the logits' by the matmul's path for the block's M, the head's weight gradient a block at a
 * time). A block at the wrong rows is off by the loss itself. */
static void lm_head_in_row_blocks_changes_no_loss(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++)
        for (int unfused = 0; unfused < 2; unfused++) {
            llmopt_model *m = model(w);
            tr_options o = opts(B), blocked = opts(B);
            o.lm_rows = B * T, blocked.lm_rows = 5;
            o.unfused_ce = blocked.unfused_ce = unfused;
            tr_trainer *a = trainer(m, &o), *b = trainer(m, &blocked);
            int32_t in[B * T], tg[B * T];
            for (int s = 0; s < 3; s++) {
                batch((uint64_t)s + 23, B, in, tg);
                const double la = fb(a, in, tg), lb = fb(b, in, tg);
                assert_true(fabs(la - lb) <= 1e-6 * fabs(la));
                /* the gradients, every parameter's (the head's and, through dh, the rest) */
                double worst = 0, most = 0;
                for (size_t i = 0; i < tr_n_params(a); i++) {
                    const llmopt_tensor *x = tr_param_grad(a, i), *y = tr_param_grad(b, i);
                    const float *p = x->data, *q = y->data;
                    for (int64_t k = 0; k < rt_tensor_numel(x); k++) {
                        if (fabs(p[k] - q[k]) > worst) worst = fabs(p[k] - q[k]);
                        if (fabs(p[k]) > most) most = fabs(p[k]);
                    }
                }
                assert_true(most > 0);
                assert_true(worst <= 1e-5 * most);
                /* the same weights into the next step: copy a's into b */
                step(a, 1e-2f), step(b, 1e-2f);
                for (size_t i = 0; i < tr_n_params(a); i++)
                    memcpy(tr_param_value(b, i)->data, tr_param_value(a, i)->data, tr_param_value(a, i)->nbytes);
            }
            tr_free(a), tr_free(b);
            rt_model_unref(m);
        }
}

/* Recomputing each layer's activations in the backward (tr_options.recompute) against saving
 * them all: the same kernels on the same inputs, so the losses, every gradient and the weights
 * after three AdamW steps are the same bits, full fine-tuning and LoRA with dropout on a
 * projection of every kind (the masks drawn again must be the forward's). A recompute that read
 * another layer's activations, or skipped what the backward reads, would not be. */
static void recomputing_activations_in_the_backward_changes_no_bit(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++)
        for (int lora = 0; lora < 2; lora++) {
            llmopt_model *m = model(w);
            tr_options o = opts(B);
            const char *targets[] = {w == 0 ? "c_attn" : "q_proj", w == 0 ? "c_proj" : "down_proj", "up_proj", "o_proj"};
            if (lora) o.lora_rank = 2, o.lora_dropout = 0.25f, o.lora_targets = targets, o.n_lora_targets = w ? 4 : 2;
            tr_options r = o;
            r.recompute = 1;
            tr_trainer *a = trainer(m, &o), *b = trainer(m, &r);
            int32_t in[B * T], tg[B * T];
            for (int s = 0; s < 3; s++) {
                batch((uint64_t)s + 41, B, in, tg);
                assert_true(fb(a, in, tg) == fb(b, in, tg));
                assert_true(tr_n_params(a) == tr_n_params(b) && tr_n_params(a) > 0);
                for (size_t i = 0; i < tr_n_params(a); i++) {
                    const llmopt_tensor *x = tr_param_grad(a, i), *y = tr_param_grad(b, i);
                    if (memcmp(x->data, y->data, x->nbytes) != 0)
                        fail_msg("%s%s: gradient of %s differs", model_name[w], lora ? " lora" : "", tr_param_name(a, i));
                }
                step(a, 1e-2f), step(b, 1e-2f);
            }
            assert_true(eval(a, in, tg) == eval(b, in, tg));
            for (size_t i = 0; i < tr_n_params(a); i++)
                assert_memory_equal(tr_param_value(a, i)->data, tr_param_value(b, i)->data, tr_param_value(a, i)->nbytes);
            tr_free(a), tr_free(b);
            rt_model_unref(m);
        }
}

/* Training only the top layer (without and with its norms) stops the backward there: the
 * gradients it computes are bitwise those of training every tensor. */
static void training_only_the_top_layer_gives_its_gradients_of_training_all(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        const char *lin[] = {w == 0 ? "*h.1.attn.*" : "*layers.1.self_attn.*", w == 0 ? "*h.1.mlp.*" : "*layers.1.mlp.*"};
        const char *all1[] = {w == 0 ? "*h.1.*" : "*layers.1.*"};
        const char *const *pats[] = {lin, all1};
        size_t npats[] = {2, 1};
        for (int k = 0; k < 2; k++) {
            tr_options o = opts(B), top = opts(B);
            top.trainable = pats[k], top.n_trainable = npats[k];
            tr_trainer *a = trainer(m, &o), *b = trainer(m, &top);
            int32_t in[B * T], tg[B * T];
            batch(3, B, in, tg);
            assert_true(fb(a, in, tg) == fb(b, in, tg));
            assert_true(tr_n_params(b) > 0 && tr_n_params(b) < tr_n_params(a));
            for (size_t i = 0; i < tr_n_params(b); i++) {
                size_t j = 0;
                while (j < tr_n_params(a) && strcmp(tr_param_name(a, j), tr_param_name(b, i)) != 0) j++;
                assert_true(j < tr_n_params(a));
                const llmopt_tensor *ga = tr_param_grad(a, j), *gb = tr_param_grad(b, i);
                assert_memory_equal(ga->data, gb->data, ga->nbytes);
            }
            tr_free(a), tr_free(b);
        }
        rt_model_unref(m);
    }
}

static void lora_starts_at_the_base_loss_and_trains_only_adapters(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        llmopt_model *before = rt_model_clone(m);
        /* keep private copies of the base weights to compare after training */
        size_t nt = rt_model_n_tensors(m);
        float **copies = calloc(nt, sizeof *copies);
        for (size_t i = 0; i < nt; i++) {
            const llmopt_tensor *x = rt_model_get(m, rt_model_tensor_name(m, i));
            copies[i] = malloc(x->nbytes);
            memcpy(copies[i], x->data, x->nbytes);
        }
        tr_options full = opts(B), lo = opts(B);
        const char *targets[] = {w == 0 ? "c_attn" : "v_proj", w == 0 ? "c_fc" : "gate_proj"};
        lo.lora_rank = 2, lo.lora_alpha = 4, lo.lora_targets = targets, lo.n_lora_targets = 2;
        tr_trainer *base = trainer(m, &full), *t = trainer(m, &lo);
        int32_t in[B * T], tg[B * T];
        batch(5, B, in, tg);
        assert_true(eval(t, in, tg) == eval(base, in, tg)); /* B = 0: the adapters add exactly 0 */
        assert_int_equal(tr_n_params(t), 2 * 2 * 2); /* A and B on two modules in two layers */
        for (int s = 0; s < 5; s++) fb(t, in, tg), step(t, 1e-2f);
        for (size_t i = 0; i < nt; i++) {
            const llmopt_tensor *x = rt_model_get(m, rt_model_tensor_name(m, i));
            assert_memory_equal(x->data, copies[i], x->nbytes);
            free(copies[i]);
        }
        free(copies);
        for (size_t i = 0; i < tr_n_params(t); i++)
            if (strstr(tr_param_name(t, i), "lora_B")) {
                const float *v = tr_param_value(t, i)->data;
                double s = 0;
                for (int64_t j = 0; j < rt_tensor_numel(tr_param_value(t, i)); j++) s += fabs(v[j]);
                assert_true(s > 0);
            }
        /* without merge the exported model shares every base tensor */
        llmopt_model *ex = NULL;
        llmopt_error err = {0};
        assert_int_equal(tr_export(t, 0, &ex, &err), 0);
        for (size_t i = 0; i < nt; i++) {
            const char *name = rt_model_tensor_name(m, i);
            assert_ptr_equal(rt_model_get(ex, name), rt_model_get(before, name));
        }
        rt_model_unref(ex);
        /* the adapters alone, named as PEFT saves them */
        assert_int_equal(tr_lora_export(t, &ex, &err), 0);
        assert_int_equal(rt_model_n_tensors(ex), tr_n_params(t));
        char want[160];
        snprintf(want, sizeof want, "base_model.model.%s.lora_A.weight",
                 w == 0 ? "h.0.attn.c_attn" : "model.layers.0.self_attn.v_proj");
        const llmopt_tensor *A = rt_model_get(ex, want);
        assert_non_null(A);
        assert_int_equal(A->shape[0], 2);
        rt_model_unref(ex);
        tr_free(base), tr_free(t);
        rt_model_unref(before);
        rt_model_unref(m);
    }
}

static void merged_model_forward_equals_the_lora_forward(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        tr_options lo = opts(B), full = opts(B);
        const char *targets[] = {"*"};
        lo.lora_rank = 3, lo.lora_alpha = 6, lo.lora_targets = targets, lo.n_lora_targets = 1;
        tr_trainer *t = trainer(m, &lo);
        int32_t in[B * T], tg[B * T];
        batch(6, B, in, tg);
        for (int s = 0; s < 5; s++) fb(t, in, tg), step(t, 3e-2f);
        llmopt_model *merged = NULL;
        llmopt_error err = {0};
        assert_int_equal(tr_export(t, 1, &merged, &err), 0);
        tr_trainer *plain = trainer(merged, &full);
        double a = eval(t, in, tg), b = eval(plain, in, tg), base;
        tr_trainer *orig = trainer(m, &full);
        base = eval(orig, in, tg);
        if (!(fabs(a - b) <= 1e-5 * fabs(a))) fail_msg("%s: LoRA loss %.8f, merged %.8f", model_name[w], a, b);
        assert_true(fabs(a - base) > 1e-4); /* the adapters changed something */
        tr_free(t), tr_free(plain), tr_free(orig);
        rt_model_unref(merged);
        rt_model_unref(m);
    }
}

/* A block linear weight (not an embedding or the head) of a model built above. */
static int block_weight(const char *name, const llmopt_tensor *t) {
    return t->ndim == 2 && strstr(name, ".weight") && (strncmp(name, "h.", 2) == 0 || strstr(name, "layers."));
}

/* The block linear weights of m quantized to dtype (qm, GPT-2 Conv1D stored [out, in]) and the
 * same quantized values back in f32 in m's own layout (dm). */
static void quantized_pair(const llmopt_model *m, int gpt2, int dtype, llmopt_model **qm, llmopt_model **dm) {
    *qm = rt_model_clone(m), *dm = rt_model_clone(m);
    llmopt_error err = {0};
    for (size_t i = 0; i < rt_model_n_tensors(m); i++) {
        const char *name = rt_model_tensor_name(m, i);
        const llmopt_tensor *w = rt_model_get(m, name);
        if (!block_weight(name, w)) continue;
        int64_t R = w->shape[0], C = w->shape[1];
        llmopt_tensor *oi = rt_tensor_new(LLMOPT_DTYPE_F32, 2, gpt2 ? (int64_t[]){C, R} : w->shape), *q = NULL, *d = NULL;
        const float *src = w->data;
        float *dst = oi->data;
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) dst[gpt2 ? c * R + r : r * C + c] = src[r * C + c];
        if (q_quantize_tensor(oi, dtype, &q, &err) || q_dequantize_tensor(q, &d, &err)) fail_msg("%s: %s", name, err.msg);
        assert_int_equal(rt_model_set(*qm, name, q), 0);
        llmopt_tensor *back = rt_tensor_new(LLMOPT_DTYPE_F32, 2, w->shape);
        const float *dv = d->data;
        float *bv = back->data;
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) bv[r * C + c] = dv[gpt2 ? c * R + r : r * C + c];
        assert_int_equal(rt_model_set(*dm, name, back), 0);
        rt_tensor_unref(oi), rt_tensor_unref(q), rt_tensor_unref(d), rt_tensor_unref(back);
    }
}

/* QLoRA's premise in the engine: adapters over a frozen quantized base get the gradients, and
 * after AdamW steps the weights, of adapters over the f32 copy of the dequantized base (the
 * quantized forward and the dx-only backward kernels against the f32 ones). */
static void lora_over_a_quantized_base_trains_as_over_its_dequantized_weights(void **state) {
    (void)state;
    struct { int which, dtype; } cases[] = {
        {0, LLMOPT_DTYPE_GQ(4, 16, 0)}, {1, LLMOPT_DTYPE_GQ(4, 8, 1)}, {2, LLMOPT_DTYPE_NF4}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int which = cases[c].which, gpt2 = which != 1;
        llmopt_model *m = which == 0 ? tiny_gpt2(1, 2) : which == 1 ? tiny_llama(2) : gpt2_of_width(3, 1, 64);
        llmopt_model *qm, *dm;
        quantized_pair(m, gpt2, cases[c].dtype, &qm, &dm);
        tr_options lo = opts(B);
        const char *targets[] = {"*"};
        lo.lora_rank = 2, lo.lora_alpha = 4, lo.lora_targets = targets, lo.n_lora_targets = 1;
        tr_trainer *tq = trainer(qm, &lo), *td = trainer(dm, &lo);
        int32_t in[B * T], tg[B * T];
        batch(9, B, in, tg);
        for (int s = 0; s < 4; s++) {
            double lq = fb(tq, in, tg), ld = fb(td, in, tg);
            if (!(fabs(lq - ld) <= 1e-5 * fabs(ld)))
                fail_msg("%s step %d: loss %.8f on the quantized base, %.8f on its dequantized copy",
                         rt_dtype_traits(cases[c].dtype)->name, s, lq, ld);
            assert_int_equal(tr_n_params(tq), tr_n_params(td));
            for (size_t i = 0; s > 0 && i < tr_n_params(tq); i++) {
                double e = rel_diff(tr_param_grad(tq, i), tr_param_grad(td, i));
                if (!(e < 1e-4)) fail_msg("%s step %d: gradient of %s differs by %.3g", rt_dtype_traits(cases[c].dtype)->name,
                                          s, tr_param_name(tq, i), e);
            }
            step(tq, 1e-2f), step(td, 1e-2f);
        }
        for (size_t i = 0; i < tr_n_params(tq); i++)
            assert_true(rel_diff(tr_param_value(tq, i), tr_param_value(td, i)) < 1e-4);
        tr_free(tq), tr_free(td);
        rt_model_unref(qm), rt_model_unref(dm), rt_model_unref(m);
    }
}

static void expect_new_error(llmopt_model *m, const tr_options *o, const char *text) {
    tr_trainer *t = NULL;
    llmopt_error err = {0};
    assert_int_equal(tr_new(m, o, &t, &err), LLMOPT_EINVAL);
    assert_null(t);
    if (!strstr(err.msg, text)) fail_msg("message '%s' lacks '%s'", err.msg, text);
}

static void unmatched_trainable_pattern_or_lora_target_is_an_error_naming_it(void **state) {
    (void)state;
    llmopt_model *m = model(0);
    tr_options o = opts(B);
    const char *pats[] = {"h.*.ln_1.weight", "h.*.mlp.nothing*"};
    o.trainable = pats, o.n_trainable = 2;
    expect_new_error(m, &o, "trainable pattern 'h.*.mlp.nothing*' matches no tensor");
    o = opts(B);
    const char *targets[] = {"c_attn", "q_proj"};
    o.lora_rank = 2, o.lora_targets = targets, o.n_lora_targets = 2;
    expect_new_error(m, &o, "LoRA target 'q_proj' matches no linear layer");
    /* a pattern that matches trains exactly what it names */
    o = opts(B);
    o.trainable = pats, o.n_trainable = 1;
    tr_trainer *t = trainer(m, &o);
    assert_int_equal(tr_n_params(t), 2);
    assert_string_equal(tr_param_name(t, 1), "h.1.ln_1.weight");
    tr_free(t);
    rt_model_unref(m);
}

static void resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run(void **state) {
    (void)state;
    for (int w = 0; w < 4; w++) { /* gpt2 full, llama LoRA; then both with 8-bit moments */
        llmopt_model *m = model(w % 2);
        tr_options o = opts(B);
        const char *targets[] = {"*"};
        if (w % 2 == 1) o.lora_rank = 2, o.lora_dropout = 0.1f, o.lora_targets = targets, o.n_lora_targets = 1;
        if (w >= 2) o.optimizer_bits = 8, o.min_8bit = 1;
        tr_trainer *a = trainer(m, &o), *b = trainer(m, &o);
        char *dir = make_test_dir("train-state");
        int32_t in[B * T], tg[B * T];
        llmopt_error err = {0};
        for (int s = 0; s < 6; s++) {
            batch((uint64_t)s, B, in, tg);
            fb(a, in, tg), step(a, 1e-2f);
            if (s < 3) fb(b, in, tg), step(b, 1e-2f);
            if (s == 2) {
                if (tr_save_state(b, dir, &err) != 0) fail_msg("save: %s", err.msg);
                tr_free(b);
                b = trainer(m, &o);
                if (tr_load_state(b, dir, &err) != 0) fail_msg("load: %s", err.msg);
                assert_int_equal(tr_steps(b), 3);
            }
            if (s >= 3) fb(b, in, tg), step(b, 1e-2f);
        }
        for (size_t i = 0; i < tr_n_params(a); i++) {
            const llmopt_tensor *x = tr_param_value(a, i), *y = tr_param_value(b, i);
            if (memcmp(x->data, y->data, x->nbytes) != 0)
                fail_msg("%s%s: %s differs after resuming", model_name[w % 2], w >= 2 ? " (8-bit moments)" : "",
                         tr_param_name(a, i));
        }
        tr_free(a), tr_free(b);
        remove_dir(dir);
        rt_model_unref(m);
    }
}

static void a_checkpoint_of_another_model_is_refused_saying_what_differs(void **state) {
    (void)state;
    llmopt_model *m = tiny_gpt2(1, 2), *same_shape = tiny_gpt2(99, 2), *deeper = tiny_gpt2(1, 3);
    tr_options o = opts(B);
    tr_trainer *t = trainer(m, &o), *u = trainer(same_shape, &o), *v = trainer(deeper, &o);
    char *dir = make_test_dir("train-state-other");
    llmopt_error err = {0};
    assert_int_equal(tr_save_state(t, dir, &err), 0);
    assert_int_equal(tr_load_state(u, dir, &err), LLMOPT_EINVAL);
    if (!strstr(err.msg, "another model")) fail_msg("message '%s'", err.msg);
    assert_int_equal(tr_load_state(v, dir, &err), LLMOPT_EINVAL);
    if (!strstr(err.msg, "n_layer = 2; this trainer has 3")) fail_msg("message '%s'", err.msg);
    tr_options lo = opts(B);
    lo.weight_decay = 0.1f;
    tr_trainer *x = trainer(m, &lo);
    assert_int_equal(tr_load_state(x, dir, &err), LLMOPT_EINVAL);
    if (!strstr(err.msg, "weight_decay")) fail_msg("message '%s'", err.msg);
    tr_free(t), tr_free(u), tr_free(v), tr_free(x);
    remove_dir(dir);
    rt_model_unref(m), rt_model_unref(same_shape), rt_model_unref(deeper);
}

/* optimizer_bits 8: the moments of every tensor (min_8bit 1 here; 4096 values by default) in 8
 * bits. Ten steps end near the f32 moments' losses, and a checkpoint of one form is refused by
 * a trainer of the other, saying so. */
static void eight_bit_moments_train_as_f32_ones_do_and_checkpoints_keep_their_form(void **state) {
    (void)state;
    for (int w = 0; w < 2; w++) {
        llmopt_model *m = model(w);
        tr_options o32 = opts(B), o8 = opts(B);
        o8.optimizer_bits = 8, o8.min_8bit = 1;
        tr_trainer *a = trainer(m, &o32), *b = trainer(m, &o8);
        int32_t in[B * T], tg[B * T];
        double la = 0, lb = 0, l0 = 0;
        for (int s = 0; s < 10; s++) {
            batch((uint64_t)s % 3, B, in, tg);
            if (s == 0) l0 = eval(a, in, tg);
            fb(a, in, tg), step(a, 1e-2f);
            fb(b, in, tg), step(b, 1e-2f);
        }
        batch(0, B, in, tg);
        la = eval(a, in, tg), lb = eval(b, in, tg);
        print_message("%s: loss %.4f at the start, after ten steps %.4f (f32 moments) and %.4f (8-bit)\n",
                      model_name[w], l0, la, lb);
        assert_true(la < l0 - 0.1);
        assert_true(fabs(lb - la) < 0.02 * (l0 - la));
        int differ = 0; /* the moments were rounded: the weights are near, not equal */
        for (size_t i = 0; i < tr_n_params(a) && !differ; i++)
            differ = memcmp(tr_param_value(a, i)->data, tr_param_value(b, i)->data, tr_param_value(a, i)->nbytes) != 0;
        assert_true(differ);
        /* the form of the moments is part of a checkpoint */
        char *dir = make_test_dir("train-state-8bit");
        llmopt_error err = {0};
        assert_int_equal(tr_save_state(b, dir, &err), 0);
        assert_int_equal(tr_load_state(a, dir, &err), LLMOPT_EINVAL);
        if (!strstr(err.msg, "saved with optimizer adamw_8bit; this trainer uses adamw")) fail_msg("message '%s'", err.msg);
        assert_int_equal(tr_save_state(a, dir, &err), 0);
        assert_int_equal(tr_load_state(b, dir, &err), LLMOPT_EINVAL);
        if (!strstr(err.msg, "saved with optimizer adamw; this trainer uses adamw_8bit")) fail_msg("message '%s'", err.msg);
        remove_dir(dir);
        tr_options bad = opts(B);
        bad.optimizer_bits = 16;
        expect_new_error(m, &bad, "optimizer_bits must be 32 or 8, not 16");
        tr_free(a), tr_free(b);
        rt_model_unref(m);
    }
}

static void bad_targets_are_refused_before_any_work(void **state) {
    (void)state;
    llmopt_model *m = model(0);
    tr_options o = opts(1);
    tr_trainer *t = trainer(m, &o);
    int32_t in[T] = {0}, tg[T];
    for (int i = 0; i < T; i++) tg[i] = -100;
    double loss;
    size_t n;
    llmopt_error err = {0};
    assert_int_equal(tr_forward_backward(t, in, tg, &loss, &n, &err), 0);
    assert_int_equal((int)n, 0);
    assert_int_equal(tr_step(t, 1e-3f, 0, NULL, &err), LLMOPT_EINVAL); /* nothing to average */
    tg[3] = VOCAB;
    assert_int_equal(tr_forward_backward(t, in, tg, &loss, &n, &err), LLMOPT_EINVAL);
    if (!strstr(err.msg, "target 3")) fail_msg("message '%s'", err.msg);
    tr_free(t);
    rt_model_unref(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(loss_falls_below_half_when_overfitting_one_batch_for_30_steps),
        cmocka_unit_test(two_micro_batches_accumulate_to_the_gradient_of_one_batch_of_both),
        cmocka_unit_test(same_seed_gives_identical_weights_after_five_steps),
        cmocka_unit_test(blocked_cross_entropy_and_an_export_mid_run_change_no_weight),
        cmocka_unit_test(lm_head_in_row_blocks_changes_no_loss),
        cmocka_unit_test(recomputing_activations_in_the_backward_changes_no_bit),
        cmocka_unit_test(finishing_frees_the_optimizer_and_exports_the_same_weights),
        cmocka_unit_test(training_only_the_top_layer_gives_its_gradients_of_training_all),
        cmocka_unit_test(lora_starts_at_the_base_loss_and_trains_only_adapters),
        cmocka_unit_test(merged_model_forward_equals_the_lora_forward),
        cmocka_unit_test(unmatched_trainable_pattern_or_lora_target_is_an_error_naming_it),
        cmocka_unit_test(resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run),
        cmocka_unit_test(a_checkpoint_of_another_model_is_refused_saying_what_differs),
        cmocka_unit_test(bad_targets_are_refused_before_any_work),
        cmocka_unit_test(eight_bit_moments_train_as_f32_ones_do_and_checkpoints_keep_their_form),
        cmocka_unit_test(lora_over_a_quantized_base_trains_as_over_its_dequantized_weights),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
