/* The training engine: binds a GPT-2 or Llama model for training (trainable f32 master copies,
 * LoRA adapters), runs the forward over B x T tokens saving what each backward needs, the
 * backward in reverse through every op with the *_backward kernels, and AdamW. Every kernel is
 * found in the registry (the engine never knows which plugin supplied it).
 *
 * Determinism: for a fixed seed and thread count, results are bitwise reproducible. Kernels
 * split work in chunks that depend only on the sizes and the thread count and never reduce
 * across threads in a racy order; the engine's own reductions (loss sums, the gradient norm)
 * run sequentially in double; dropout masks are a counter-based hash of (seed, micro-batch,
 * layer, element), not a stateful generator, so they do not depend on scheduling. */
#include "train_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"
#include "threadpool.h"
#include "quant.h"
#include "../sched/stage_ctx.h"

#define F32 LLMOPT_DTYPE_F32

/* ---- small helpers ---- */

int tr_glob(const char *pat, const char *s) {
    if (*pat == '\0') return *s == '\0';
    if (*pat == '*') return tr_glob(pat + 1, s) || (*s && tr_glob(pat, s + 1));
    return *s == *pat && tr_glob(pat + 1, s + 1);
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void tr_from_f32(llmopt_tensor *t, const float *src, int64_t n) {
    uint16_t *h = t->data;
    if (t->dtype == F32) memcpy(t->data, src, (size_t)n * sizeof(float));
    else if (t->dtype == LLMOPT_DTYPE_F16)
        for (int64_t i = 0; i < n; i++) h[i] = q_f32_to_f16(src[i]);
    else
        for (int64_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
}

static int is_float(int dtype) {
    return dtype == F32 || dtype == LLMOPT_DTYPE_F16 || dtype == LLMOPT_DTYPE_BF16;
}

/* splitmix64: the seed stream for adapter init and the dropout hash. */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1) from 24 bits of a hash. */
static float unit(uint64_t h) { return (float)(h >> 40) * (1.0f / 16777216.0f); }

static llmopt_tensor f32_view(const float *data, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    llmopt_tensor t;
    memset(&t, 0, sizeof t);
    t.struct_size = sizeof t;
    t.dtype = F32;
    t.device = LLMOPT_DEVICE_CPU;
    t.ndim = ndim;
    t.shape[0] = d0, t.shape[1] = ndim > 1 ? d1 : 1, t.shape[2] = ndim > 2 ? d2 : 1, t.shape[3] = 1;
    t.data = (void *)data;
    t.nbytes = (size_t)(d0 * t.shape[1] * t.shape[2]) * sizeof(float);
    return t;
}

static llmopt_tensor i32_view(const int32_t *data, int64_t n) {
    llmopt_tensor t = f32_view((const float *)data, 1, n, 1, 1);
    t.dtype = LLMOPT_DTYPE_I32;
    return t;
}

/* ---- kernels ---- */

static llmopt_kernel_fn kfind(tr_trainer *t, const char *op, int dtype, llmopt_error *err) {
    for (size_t i = 0; i < t->n_kernels; i++)
        if (t->kernels[i].op == op && t->kernels[i].dtype == dtype) return t->kernels[i].fn;
    const llmopt_kernel_desc *k = host_api_table()->kernel_find(op, LLMOPT_DEVICE_CPU, dtype);
    if (!k) {
        const llmopt_dtype_traits *tr = rt_dtype_traits(dtype);
        error_set(err, LLMOPT_ENOTFOUND, "training needs a '%s' kernel for cpu %s: load a kernel plugin that has one",
                  op, tr ? tr->name : "?");
        return NULL;
    }
    tr_kernel *nk = realloc(t->kernels, (t->n_kernels + 1) * sizeof *nk);
    if (!nk) {
        error_set(err, LLMOPT_ENOMEM, "out of memory");
        return NULL;
    }
    t->kernels = nk;
    t->kernels[t->n_kernels++] = (tr_kernel){op, dtype, k->fn};
    return k->fn;
}

static int call(tr_trainer *t, const char *op, int dtype, const llmopt_tensor **in, int n, llmopt_tensor *out,
                const void *params, llmopt_error *err) {
    llmopt_kernel_fn fn = kfind(t, op, dtype, err);
    if (!fn) return err->status;
    int rc = fn((const llmopt_tensor *const *)in, n, out, params);
    return rc ? error_set(err, rc, "kernel '%s' failed: %s", op, status_str(rc)) : 0;
}

/* ---- ops on plain buffers ---- */

/* out[M,N] (+)= x[M,K] · W (+ b) */
static int mm(tr_trainer *t, const float *x, int64_t M, const llmopt_tensor *w, const llmopt_tensor *b, int layout,
              float *out, int accumulate, llmopt_error *err) {
    int64_t K = layout == LLMOPT_W_OUT_IN ? w->shape[1] : w->shape[0];
    int64_t N = layout == LLMOPT_W_OUT_IN ? w->shape[0] : w->shape[1];
    llmopt_tensor tx = f32_view(x, 2, M, K, 1), to = f32_view(out, 2, M, N, 1);
    const llmopt_tensor *in[3] = {&tx, w, b};
    llmopt_op_matmul p = {sizeof p, layout, accumulate, t->o.matmul_precision};
    return call(t, LLMOPT_OP_MATMUL, w->dtype, in, b ? 3 : 2, &to, &p, err);
}

/* dx (+)= dy · Wᵀ (dx NULL: skip), dW += xᵀ dy, db += colsum(dy) */
static int mm_backward(tr_trainer *t, const float *x, int64_t M, const llmopt_tensor *w, int layout, const float *dy,
                       float *dx, int accumulate_dx, llmopt_tensor *dw, llmopt_tensor *db, llmopt_error *err) {
    int64_t K = layout == LLMOPT_W_OUT_IN ? w->shape[1] : w->shape[0];
    int64_t N = layout == LLMOPT_W_OUT_IN ? w->shape[0] : w->shape[1];
    llmopt_tensor tx = f32_view(x, 2, M, K, 1), tdy = f32_view(dy, 2, M, N, 1), tdx = f32_view(dx, 2, M, K, 1);
    const llmopt_tensor *in[3] = {&tx, w, &tdy};
    llmopt_op_matmul_backward p = {sizeof p, layout, accumulate_dx, dw, db, t->o.matmul_precision};
    return call(t, LLMOPT_OP_MATMUL_BACKWARD, w->dtype, in, 3, &tdx, &p, err);
}

static int norm_fwd(tr_trainer *t, const float *x, const tr_w *g, const tr_w *b, float *out, llmopt_error *err) {
    llmopt_tensor tx = f32_view(x, 2, t->BT, t->c.n_embd, 1), to = f32_view(out, 2, t->BT, t->c.n_embd, 1);
    const llmopt_tensor *in[3] = {&tx, g->t, b->t};
    llmopt_op_norm p = {sizeof p, t->c.norm_eps};
    const char *op = t->c.family == ARCH_GPT2 ? LLMOPT_OP_LAYERNORM : LLMOPT_OP_RMSNORM;
    return call(t, op, F32, in, b->t ? 3 : 2, &to, &p, err);
}

/* dx = norm backward (overwritten); dgamma, dbeta accumulate into the parameters' gradients, or
 * into scratch when frozen. */
static int norm_bwd(tr_trainer *t, const float *x, const tr_w *g, const tr_w *b, const float *dy, float *dx,
                    llmopt_error *err) {
    int64_t C = t->c.n_embd;
    llmopt_tensor tx = f32_view(x, 2, t->BT, C, 1), tdy = f32_view(dy, 2, t->BT, C, 1);
    llmopt_tensor tdx = f32_view(dx, 2, t->BT, C, 1);
    /* frozen gamma/beta: their gradients go to the tail of du, which is at least 2C long */
    llmopt_tensor sg = f32_view(t->du, 1, C, 1, 1), sb = f32_view(t->du + C, 1, C, 1, 1);
    const llmopt_tensor *in[3] = {&tx, g->t, &tdy};
    llmopt_op_norm_backward p = {sizeof p, t->c.norm_eps, g->p ? g->p->g : &sg,
                                 t->c.family == ARCH_GPT2 ? (b->p ? b->p->g : &sb) : NULL};
    const char *op = t->c.family == ARCH_GPT2 ? LLMOPT_OP_LAYERNORM_BACKWARD : LLMOPT_OP_RMSNORM_BACKWARD;
    return call(t, op, F32, in, 3, &tdx, &p, err);
}

static int add_into(tr_trainer *t, float *a, const float *b, int64_t n, llmopt_error *err) {
    llmopt_tensor ta = f32_view(a, 1, n, 1, 1), tb = f32_view(b, 1, n, 1, 1);
    const llmopt_tensor *in[2] = {&ta, &tb};
    return call(t, LLMOPT_OP_ADD, F32, in, 2, &ta, NULL, err);
}

static int rope_op(tr_trainer *t, const char *op, float *x, int H, llmopt_error *err) {
    const arch_config *c = &t->c;
    for (int b = 0; b < t->B; b++) {
        float *xb = x + (size_t)b * t->T * H * c->head_dim;
        llmopt_tensor tx = f32_view(xb, 3, t->T, H, c->head_dim), tf = f32_view(c->rope_inv_freq, 1, c->rope_n_freq, 1, 1);
        const llmopt_tensor *in[2] = {&tx, &tf};
        llmopt_op_rope p = {sizeof p, 0, c->head_dim, c->rope_theta, c->rope_scale};
        int rc = call(t, op, F32, in, c->rope_n_freq ? 2 : 1, &tx, &p, err); /* in[1]: llama3 rope scaling */
        if (rc) return rc;
    }
    return 0;
}

/* ---- LoRA linear layers ---- */

/* Keep element i of adapter `id`'s input in this micro-batch (inverted dropout, as PEFT's
 * nn.Dropout: kept values are scaled by 1/(1-p)). */
static float keep_scale(const tr_trainer *t, const tr_lora *lo, int64_t i) {
    uint64_t h = mix64(mix64(t->o.seed ^ mix64(t->micro)) ^ mix64(lo->id) ^ (uint64_t)i);
    return unit(h) < t->o.lora_dropout ? 0.0f : 1.0f / (1.0f - t->o.lora_dropout);
}

static float lora_scale(const tr_trainer *t) { return t->o.lora_alpha / (float)t->o.lora_rank; }

/* y (+)= x W (+ b) + s drop(x) Aᵀ Bᵀ. x must stay valid until the backward. */
static int linear_fwd(tr_trainer *t, tr_linear *L, const float *x, float *y, int accumulate, int train,
                      llmopt_error *err) {
    int rc = mm(t, x, t->BT, L->w.t, L->b.t, L->layout, y, accumulate, err);
    if (rc || !L->lora) return rc;
    tr_lora *lo = L->lora;
    const float *xin = x;
    if (train && t->o.lora_dropout > 0) {
        int64_t n = (int64_t)t->BT * L->in;
        for (int64_t i = 0; i < n; i++) lo->xd[i] = x[i] * keep_scale(t, lo, i);
        xin = lo->xd;
    }
    lo->x = xin;
    int r = t->o.lora_rank;
    if ((rc = mm(t, xin, t->BT, lo->A->w, NULL, LLMOPT_W_OUT_IN, lo->u, 0, err))) return rc;
    float s = lora_scale(t);
    for (int64_t i = 0; i < (int64_t)t->BT * r; i++) lo->u[i] *= s;
    return mm(t, lo->u, t->BT, lo->B->w, NULL, LLMOPT_W_OUT_IN, y, 1, err);
}

/* dx (+)= dy · (W + s BA)ᵀ through the dropout (dx NULL: not wanted); gradients of W, b, A, B
 * when trained. */
static int linear_bwd(tr_trainer *t, tr_linear *L, const float *x, const float *dy, float *dx, int accumulate_dx,
                      llmopt_error *err) {
    int rc = 0;
    if (dx || L->w.p || L->b.p)
        rc = mm_backward(t, x, t->BT, L->w.t, L->layout, dy, dx, accumulate_dx, L->w.p ? L->w.p->g : NULL,
                         L->b.p ? L->b.p->g : NULL, err);
    if (rc || !L->lora) return rc;
    tr_lora *lo = L->lora;
    int r = t->o.lora_rank;
    /* y += u Bᵀ: dB += dyᵀ u, du = dy B */
    if ((rc = mm_backward(t, lo->u, t->BT, lo->B->w, LLMOPT_W_OUT_IN, dy, t->du, 0, lo->B->g, NULL, err))) return rc;
    float s = lora_scale(t);
    for (int64_t i = 0; i < (int64_t)t->BT * r; i++) t->du[i] *= s;
    /* u = xin Aᵀ: dA += duᵀ xin, dxin = du A, then through the dropout mask */
    if (!(t->o.lora_dropout > 0) || !dx)
        return mm_backward(t, lo->x, t->BT, lo->A->w, LLMOPT_W_OUT_IN, t->du, dx, 1, lo->A->g, NULL, err);
    if ((rc = mm_backward(t, lo->x, t->BT, lo->A->w, LLMOPT_W_OUT_IN, t->du, t->dxd, 0, lo->A->g, NULL, err)))
        return rc;
    int64_t n = (int64_t)t->BT * L->in;
    for (int64_t i = 0; i < n; i++) dx[i] += t->dxd[i] * keep_scale(t, lo, i);
    return 0;
}

/* ---- binding ---- */

/* Whether any weight of layer L trains (a parameter or an adapter). */
static int layer_trains(const tr_layer *L) {
    const tr_w *ws[] = {&L->ln1_w, &L->ln1_b, &L->ln2_w, &L->ln2_b};
    for (size_t i = 0; i < 4; i++)
        if (ws[i]->p) return 1;
    const tr_linear *ls[] = {&L->qkv, &L->q, &L->k, &L->v, &L->o, &L->up, &L->gate, &L->down};
    for (size_t i = 0; i < 8; i++)
        if (ls[i]->w.p || ls[i]->b.p || ls[i]->lora) return 1;
    return 0;
}

static void tr_w_bind(tr_trainer *t, int layer, const char *what, tr_w *w) {
    arch_tensor_name(&t->c, t->m, layer, what, w->name, sizeof w->name);
    w->t = rt_model_get(t->m, w->name);
    w->p = NULL;
}

static void linear_bind(tr_trainer *t, int layer, const char *w, const char *b, tr_linear *L) {
    tr_w_bind(t, layer, w, &L->w);
    tr_w_bind(t, layer, b, &L->b);
    if (!L->w.t) return;
    L->layout = arch_linear_layout(&t->c, L->w.t);
    int in_out = L->layout == LLMOPT_W_IN_OUT;
    L->in = L->w.t->shape[in_out ? 0 : 1];
    L->out = L->w.t->shape[in_out ? 1 : 0];
}

/* Every slot of the forward pass, for the passes below that treat them alike. */
static size_t all_slots(tr_trainer *t, tr_w **out) {
    size_t n = 0;
    tr_w *model[] = {&t->tok_emb, &t->pos_emb, &t->norm_w, &t->norm_b, &t->lm_head};
    for (size_t i = 0; i < 5; i++)
        if (model[i]->t) out[n++] = model[i];
    for (int l = 0; l < t->c.n_layer; l++) {
        tr_layer *L = &t->layers[l];
        tr_w *ws[] = {&L->ln1_w, &L->ln1_b, &L->ln2_w, &L->ln2_b};
        for (size_t i = 0; i < 4; i++)
            if (ws[i]->t) out[n++] = ws[i];
        tr_linear *ls[] = {&L->qkv, &L->q, &L->k, &L->v, &L->o, &L->up, &L->gate, &L->down};
        for (size_t i = 0; i < 8; i++) {
            if (ls[i]->w.t) out[n++] = &ls[i]->w;
            if (ls[i]->b.t) out[n++] = &ls[i]->b;
        }
    }
    return n;
}

static void param_free(tr_param *p) {
    if (!p) return;
    free(p->name);
    rt_tensor_unref(p->w), rt_tensor_unref(p->g), rt_tensor_unref(p->m), rt_tensor_unref(p->v);
    rt_tensor_unref(p->m_absmax), rt_tensor_unref(p->v_absmax);
    free(p);
}

/* moments in 8 bits (optimizer_bits 8) for tensors of at least TR_MIN_8BIT values */
static tr_param *param_new(const tr_trainer *t, const char *name, int ndim, const int64_t *shape) {
    tr_param *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    int q8 = t->o.optimizer_bits == 8 && n >= (t->o.min_8bit > 0 ? t->o.min_8bit : TR_MIN_8BIT), ok = 1;
    p->name = strdup(name);
    p->w = rt_tensor_new(F32, ndim, shape), p->g = rt_tensor_new(F32, ndim, shape);
    p->m = rt_tensor_new(q8 ? LLMOPT_DTYPE_U8 : F32, ndim, shape), p->v = rt_tensor_new(q8 ? LLMOPT_DTYPE_U8 : F32, ndim, shape);
    if (q8) {
        int64_t blocks = (n + LLMOPT_ADAMW8_BLOCK - 1) / LLMOPT_ADAMW8_BLOCK;
        p->m_absmax = rt_tensor_new(F32, 1, &blocks), p->v_absmax = rt_tensor_new(F32, 1, &blocks);
        ok = p->m_absmax && p->v_absmax;
    }
    if (!p->name || !p->w || !p->g || !p->m || !p->v || !ok) {
        param_free(p);
        return NULL;
    }
    return p;
}

static int add_param(tr_trainer *t, tr_param *p, llmopt_error *err) {
    tr_param **np = realloc(t->params, (t->n_params + 1) * sizeof *np);
    if (!np) {
        param_free(p);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    t->params = np;
    t->params[t->n_params++] = p;
    return 0;
}

static int selected(const tr_trainer *t, const char *name) {
    if (t->o.n_trainable == 0) return 1;
    for (size_t i = 0; i < t->o.n_trainable; i++)
        if (tr_glob(t->o.trainable[i], name)) return 1;
    return 0;
}

/* Full fine-tuning: the model's tensors the forward uses and the patterns select, in checkpoint
 * order, get master copies; every slot reading one of them reads the copy. */
static int make_full_params(tr_trainer *t, tr_w **slots, size_t n_slots, llmopt_error *err) {
    for (size_t i = 0; i < t->o.n_trainable; i++) {
        int hit = 0;
        for (size_t s = 0; s < n_slots && !hit; s++) hit = tr_glob(t->o.trainable[i], slots[s]->name);
        if (!hit)
            return error_set(err, LLMOPT_EINVAL, "trainable pattern '%s' matches no tensor the model's forward pass uses",
                             t->o.trainable[i]);
    }
    for (size_t i = 0; i < rt_model_n_tensors(t->m); i++) {
        const char *name = rt_model_tensor_name(t->m, i);
        tr_param *p = NULL;
        for (size_t s = 0; s < n_slots; s++) {
            if (strcmp(slots[s]->name, name) != 0 || !selected(t, name)) continue;
            const llmopt_tensor *src = slots[s]->t;
            if (!p) {
                if (!is_float(src->dtype)) {
                    if (t->o.n_trainable == 0) break; /* all by default: quantized tensors stay frozen */
                    return error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s' is %s: quantized weights cannot be trained "
                                     "(train LoRA adapters on them instead)", name, rt_dtype_traits(src->dtype)->name);
                }
                if (!(p = param_new(t, name, src->ndim, src->shape))) return error_set(err, LLMOPT_ENOMEM, "out of memory");
                p->src = src;
                rt_tensor_read_f32(src, p->w->data);
                rt_tensor_evict(src); /* the trainer reads its copy from now on */
                int rc = add_param(t, p, err);
                if (rc) return rc;
            }
            slots[s]->p = p;
            slots[s]->t = p->w;
        }
    }
    return 0;
}

static int lora_targeted(const tr_trainer *t, const char *module, size_t i) {
    const char *last = strrchr(module, '.');
    last = last ? last + 1 : module;
    return strcmp(t->o.lora_targets[i], last) == 0 || tr_glob(t->o.lora_targets[i], module);
}

static int make_lora(tr_trainer *t, llmopt_error *err) {
    if (t->o.n_lora_targets == 0)
        return error_set(err, LLMOPT_EINVAL, "LoRA (rank %d) needs target modules (e.g. %s)", t->o.lora_rank,
                         t->c.family == ARCH_GPT2 ? "c_attn" : "q_proj, v_proj");
    int hits[64] = {0};
    if (t->o.n_lora_targets > 64) return error_set(err, LLMOPT_EINVAL, "more than 64 LoRA targets");
    uint64_t rng = mix64(t->o.seed ^ 0x4c6f5241ull);
    int r = t->o.lora_rank;
    for (size_t li = 0; li < t->n_linears; li++) {
        tr_linear *L = t->linears[li];
        char module[160];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(L->w.name) - strlen(".weight")), L->w.name);
        int on = 0;
        for (size_t i = 0; i < t->o.n_lora_targets; i++)
            if (lora_targeted(t, module, i)) on = 1, hits[i]++;
        if (!on) continue;
        if (r > L->in || r > L->out)
            return error_set(err, LLMOPT_EINVAL, "LoRA rank %d exceeds the size of '%s' [%lld, %lld]", r, module,
                             (long long)L->out, (long long)L->in);
        tr_lora *lo = calloc(1, sizeof *lo);
        if (!lo) return error_set(err, LLMOPT_ENOMEM, "out of memory");
        L->lora = lo;
        lo->id = li;
        char name[256];
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", module);
        int rc = 0;
        if (!(lo->A = param_new(t, name, 2, (int64_t[]){r, L->in})) || (rc = add_param(t, lo->A, err)))
            return lo->A ? rc : error_set(err, LLMOPT_ENOMEM, "out of memory");
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", module);
        if (!(lo->B = param_new(t, name, 2, (int64_t[]){L->out, r})) || (rc = add_param(t, lo->B, err)))
            return lo->B ? rc : error_set(err, LLMOPT_ENOMEM, "out of memory");
        /* A as PEFT: kaiming_uniform_(a = sqrt 5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
        float bound = 1.0f / sqrtf((float)L->in), *a = lo->A->w->data;
        for (int64_t i = 0; i < r * L->in; i++) a[i] = (2.0f * unit(rng = mix64(rng)) - 1.0f) * bound;
        lo->u = malloc((size_t)t->BT * (size_t)r * sizeof(float));
        lo->xd = t->o.lora_dropout > 0 ? malloc((size_t)t->BT * (size_t)L->in * sizeof(float)) : NULL;
        if (!lo->u || (t->o.lora_dropout > 0 && !lo->xd)) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < t->o.n_lora_targets; i++)
        if (!hits[i])
            return error_set(err, LLMOPT_EINVAL, "LoRA target '%s' matches no linear layer (%s)", t->o.lora_targets[i],
                             t->c.family == ARCH_GPT2 ? "GPT-2 has c_attn, c_proj, c_fc"
                                                      : "Llama has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
    return 0;
}

/* Frozen vectors (norms, biases) the kernels need in f32. */
static int f32_vectors(tr_trainer *t, tr_w **slots, size_t n, llmopt_error *err) {
    for (size_t s = 0; s < n; s++) {
        tr_w *w = slots[s];
        if (w->p || w->t->ndim != 1 || w->t->dtype == F32) continue;
        llmopt_tensor *c = rt_tensor_f32_copy(w->t);
        const llmopt_tensor **no = realloc(t->owned, (t->n_owned + 1) * sizeof *no);
        if (!c || !no) {
            rt_tensor_unref(c);
            if (no) t->owned = no;
            return error_set(err, LLMOPT_ENOMEM, "out of memory");
        }
        t->owned = no;
        t->owned[t->n_owned++] = c;
        w->t = c;
    }
    return 0;
}

static char **copy_strs(const char *const *s, size_t n) {
    if (!n) return NULL;
    char **c = calloc(n, sizeof *c);
    for (size_t i = 0; c && i < n; i++) c[i] = strdup(s[i] ? s[i] : "");
    return c;
}

static void free_strs(char **s, size_t n) {
    for (size_t i = 0; s && i < n; i++) free(s[i]);
    free(s);
}

void tr_options_default(tr_options *o) {
    memset(o, 0, sizeof *o);
    o->batch = 1;
    o->seq = 128;
    o->lora_alpha = 16.0f;
    o->beta1 = 0.9f, o->beta2 = 0.999f, o->eps = 1e-8f, o->weight_decay = 0.01f;
}

static int check_options(const tr_options *o, const arch_config *c, llmopt_error *err) {
    if (o->batch < 1 || o->seq < 1) return error_set(err, LLMOPT_EINVAL, "batch (%d) and seq (%d) must be positive", o->batch, o->seq);
    if (o->optimizer_bits != 0 && o->optimizer_bits != 32 && o->optimizer_bits != 8)
        return error_set(err, LLMOPT_EINVAL, "optimizer_bits must be 32 or 8, not %d", o->optimizer_bits);
    if (o->seq > c->n_ctx)
        return error_set(err, LLMOPT_EINVAL, "seq %d exceeds the model's context of %d positions", o->seq, c->n_ctx);
    if ((int64_t)o->batch * o->seq > INT32_MAX / 4) return error_set(err, LLMOPT_EINVAL, "batch x seq is too large");
    if (o->lora_rank < 0) return error_set(err, LLMOPT_EINVAL, "lora_rank must be >= 0");
    if (o->lora_rank > 0 && o->n_trainable)
        return error_set(err, LLMOPT_EINVAL, "trainable patterns and LoRA exclude each other (LoRA freezes the base)");
    if (!(o->lora_dropout >= 0 && o->lora_dropout < 1)) return error_set(err, LLMOPT_EINVAL, "lora_dropout must be in [0, 1)");
    if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1))
        return error_set(err, LLMOPT_EINVAL, "AdamW betas must be in [0, 1)");
    if (!(o->eps >= 0) || !(o->weight_decay >= 0) || !isfinite(o->weight_decay) || !isfinite(o->lora_alpha))
        return error_set(err, LLMOPT_EINVAL, "AdamW eps and weight_decay must be >= 0");
    return 0;
}

/* Rows of logits per cross-entropy backward call: the option, else about 4 MB of them, at
 * least 16 rows. */
static int64_t ce_rows(const tr_trainer *t) {
    int64_t n = t->o.ce_rows;
    if (n <= 0) n = ((int64_t)1 << 20) / t->c.vocab > 16 ? ((int64_t)1 << 20) / t->c.vocab : 16;
    return n < t->BT ? n : t->BT;
}

/* Rows of logits in memory at once (tr_options.lm_rows): the option, else about 32 MB of them,
 * at least 16, spread evenly over the blocks the batch needs. */
static int64_t lm_rows(const tr_trainer *t) {
    int64_t n = t->o.lm_rows;
    if (n <= 0) n = ((int64_t)8 << 20) / t->c.vocab > 16 ? ((int64_t)8 << 20) / t->c.vocab : 16;
    if (n >= t->BT) return t->BT;
    const int64_t blocks = (t->BT + n - 1) / n;
    return (t->BT + blocks - 1) / blocks;
}

void tr_free_buffers(tr_trainer *t) {
    tr_acts *a = &t->a;
    free(a->x), free(a->xmid), free(a->h1), free(a->h2), free(a->q), free(a->k), free(a->v), free(a->att);
    free(a->ffa), free(a->ffb), free(a->ffo), free(a->hf), free(a->logits), free(a->losses);
    free(t->dx), free(t->dtmp), free(t->dh), free(t->datt), free(t->dq), free(t->dk), free(t->dv), free(t->dqkv);
    free(t->qkv), free(t->dffa), free(t->dffb), free(t->dffo), free(t->dlogits), free(t->du), free(t->dxd);
    free(t->pos_ids);
    memset(a, 0, sizeof *a);
    t->dx = t->dtmp = t->dh = t->datt = t->dq = t->dk = t->dv = t->dqkv = NULL;
    t->qkv = t->dffa = t->dffb = t->dffo = t->dlogits = t->du = t->dxd = NULL;
    t->pos_ids = NULL;
}

/* The activations and backward scratch of one [B, T] batch: at tr_new, and again at the next
 * forward after tr_free_buffers (an export frees them). */
static int alloc_buffers(tr_trainer *t, llmopt_error *err) {
    if (t->a.x) return 0;
    const arch_config *c = &t->c;
    size_t BT = (size_t)t->BT, L = (size_t)c->n_layer, C = (size_t)c->n_embd;
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_kv_head * c->head_dim, F = (size_t)c->n_ff;
    size_t V = (size_t)c->vocab, maxin = F > Q ? F : Q, r = (size_t)t->o.lora_rank;
    maxin = maxin > C ? maxin : C;
    tr_acts *a = &t->a;
    a->x = malloc((L + 1) * BT * C * 4);
    if (t->o.recompute) L = 1; /* the rest for the layer at hand */
    a->xmid = malloc(L * BT * C * 4);
    a->h1 = malloc(L * BT * C * 4), a->h2 = malloc(L * BT * C * 4);
    a->q = malloc(L * BT * Q * 4), a->k = malloc(L * BT * KV * 4), a->v = malloc(L * BT * KV * 4);
    a->att = malloc(L * BT * Q * 4), a->ffa = malloc(L * BT * F * 4), a->ffo = malloc(L * BT * F * 4);
    a->ffb = c->family == ARCH_LLAMA ? malloc(L * BT * F * 4) : NULL;
    a->hf = malloc(BT * C * 4), a->logits = malloc((size_t)lm_rows(t) * V * 4), a->losses = malloc(BT * 4);
    t->dx = malloc(BT * C * 4), t->dtmp = malloc(BT * C * 4), t->dh = malloc(BT * C * 4);
    t->datt = malloc(BT * Q * 4), t->dq = malloc(BT * Q * 4), t->dk = malloc(BT * KV * 4), t->dv = malloc(BT * KV * 4);
    t->qkv = malloc(BT * (Q + 2 * KV) * 4), t->dqkv = malloc(BT * (Q + 2 * KV) * 4);
    t->dffa = malloc(BT * F * 4), t->dffb = malloc(BT * F * 4), t->dffo = malloc(BT * F * 4);
    t->dlogits = t->ce_fused ? NULL : malloc(ce_rows(t) * V * 4);
    size_t du = BT * r > 2 * C ? BT * r : 2 * C; /* also the frozen norms' gradient sink */
    t->du = malloc(du * 4);
    t->dxd = r && t->o.lora_dropout > 0 ? malloc(BT * maxin * 4) : NULL;
    t->pos_ids = malloc(BT * sizeof(int32_t));
    if (!a->x || !a->xmid || !a->h1 || !a->h2 || !a->q || !a->k || !a->v || !a->att || !a->ffa || !a->ffo ||
        (c->family == ARCH_LLAMA && !a->ffb) || !a->hf || !a->logits || !a->losses || !t->dx || !t->dtmp || !t->dh ||
        !t->datt || !t->dq || !t->dk || !t->dv || !t->qkv || !t->dqkv || !t->dffa || !t->dffb || !t->dffo ||
        (!t->ce_fused && !t->dlogits) || !t->du || (r && t->o.lora_dropout > 0 && !t->dxd) || !t->pos_ids) {
        tr_free_buffers(t);
        return error_set(err, LLMOPT_ENOMEM, "out of memory for the activations of %d x %d tokens", t->B, t->T);
    }
    for (int i = 0; i < t->BT; i++) t->pos_ids[i] = i % t->T;
    return 0;
}

/* Every kernel the forward and backward will call, so a missing one fails here. */
static int need_kernels(tr_trainer *t, tr_w **slots, size_t n, llmopt_error *err) {
    int gpt2 = t->c.family == ARCH_GPT2;
    const char *f32_ops[] = {
        gpt2 ? LLMOPT_OP_LAYERNORM : LLMOPT_OP_RMSNORM, gpt2 ? LLMOPT_OP_LAYERNORM_BACKWARD : LLMOPT_OP_RMSNORM_BACKWARD,
        LLMOPT_OP_ATTENTION, LLMOPT_OP_ATTENTION_BACKWARD, LLMOPT_OP_ADD, LLMOPT_OP_CROSS_ENTROPY,
        LLMOPT_OP_CROSS_ENTROPY_BACKWARD, LLMOPT_OP_ADAMW, LLMOPT_OP_MATMUL, LLMOPT_OP_MATMUL_BACKWARD,
        gpt2 ? (t->c.act == ACT_GELU_ERF ? LLMOPT_OP_GELU_ERF : LLMOPT_OP_GELU) : LLMOPT_OP_SWIGLU,
        gpt2 ? (t->c.act == ACT_GELU_ERF ? LLMOPT_OP_GELU_ERF_BACKWARD : LLMOPT_OP_GELU_BACKWARD) : LLMOPT_OP_SWIGLU_BACKWARD,
        gpt2 ? LLMOPT_OP_ADD : LLMOPT_OP_ROPE, gpt2 ? LLMOPT_OP_ADD : LLMOPT_OP_ROPE_BACKWARD};
    for (size_t i = 0; i < sizeof f32_ops / sizeof f32_ops[0]; i++)
        if (!kfind(t, f32_ops[i], F32, err)) return err->status;
    llmopt_error none = {0};
    t->ce_fused = !t->o.unfused_ce && kfind(t, LLMOPT_OP_CROSS_ENTROPY_FUSED, F32, &none) != NULL;
    if (!kfind(t, LLMOPT_OP_EMBEDDING, t->tok_emb.t->dtype, err)) return err->status;
    if (!kfind(t, LLMOPT_OP_MATMUL, t->lm_head.t->dtype, err) || !kfind(t, LLMOPT_OP_MATMUL_BACKWARD, t->lm_head.t->dtype, err))
        return err->status;
    if (t->pos_emb.t && !kfind(t, LLMOPT_OP_EMBEDDING, t->pos_emb.t->dtype, err)) return err->status;
    if ((t->tok_emb.p || t->pos_emb.p) && !kfind(t, LLMOPT_OP_EMBEDDING_BACKWARD, F32, err)) return err->status;
    for (size_t s = 0; s < n; s++)
        if (slots[s]->t->ndim == 2 && slots[s] != &t->tok_emb && slots[s] != &t->pos_emb &&
            (!kfind(t, LLMOPT_OP_MATMUL, slots[s]->t->dtype, err) ||
             !kfind(t, LLMOPT_OP_MATMUL_BACKWARD, slots[s]->t->dtype, err)))
            return err->status;
    return 0;
}

int tr_new(llmopt_model *m, const tr_options *o, tr_trainer **out, llmopt_error *err) {
    *out = NULL;
    tr_trainer *t = calloc(1, sizeof *t);
    if (!t) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int rc = arch_from_model(m, &t->c, err);
    if (rc) {
        free(t);
        return rc;
    }
    if ((rc = check_options(o, &t->c, err))) {
        free(t);
        return rc;
    }
    t->m = rt_model_ref(m);
    t->o = *o;
    t->trainable = copy_strs(o->trainable, o->n_trainable);
    t->targets = copy_strs(o->lora_targets, o->n_lora_targets);
    if ((o->n_trainable && !t->trainable) || (o->n_lora_targets && !t->targets)) {
        tr_free(t);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    t->o.trainable = (const char *const *)t->trainable;
    t->o.lora_targets = (const char *const *)t->targets;
    t->B = o->batch, t->T = o->seq, t->BT = o->batch * o->seq;
    const arch_config *c = &t->c;
    int gpt2 = c->family == ARCH_GPT2;
    t->layers = calloc((size_t)c->n_layer, sizeof *t->layers);
    t->linears = calloc((size_t)c->n_layer * 8, sizeof *t->linears);
    tr_w **slots = calloc((size_t)c->n_layer * 20 + 8, sizeof *slots);
    if (!t->layers || !t->linears || !slots) {
        free(slots);
        tr_free(t);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    if (gpt2) {
        tr_w_bind(t, -1, "wte.weight", &t->tok_emb), tr_w_bind(t, -1, "wpe.weight", &t->pos_emb);
        tr_w_bind(t, -1, "ln_f.weight", &t->norm_w), tr_w_bind(t, -1, "ln_f.bias", &t->norm_b);
    } else {
        tr_w_bind(t, -1, "model.embed_tokens.weight", &t->tok_emb), tr_w_bind(t, -1, "model.norm.weight", &t->norm_w);
    }
    if (!c->tied) tr_w_bind(t, -1, "lm_head.weight", &t->lm_head);
    for (int l = 0; l < c->n_layer; l++) {
        tr_layer *L = &t->layers[l];
        if (gpt2) {
            tr_w_bind(t, l, "ln_1.weight", &L->ln1_w), tr_w_bind(t, l, "ln_1.bias", &L->ln1_b);
            tr_w_bind(t, l, "ln_2.weight", &L->ln2_w), tr_w_bind(t, l, "ln_2.bias", &L->ln2_b);
            linear_bind(t, l, "attn.c_attn.weight", "attn.c_attn.bias", &L->qkv);
            linear_bind(t, l, "attn.c_proj.weight", "attn.c_proj.bias", &L->o);
            linear_bind(t, l, "mlp.c_fc.weight", "mlp.c_fc.bias", &L->up);
            linear_bind(t, l, "mlp.c_proj.weight", "mlp.c_proj.bias", &L->down);
        } else {
            tr_w_bind(t, l, "input_layernorm.weight", &L->ln1_w);
            tr_w_bind(t, l, "post_attention_layernorm.weight", &L->ln2_w);
            linear_bind(t, l, "self_attn.q_proj.weight", "self_attn.q_proj.bias", &L->q);
            linear_bind(t, l, "self_attn.k_proj.weight", "self_attn.k_proj.bias", &L->k);
            linear_bind(t, l, "self_attn.v_proj.weight", "self_attn.v_proj.bias", &L->v);
            linear_bind(t, l, "self_attn.o_proj.weight", "self_attn.o_proj.bias", &L->o);
            linear_bind(t, l, "mlp.gate_proj.weight", "mlp.gate_proj.bias", &L->gate);
            linear_bind(t, l, "mlp.up_proj.weight", "mlp.up_proj.bias", &L->up);
            linear_bind(t, l, "mlp.down_proj.weight", "mlp.down_proj.bias", &L->down);
        }
        tr_linear *ls[] = {&L->qkv, &L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < 8; i++)
            if (ls[i]->w.t) t->linears[t->n_linears++] = ls[i];
    }
    size_t n_slots = all_slots(t, slots);
    if (o->lora_rank > 0) rc = make_lora(t, err);
    else rc = make_full_params(t, slots, n_slots, err);
    if (!rc && t->n_params == 0) rc = error_set(err, LLMOPT_EINVAL, "nothing to train: no floating-point tensor is selected");
    if (!rc) rc = f32_vectors(t, slots, n_slots, err);
    /* the tied head reads the embedding's slot (same tensor, same parameter) */
    if (c->tied) t->lm_head = t->tok_emb;
    t->grad_floor = t->tok_emb.p || t->pos_emb.p ? -1 : c->n_layer;
    for (int l = c->n_layer - 1; l >= 0 && t->grad_floor >= 0; l--)
        if (layer_trains(&t->layers[l])) t->grad_floor = l;
    if (!rc) rc = need_kernels(t, slots, n_slots, err);
    if (!rc) rc = alloc_buffers(t, err);
    free(slots);
    if (rc) {
        tr_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tr_free(tr_trainer *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_params; i++) param_free(t->params[i]);
    free(t->params);
    for (size_t i = 0; i < t->n_linears; i++)
        if (t->linears[i]->lora) {
            free(t->linears[i]->lora->u), free(t->linears[i]->lora->xd);
            free(t->linears[i]->lora);
        }
    free(t->linears);
    for (size_t i = 0; i < t->n_owned; i++) rt_tensor_unref(t->owned[i]);
    free(t->owned);
    free(t->kernels);
    free(t->layers);
    tr_free_buffers(t);
    free_strs(t->trainable, t->o.n_trainable);
    free_strs(t->targets, t->o.n_lora_targets);
    rt_model_unref(t->m);
    free(t);
}

size_t tr_n_trainable(const tr_trainer *t) {
    size_t n = 0;
    for (size_t i = 0; i < t->n_params; i++) n += (size_t)rt_tensor_numel(t->params[i]->w);
    return n;
}

size_t tr_n_params(const tr_trainer *t) { return t->n_params; }
const char *tr_param_name(const tr_trainer *t, size_t i) { return i < t->n_params ? t->params[i]->name : NULL; }
const llmopt_tensor *tr_param_value(const tr_trainer *t, size_t i) { return i < t->n_params ? t->params[i]->w : NULL; }
const llmopt_tensor *tr_param_grad(const tr_trainer *t, size_t i) { return i < t->n_params ? t->params[i]->g : NULL; }
int tr_steps(const tr_trainer *t) { return t->step; }

int tr_refuse_finished(const char *what, llmopt_error *err) {
    return error_set(err, LLMOPT_EINVAL, "%s: training is finished (its gradients and AdamW moments are freed)", what);
}

void tr_finish(tr_trainer *t) {
    for (size_t i = 0; i < t->n_params; i++) {
        tr_param *p = t->params[i];
        rt_tensor_unref(p->g), rt_tensor_unref(p->m), rt_tensor_unref(p->v);
        rt_tensor_unref(p->m_absmax), rt_tensor_unref(p->v_absmax);
        p->g = p->m = p->v = p->m_absmax = p->v_absmax = NULL;
    }
    tr_free_buffers(t);
    t->acc_targets = 0;
    t->finished = 1;
}

/* ---- forward ---- */

#define LAYER(buf, l, width) ((buf) + (size_t)(l) * (size_t)t->BT * (size_t)(width))
/* a layer's activations other than its input x: one set for every layer with recompute */
#define ACT(buf, l, width) LAYER(buf, t->o.recompute ? 0 : (l), width)

/* GPT-2's fused c_attn rows [q | k | v] split into q, k, v (join: back into the rows), rows
 * over the host's threads: one thread's copy left the others waiting (~4% of a kjv-tiny step). */
typedef struct qkv_job {
    float *fused, *q, *k, *v;
    int64_t Q, KV;
    int join;
} qkv_job;

static void qkv_range(void *arg, int64_t r0, int64_t r1) {
    const qkv_job *j = arg;
    size_t Q = (size_t)j->Q, KV = (size_t)j->KV;
    for (int64_t r = r0; r < r1; r++) {
        float *row = j->fused + (size_t)r * (Q + 2 * KV), *q = j->q + r * Q, *k = j->k + r * KV, *v = j->v + r * KV;
        if (j->join) memcpy(row, q, Q * 4), memcpy(row + Q, k, KV * 4), memcpy(row + Q + KV, v, KV * 4);
        else memcpy(q, row, Q * 4), memcpy(k, row + Q, KV * 4), memcpy(v, row + Q + KV, KV * 4);
    }
}

static void qkv_rows(const tr_trainer *t, float *fused, float *q, float *k, float *v, int join) {
    qkv_job j = {fused, q, k, v, (int64_t)t->c.n_head * t->c.head_dim, (int64_t)t->c.n_kv_head * t->c.head_dim, join};
    tp_parallel_for(t->BT, 32, qkv_range, &j);
}

static int attention_fwd(tr_trainer *t, int l, int train, llmopt_error *err) {
    const arch_config *c = &t->c;
    tr_layer *L = &t->layers[l];
    tr_acts *a = &t->a;
    int64_t C = c->n_embd, D = c->head_dim, Hq = c->n_head, Hkv = c->n_kv_head, Q = Hq * D, KV = Hkv * D;
    float *x = LAYER(a->x, l, C), *h1 = ACT(a->h1, l, C), *q = ACT(a->q, l, Q), *k = ACT(a->k, l, KV);
    float *v = ACT(a->v, l, KV), *att = ACT(a->att, l, Q), *xmid = ACT(a->xmid, l, C);
    int rc;
    if ((rc = norm_fwd(t, x, &L->ln1_w, &L->ln1_b, h1, err))) return rc;
    if (c->family == ARCH_GPT2) {
        /* fused c_attn rows are [q | k | v] */
        if ((rc = linear_fwd(t, &L->qkv, h1, t->qkv, 0, train, err))) return rc;
        qkv_rows(t, t->qkv, q, k, v, 0);
    } else if ((rc = linear_fwd(t, &L->q, h1, q, 0, train, err)) || (rc = linear_fwd(t, &L->k, h1, k, 0, train, err)) ||
               (rc = linear_fwd(t, &L->v, h1, v, 0, train, err)) || (rc = rope_op(t, LLMOPT_OP_ROPE, q, (int)Hq, err)) ||
               (rc = rope_op(t, LLMOPT_OP_ROPE, k, (int)Hkv, err))) {
        return rc;
    }
    for (int b = 0; b < t->B; b++) {
        size_t r0 = (size_t)b * t->T;
        llmopt_tensor tq = f32_view(q + r0 * Q, 3, t->T, Hq, D), tk = f32_view(k + r0 * KV, 3, t->T, Hkv, D);
        llmopt_tensor tv = f32_view(v + r0 * KV, 3, t->T, Hkv, D), to = f32_view(att + r0 * Q, 3, t->T, Hq, D);
        const llmopt_tensor *in[3] = {&tq, &tk, &tv};
        llmopt_op_attention p = {sizeof p, 0, 1, arch_attn_scale(c, l)};
        if ((rc = call(t, LLMOPT_OP_ATTENTION, F32, in, 3, &to, &p, err))) return rc;
    }
    memcpy(xmid, x, (size_t)t->BT * (size_t)C * 4);
    return linear_fwd(t, &L->o, att, xmid, 1, train, err);
}

/* down 0 (recomputing for the backward): stops at the down projection's input, which is all the
 * backward reads; the layer's output x[l + 1] is already saved. */
static int mlp_fwd(tr_trainer *t, int l, int train, int down, llmopt_error *err) {
    const arch_config *c = &t->c;
    tr_layer *L = &t->layers[l];
    tr_acts *a = &t->a;
    int64_t C = c->n_embd, F = c->n_ff;
    float *xmid = ACT(a->xmid, l, C), *h2 = ACT(a->h2, l, C), *ffa = ACT(a->ffa, l, F), *ffo = ACT(a->ffo, l, F);
    float *xout = LAYER(a->x, l + 1, C);
    int rc;
    if ((rc = norm_fwd(t, xmid, &L->ln2_w, &L->ln2_b, h2, err))) return rc;
    llmopt_tensor ta = f32_view(ffa, 2, t->BT, F, 1), to = f32_view(ffo, 2, t->BT, F, 1);
    if (c->family == ARCH_GPT2) {
        const llmopt_tensor *in[1] = {&ta};
        if ((rc = linear_fwd(t, &L->up, h2, ffa, 0, train, err)) ||
            (rc = call(t, c->act == ACT_GELU_ERF ? LLMOPT_OP_GELU_ERF : LLMOPT_OP_GELU, F32, in, 1, &to, NULL, err)))
            return rc;
    } else {
        float *ffb = ACT(a->ffb, l, F);
        llmopt_tensor tb = f32_view(ffb, 2, t->BT, F, 1);
        const llmopt_tensor *in[2] = {&ta, &tb};
        if ((rc = linear_fwd(t, &L->gate, h2, ffa, 0, train, err)) || (rc = linear_fwd(t, &L->up, h2, ffb, 0, train, err)) ||
            (rc = call(t, LLMOPT_OP_SWIGLU, F32, in, 2, &to, NULL, err)))
            return rc;
    }
    if (!down) return 0;
    memcpy(xout, xmid, (size_t)t->BT * (size_t)C * 4);
    return linear_fwd(t, &L->down, ffo, xout, 1, train, err);
}

static int check_tokens(const tr_trainer *t, const int32_t *inputs, const int32_t *targets, llmopt_error *err) {
    for (int i = 0; i < t->BT; i++) {
        if (inputs[i] < 0 || inputs[i] >= t->c.vocab)
            return error_set(err, LLMOPT_EINVAL, "input %d (sequence %d, position %d) is token %d, outside the vocabulary "
                             "[0, %d)", i, i / t->T, i % t->T, inputs[i], t->c.vocab);
        if (targets[i] != -100 && (targets[i] < 0 || targets[i] >= t->c.vocab))
            return error_set(err, LLMOPT_EINVAL, "target %d (sequence %d, position %d) is %d: a token id in [0, %d) or "
                             "-100 (ignored) expected", i, i / t->T, i % t->T, targets[i], t->c.vocab);
    }
    return 0;
}

/* The LM head over rows [r0, r0 + n) of the final norm's output (n <= lm_rows) into a->logits,
 * and with losses set their cross-entropy losses into a->losses + r0. */
static int head_block(tr_trainer *t, int64_t r0, int64_t n, const int32_t *targets, int losses, llmopt_error *err) {
    tr_acts *a = &t->a;
    const int64_t C = t->c.n_embd, V = t->c.vocab;
    int rc = mm(t, a->hf + r0 * C, n, t->lm_head.t, NULL, LLMOPT_W_OUT_IN, a->logits, 0, err);
    if (rc || !losses) return rc;
    llmopt_tensor tl = f32_view(a->logits, 2, n, V, 1), tt = i32_view(targets + r0, n);
    llmopt_tensor to = f32_view(a->losses + r0, 1, n, 1, 1);
    const llmopt_tensor *cin[2] = {&tl, &tt};
    llmopt_op_cross_entropy p = {sizeof p, -100};
    return call(t, LLMOPT_OP_CROSS_ENTROPY, F32, cin, 2, &to, &p, err);
}

/* The forward over [B, T] inputs: every saved activation up to the final norm's output, and
 * (evaluating; training leaves the LM head to the backward) the per-row losses, lm_rows rows of
 * logits at a time. */
static int forward(tr_trainer *t, const int32_t *inputs, const int32_t *targets, int train, llmopt_error *err) {
    const arch_config *c = &t->c;
    tr_acts *a = &t->a;
    int64_t C = c->n_embd, BT = t->BT;
    int rc = check_tokens(t, inputs, targets, err);
    if (rc || (rc = alloc_buffers(t, err))) return rc;
    llmopt_tensor ti = i32_view(inputs, BT), tx = f32_view(a->x, 2, BT, C, 1);
    const llmopt_tensor *in[2] = {t->tok_emb.t, &ti};
    if ((rc = call(t, LLMOPT_OP_EMBEDDING, t->tok_emb.t->dtype, in, 2, &tx, NULL, err))) return rc;
    if (t->pos_emb.t) {
        llmopt_tensor tp = i32_view(t->pos_ids, BT), th = f32_view(t->dh, 2, BT, C, 1);
        const llmopt_tensor *pin[2] = {t->pos_emb.t, &tp};
        if ((rc = call(t, LLMOPT_OP_EMBEDDING, t->pos_emb.t->dtype, pin, 2, &th, NULL, err)) ||
            (rc = add_into(t, a->x, t->dh, BT * C, err)))
            return rc;
    }
    for (int l = 0; l < c->n_layer; l++)
        if ((rc = attention_fwd(t, l, train, err)) || (rc = mlp_fwd(t, l, train, 1, err))) return rc;
    if ((rc = norm_fwd(t, LAYER(a->x, c->n_layer, C), &t->norm_w, &t->norm_b, a->hf, err))) return rc;
    if (train) return 0; /* the backward computes the logits, their losses and gradient */
    /* the losses, lm_rows rows of logits at a time */
    for (int64_t r0 = 0, n = lm_rows(t); r0 < BT; r0 += n) {
        if (n > BT - r0) n = BT - r0;
        if ((rc = head_block(t, r0, n, targets, 1, err))) return rc;
    }
    return 0;
}

/* The summed loss and target count of the batch's per-row losses. */
static void loss_sum_of(const tr_trainer *t, const int32_t *targets, double *loss_sum, size_t *n_targets) {
    double sum = 0;
    size_t n = 0;
    for (int64_t i = 0; i < t->BT; i++)
        if (targets[i] != -100) sum += t->a.losses[i], n++;
    *loss_sum = sum;
    *n_targets = n;
}

int tr_eval(tr_trainer *t, const int32_t *inputs, const int32_t *targets, double *loss_sum, size_t *n_targets,
            llmopt_error *err) {
    int rc = forward(t, inputs, targets, 0, err);
    if (!rc) loss_sum_of(t, targets, loss_sum, n_targets);
    return rc;
}

/* ---- backward ---- */

static int attention_bwd(tr_trainer *t, int l, llmopt_error *err) {
    const arch_config *c = &t->c;
    tr_layer *L = &t->layers[l];
    tr_acts *a = &t->a;
    int64_t C = c->n_embd, D = c->head_dim, Hq = c->n_head, Hkv = c->n_kv_head, Q = Hq * D, KV = Hkv * D;
    float *x = LAYER(a->x, l, C), *h1 = ACT(a->h1, l, C), *q = ACT(a->q, l, Q), *k = ACT(a->k, l, KV);
    float *v = ACT(a->v, l, KV), *att = ACT(a->att, l, Q);
    int rc;
    /* x_mid = x + att Wo: datt = dx Woᵀ; dx passes through the residual unchanged */
    if ((rc = linear_bwd(t, &L->o, att, t->dx, t->datt, 0, err))) return rc;
    for (int b = 0; b < t->B; b++) {
        size_t r0 = (size_t)b * t->T;
        llmopt_tensor tq = f32_view(q + r0 * Q, 3, t->T, Hq, D), tk = f32_view(k + r0 * KV, 3, t->T, Hkv, D);
        llmopt_tensor tv = f32_view(v + r0 * KV, 3, t->T, Hkv, D), tdy = f32_view(t->datt + r0 * Q, 3, t->T, Hq, D);
        llmopt_tensor tdq = f32_view(t->dq + r0 * Q, 3, t->T, Hq, D), tdk = f32_view(t->dk + r0 * KV, 3, t->T, Hkv, D);
        llmopt_tensor tdv = f32_view(t->dv + r0 * KV, 3, t->T, Hkv, D);
        const llmopt_tensor *in[4] = {&tq, &tk, &tv, &tdy};
        llmopt_op_attention_backward p = {sizeof p, 1, arch_attn_scale(&t->c, l), &tdk, &tdv};
        if ((rc = call(t, LLMOPT_OP_ATTENTION_BACKWARD, F32, in, 4, &tdq, &p, err))) return rc;
    }
    /* below this point only the norm's own gradient and what lower layers train need dh */
    int below = t->grad_floor < l, norm = below || L->ln1_w.p || L->ln1_b.p;
    float *dh = norm ? t->dh : NULL;
    if (c->family == ARCH_GPT2) {
        qkv_rows(t, t->dqkv, t->dq, t->dk, t->dv, 1);
        if ((rc = linear_bwd(t, &L->qkv, h1, t->dqkv, dh, 0, err))) return rc;
    } else if ((rc = rope_op(t, LLMOPT_OP_ROPE_BACKWARD, t->dq, (int)Hq, err)) ||
               (rc = rope_op(t, LLMOPT_OP_ROPE_BACKWARD, t->dk, (int)Hkv, err)) ||
               (rc = linear_bwd(t, &L->q, h1, t->dq, dh, 0, err)) || (rc = linear_bwd(t, &L->k, h1, t->dk, dh, 1, err)) ||
               (rc = linear_bwd(t, &L->v, h1, t->dv, dh, 1, err))) {
        return rc;
    }
    if (!norm) return 0;
    if ((rc = norm_bwd(t, x, &L->ln1_w, &L->ln1_b, t->dh, t->dtmp, err))) return rc;
    return below ? add_into(t, t->dx, t->dtmp, (int64_t)t->BT * C, err) : 0;
}

static int mlp_bwd(tr_trainer *t, int l, llmopt_error *err) {
    const arch_config *c = &t->c;
    tr_layer *L = &t->layers[l];
    tr_acts *a = &t->a;
    int64_t C = c->n_embd, F = c->n_ff;
    float *xmid = ACT(a->xmid, l, C), *h2 = ACT(a->h2, l, C), *ffa = ACT(a->ffa, l, F), *ffo = ACT(a->ffo, l, F);
    int rc;
    if ((rc = linear_bwd(t, &L->down, ffo, t->dx, t->dffo, 0, err))) return rc;
    llmopt_tensor ta = f32_view(ffa, 2, t->BT, F, 1), tdo = f32_view(t->dffo, 2, t->BT, F, 1);
    llmopt_tensor tda = f32_view(t->dffa, 2, t->BT, F, 1);
    if (c->family == ARCH_GPT2) {
        const llmopt_tensor *in[2] = {&ta, &tdo};
        const char *op = c->act == ACT_GELU_ERF ? LLMOPT_OP_GELU_ERF_BACKWARD : LLMOPT_OP_GELU_BACKWARD;
        if ((rc = call(t, op, F32, in, 2, &tda, NULL, err)) || (rc = linear_bwd(t, &L->up, h2, t->dffa, t->dh, 0, err)))
            return rc;
    } else {
        llmopt_tensor tb = f32_view(ACT(a->ffb, l, F), 2, t->BT, F, 1), tdb = f32_view(t->dffb, 2, t->BT, F, 1);
        const llmopt_tensor *in[3] = {&ta, &tb, &tdo};
        llmopt_op_swiglu_backward p = {sizeof p, &tdb};
        if ((rc = call(t, LLMOPT_OP_SWIGLU_BACKWARD, F32, in, 3, &tda, &p, err)) ||
            (rc = linear_bwd(t, &L->gate, h2, t->dffa, t->dh, 0, err)) ||
            (rc = linear_bwd(t, &L->up, h2, t->dffb, t->dh, 1, err)))
            return rc;
    }
    if ((rc = norm_bwd(t, xmid, &L->ln2_w, &L->ln2_b, t->dh, t->dtmp, err))) return rc;
    return add_into(t, t->dx, t->dtmp, (int64_t)t->BT * C, err);
}

/* The backward of the forward just run: gradients of the summed loss into the parameters. */
static int backward(tr_trainer *t, const int32_t *inputs, const int32_t *targets, llmopt_error *err) {
    const arch_config *c = &t->c;
    tr_acts *a = &t->a;
    int64_t C = c->n_embd, BT = t->BT, V = c->vocab;
    int rc;
    /* The LM head a block of lm_rows rows at a time: its logits, then d(summed loss)/dlogits
     * over them (the mean over targets is taken at the step), then through the head into dh and
     * the head's weight gradient, before the next block. Fused with the losses when the plugin
     * has cross_entropy_fused (one pass over the logits instead of two), else
     * cross_entropy_backward, whose out is apart from its input, ce_rows rows at a time into
     * dlogits and copied back. */
    for (int64_t r0 = 0, n = lm_rows(t); r0 < BT; r0 += n) {
        if (n > BT - r0) n = BT - r0;
        if ((rc = head_block(t, r0, n, targets, !t->ce_fused, err))) return rc;
        if (t->ce_fused) {
            llmopt_tensor tl = f32_view(a->logits, 2, n, V, 1), tt = i32_view(targets + r0, n);
            llmopt_tensor to = f32_view(a->losses + r0, 1, n, 1, 1);
            const llmopt_tensor *cin[2] = {&tl, &tt};
            llmopt_op_cross_entropy_fused fp = {sizeof fp, -100, 1.0f, &to};
            if ((rc = call(t, LLMOPT_OP_CROSS_ENTROPY_FUSED, F32, cin, 2, &tl, &fp, err))) return rc;
        } else {
            llmopt_op_cross_entropy_backward cp = {sizeof cp, -100, 1.0f};
            for (int64_t s0 = 0, m = ce_rows(t); s0 < n; s0 += m) {
                if (m > n - s0) m = n - s0;
                llmopt_tensor tl = f32_view(a->logits + s0 * V, 2, m, V, 1), tt = i32_view(targets + r0 + s0, m);
                llmopt_tensor td = f32_view(t->dlogits, 2, m, V, 1);
                const llmopt_tensor *cin[2] = {&tl, &tt};
                if ((rc = call(t, LLMOPT_OP_CROSS_ENTROPY_BACKWARD, F32, cin, 2, &td, &cp, err))) return rc;
                memcpy(a->logits + s0 * V, t->dlogits, (size_t)(m * V) * sizeof(float));
            }
        }
        if ((rc = mm_backward(t, a->hf + r0 * C, n, t->lm_head.t, LLMOPT_W_OUT_IN, a->logits, t->dh + r0 * C, 0,
                              t->lm_head.p ? t->lm_head.p->g : NULL, NULL, err)))
            return rc;
    }
    if ((rc = norm_bwd(t, LAYER(a->x, c->n_layer, C), &t->norm_w, &t->norm_b, t->dh, t->dx, err))) return rc;
    for (int l = c->n_layer - 1; l >= 0 && l >= t->grad_floor; l--) {
        /* recompute: the layer's activations again from its saved input, the same kernels on
         * the same inputs (and the same dropout masks: the stream moves on after the backward) */
        if (t->o.recompute && ((rc = attention_fwd(t, l, 1, err)) || (rc = mlp_fwd(t, l, 1, 0, err)))) return rc;
        if ((rc = mlp_bwd(t, l, err)) || (rc = attention_bwd(t, l, err))) return rc;
    }
    llmopt_tensor tdx = f32_view(t->dx, 2, BT, C, 1);
    if (t->tok_emb.p) {
        llmopt_tensor ti = i32_view(inputs, BT);
        const llmopt_tensor *in[2] = {&ti, &tdx};
        if ((rc = call(t, LLMOPT_OP_EMBEDDING_BACKWARD, F32, in, 2, t->tok_emb.p->g, NULL, err))) return rc;
    }
    if (t->pos_emb.p) {
        llmopt_tensor tp = i32_view(t->pos_ids, BT);
        const llmopt_tensor *in[2] = {&tp, &tdx};
        if ((rc = call(t, LLMOPT_OP_EMBEDDING_BACKWARD, F32, in, 2, t->pos_emb.p->g, NULL, err))) return rc;
    }
    return 0;
}

int tr_forward_backward(tr_trainer *t, const int32_t *inputs, const int32_t *targets, double *loss_sum,
                        size_t *n_targets, llmopt_error *err) {
    if (t->finished) return tr_refuse_finished("forward_backward", err);
    int rc = forward(t, inputs, targets, 1, err);
    if (!rc) rc = backward(t, inputs, targets, err);
    if (!rc) loss_sum_of(t, targets, loss_sum, n_targets);
    if (t->o.lora_rank > 0 && t->o.lora_dropout > 0) t->micro++; /* the next micro-batch draws new masks */
    if (!rc) t->acc_targets += *n_targets;
    return rc;
}

/* ---- the optimizer step ---- */

/* The sum of squares of every gradient, in double: per fixed chunk of SQ_CHUNK values of a
 * tensor (eight accumulators, added pairwise), the chunks on the host's threads, their partial
 * sums added in order, so the result does not depend on the thread count. One serial double sum
 * was a dependency chain of an add per value: ~5% of a GPT-2 124M full fine-tuning step. */
#define SQ_CHUNK 65536
typedef struct sq_job {
    const float *g;
    int64_t n;
    double *part;
} sq_job;

static void sq_chunks(void *arg, int64_t c0, int64_t c1) {
    const sq_job *j = arg;
    for (int64_t c = c0; c < c1; c++) {
        const float *g = j->g + c * SQ_CHUNK;
        const int64_t n = j->n - c * SQ_CHUNK < SQ_CHUNK ? j->n - c * SQ_CHUNK : SQ_CHUNK;
        double a[8] = {0};
        int64_t k = 0;
        for (; k + 8 <= n; k += 8)
            for (int l = 0; l < 8; l++) a[l] += (double)g[k + l] * (double)g[k + l];
        for (; k < n; k++) a[k % 8] += (double)g[k] * (double)g[k];
        j->part[c] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

static int grad_sq_sum(const tr_trainer *t, double *sq) {
    int64_t most = 0;
    for (size_t i = 0; i < t->n_params; i++) {
        int64_t n = rt_tensor_numel(t->params[i]->g);
        if (n > most) most = n;
    }
    double *part = malloc((size_t)((most + SQ_CHUNK - 1) / SQ_CHUNK + 1) * sizeof(double));
    if (!part) return LLMOPT_ENOMEM;
    *sq = 0;
    for (size_t i = 0; i < t->n_params; i++) {
        sq_job j = {t->params[i]->g->data, rt_tensor_numel(t->params[i]->g), part};
        int64_t chunks = (j.n + SQ_CHUNK - 1) / SQ_CHUNK;
        tp_parallel_for(chunks, 1, sq_chunks, &j);
        for (int64_t c = 0; c < chunks; c++) *sq += part[c];
    }
    free(part);
    return 0;
}

int tr_step(tr_trainer *t, float lr, float clip, float *grad_norm, llmopt_error *err) {
    if (t->finished) return tr_refuse_finished("step", err);
    if (t->acc_targets == 0)
        return error_set(err, LLMOPT_EINVAL, "no targets accumulated since the last step (run tr_forward_backward with "
                         "targets that are not all -100)");
    if (!isfinite(lr) || !(clip >= 0)) return error_set(err, LLMOPT_EINVAL, "lr must be finite and clip >= 0");
    double inv_n = 1.0 / (double)t->acc_targets, sq;
    int rc = grad_sq_sum(t, &sq);
    if (rc) return error_set(err, rc, "out of memory summing the gradient norm");
    double norm = sqrt(sq) * inv_n;
    if (grad_norm) *grad_norm = (float)norm;
    if (!isfinite(norm)) return error_set(err, LLMOPT_EINVAL, "the gradient norm is not finite (%g): lower the learning rate", norm);
    /* torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1 */
    double scale = inv_n;
    if (clip > 0 && clip / (norm + 1e-6) < 1.0) scale *= clip / (norm + 1e-6);
    t->step++;
    for (size_t i = 0; i < t->n_params; i++) {
        tr_param *p = t->params[i];
        const llmopt_tensor *in[1] = {p->g};
        if (p->m_absmax) {
            llmopt_op_adamw_8bit a = {sizeof a, lr, t->o.beta1, t->o.beta2, t->o.eps, t->o.weight_decay, (float)scale,
                                      t->step, p->m, p->v, p->m_absmax, p->v_absmax};
            rc = call(t, LLMOPT_OP_ADAMW_8BIT, F32, in, 1, p->w, &a, err);
        } else {
            llmopt_op_adamw a = {sizeof a, lr, t->o.beta1, t->o.beta2, t->o.eps, t->o.weight_decay, (float)scale, t->step,
                                 p->m, p->v};
            rc = call(t, LLMOPT_OP_ADAMW, F32, in, 1, p->w, &a, err);
        }
        if (rc) return rc;
        memset(p->g->data, 0, p->g->nbytes);
    }
    t->acc_targets = 0;
    return 0;
}

void tr_zero_grad(tr_trainer *t) {
    for (size_t i = 0; i < t->n_params && !t->finished; i++) memset(t->params[i]->g->data, 0, t->params[i]->g->nbytes);
    t->acc_targets = 0;
}

