/* GPT-2 and Llama forward passes over registered kernels. One sequence per session; a call runs
 * n new tokens (prefill when n > 1, decode when n == 1) and appends their keys and values to the
 * session's cache. Shapes follow the checkpoint: x is (T,C), q is (T,Hq,D), k/v are (S,Hkv,D).
 * On a device other than the CPU (its memory ops registered by a plugin, device.h) the weights
 * are copied there once at bind time, the cache and activations live there, and only token ids
 * go in and logits come out; on the CPU nothing is copied and the buffers are plain heap. */
#include "transformer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"
#include "../sched/stage_ctx.h"

typedef struct tf_layer {
    const llmopt_tensor *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const llmopt_tensor *qkv_w, *qkv_b;                 /* GPT-2 fused c_attn */
    const llmopt_tensor *q_w, *k_w, *v_w, *q_b, *k_b, *v_b; /* Llama */
    const llmopt_tensor *o_w, *o_b;                     /* attention output projection */
    const llmopt_tensor *up_w, *up_b, *gate_w, *gate_b, *down_w, *down_b;
} tf_layer;

/* Weight kernels by dtype: a model holds only a few weight dtypes, but dtype values are sparse
 * (group-quantized types encode their parameters), so a short list, not an array by value. */
#define TF_MAX_WEIGHT_DTYPES 8
typedef struct tf_weight_kernels {
    int dtype;
    llmopt_kernel_fn matmul, embedding;
} tf_weight_kernels;

typedef struct tf_kernels {
    tf_weight_kernels w[TF_MAX_WEIGHT_DTYPES];
    int n_w;
    llmopt_kernel_fn norm, rope, attention, act, swiglu, add;
} tf_kernels;

struct tf_model {
    arch_config c;
    llmopt_model *m;
    int device;
    const llmopt_tensor *tok_emb, *pos_emb, *norm_w, *norm_b, *lm_head;
    const llmopt_tensor *rope_freq;      /* llama3 rope scaling: the rope op's in[1]; else NULL */
    tf_layer *layers;
    tf_kernels k;
    tf_capture_fn capture;               /* calibration hook (quantization); NULL when off */
    void *capture_arg;
    llmopt_tensor **owned;               /* f32 copies of half norm gains and biases, device copies */
    size_t n_owned;
    const llmopt_device_ops *dev;        /* memory ops of `device`; NULL on the CPU */
    int precision;                       /* llmopt_matmul_precision of the matmuls by weights */
};

struct tf_session {
    tf_model *tm;
    int n_seq;                           /* sequences in the batch, each with its own cache */
    int max_ctx;
    int *pos;                            /* [n_seq] positions cached per sequence */
    float *kc, *vc;                      /* [n_layer][n_seq][max_ctx][Hkv*D] */
    int cap;                             /* rows (n_seq * tokens) the scratch below holds */
    float *x, *h, *q, *qkv, *kvn, *att, *ff, *ff2;
    int32_t *ids;                        /* position ids scratch (token ids too, off the CPU) */
    int32_t *ids_host;                   /* off the CPU: ids staged on the host */
    float *logits;                       /* off the CPU: [cap, vocab] logits before the copy out */
};

/* ---- memory on the model's device: plain heap and memcpy on the CPU ---- */

static void *dmalloc(const tf_model *tm, size_t n) {
    if (!tm->dev) return malloc(n);
    void *p = NULL;
    return tm->dev->alloc(tm->dev->ctx, n ? n : 64, 64, &p) == 0 ? p : NULL;
}

static void dfree(const tf_model *tm, void *p) {
    if (!tm->dev) free(p);
    else if (p) tm->dev->free(tm->dev->ctx, p);
}

/* n bytes within the device (or host) memory of the model */
static int dcopy(const tf_model *tm, void *dst, const void *src, size_t n, llmopt_error *err) {
    if (!tm->dev) {
        memcpy(dst, src, n);
        return 0;
    }
    int rc = tm->dev->copy_d2d(tm->dev->ctx, dst, src, n);
    return rc ? error_set(err, rc, "%s: device copy of %zu bytes failed: %s", tm->dev->name, n, status_str(rc)) : 0;
}

static int dcopy_h2d(const tf_model *tm, void *dst, const void *src, size_t n, llmopt_error *err) {
    int rc = tm->dev->copy_h2d(tm->dev->ctx, dst, src, n);
    return rc ? error_set(err, rc, "%s: copy of %zu bytes to the device failed: %s", tm->dev->name, n, status_str(rc)) : 0;
}

/* ---- kernel lookup ---- */

static llmopt_kernel_fn find(const char *op, int device, int dtype, llmopt_error *err) {
    const llmopt_kernel_desc *k = host_api_table()->kernel_find(op, device, dtype);
    if (!k) {
        const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
        error_set(err, LLMOPT_ENOTFOUND, "no '%s' kernel for %s %s: load a kernel plugin (e.g. --plugins build/plugins)",
                  op, rt_device_name(device), t ? t->name : "?");
        return NULL;
    }
    return k->fn;
}

static tf_weight_kernels *weight_kernels(const tf_model *tm, int dtype) {
    for (int i = 0; i < tm->k.n_w; i++)
        if (tm->k.w[i].dtype == dtype) return (tf_weight_kernels *)&tm->k.w[i];
    return NULL;
}

static int need_weight_kernels(tf_model *tm, const llmopt_tensor *w, int embedding, llmopt_error *err) {
    tf_weight_kernels *wk = weight_kernels(tm, w->dtype);
    if (!wk) {
        if (tm->k.n_w == TF_MAX_WEIGHT_DTYPES)
            return error_set(err, LLMOPT_EUNSUPPORTED, "the model mixes more than %d weight dtypes", TF_MAX_WEIGHT_DTYPES);
        wk = &tm->k.w[tm->k.n_w++];
        wk->dtype = w->dtype;
    }
    llmopt_kernel_fn *slot = embedding ? &wk->embedding : &wk->matmul;
    if (*slot) return 0;
    *slot = find(embedding ? LLMOPT_OP_EMBEDDING : LLMOPT_OP_MATMUL, tm->device, w->dtype, err);
    return *slot ? 0 : err->status;
}

/* ---- binding ---- */

/* A half checkpoint (save_pretrained in float16/bfloat16) has half norm gains and biases too, but
 * the norm kernels and the matmul bias take f32: *slot becomes an f32 copy the tf_model owns.
 * The 2-D weights stay half; their matmul kernels read them as they are. */
static int f32_vector(tf_model *tm, const llmopt_tensor **slot, llmopt_error *err) {
    const llmopt_tensor *t = *slot;
    if (!t || t->dtype == LLMOPT_DTYPE_F32) return 0;
    llmopt_tensor *c = rt_tensor_f32_copy(t);
    if (!c) return error_set(err, LLMOPT_ENOMEM, "out of memory for an f32 copy of a %lld-element vector",
                             (long long)t->shape[0]);
    tm->owned[tm->n_owned++] = c;
    *slot = c;
    return 0;
}

static int f32_vectors(tf_model *tm, llmopt_error *err) {
    tf_layer *Ls = tm->layers;
    int n = tm->c.n_layer, rc;
    /* per layer 12 f32 vectors and 20 device copies; 2 + 5 for the model's own tensors, and the
     * rope frequency table with its device copy */
    tm->owned = calloc((size_t)n * 32 + 9, sizeof *tm->owned);
    if (!tm->owned) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    if ((rc = f32_vector(tm, &tm->norm_w, err)) || (rc = f32_vector(tm, &tm->norm_b, err))) return rc;
    if (tm->c.rope_n_freq) {
        int64_t shape[1] = {tm->c.rope_n_freq};
        llmopt_tensor *f = rt_tensor_new(LLMOPT_DTYPE_F32, 1, shape);
        if (!f) return error_set(err, LLMOPT_ENOMEM, "out of memory");
        memcpy(f->data, tm->c.rope_inv_freq, (size_t)tm->c.rope_n_freq * sizeof(float));
        tm->owned[tm->n_owned++] = f;
        tm->rope_freq = f;
    }
    for (int l = 0; l < n; l++) {
        const llmopt_tensor **vs[] = {&Ls[l].ln1_w, &Ls[l].ln1_b, &Ls[l].ln2_w, &Ls[l].ln2_b, &Ls[l].qkv_b, &Ls[l].q_b,
                                      &Ls[l].k_b, &Ls[l].v_b, &Ls[l].o_b, &Ls[l].up_b, &Ls[l].gate_b, &Ls[l].down_b};
        for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++)
            if ((rc = f32_vector(tm, vs[i], err))) return rc;
    }
    return 0;
}

/* *slot becomes a copy on the model's device, owned by the tf_model. */
static int device_copy(tf_model *tm, const llmopt_tensor **slot, llmopt_error *err) {
    if (!*slot) return 0;
    llmopt_tensor *c = NULL;
    int rc = rt_tensor_to(*slot, tm->dev, &c, err);
    if (rc) {
        error_prefix(err, "placing the weights on %s", tm->dev->name);
        return rc;
    }
    tm->owned[tm->n_owned++] = c;
    *slot = c;
    return 0;
}

static int device_copies(tf_model *tm, llmopt_error *err) {
    const llmopt_tensor *tok = tm->tok_emb;
    int rc;
    if ((rc = device_copy(tm, &tm->tok_emb, err)) || (rc = device_copy(tm, &tm->pos_emb, err)) ||
        (rc = device_copy(tm, &tm->norm_w, err)) || (rc = device_copy(tm, &tm->norm_b, err)) ||
        (rc = device_copy(tm, &tm->rope_freq, err)))
        return rc;
    if (tm->lm_head == tok) tm->lm_head = tm->tok_emb; /* tied: one copy */
    else if ((rc = device_copy(tm, &tm->lm_head, err))) return rc;
    for (int l = 0; l < tm->c.n_layer; l++) {
        tf_layer *L = &tm->layers[l];
        const llmopt_tensor **ts[] = {&L->ln1_w, &L->ln1_b, &L->ln2_w, &L->ln2_b, &L->qkv_w, &L->qkv_b, &L->q_w,
                                      &L->k_w,   &L->v_w,   &L->q_b,   &L->k_b,   &L->v_b,   &L->o_w,   &L->o_b,
                                      &L->up_w,  &L->up_b,  &L->gate_w, &L->gate_b, &L->down_w, &L->down_b};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
            if ((rc = device_copy(tm, ts[i], err))) return rc;
    }
    return 0;
}

static const llmopt_tensor *get(const tf_model *tm, int layer, const char *what) {
    char name[160];
    return rt_model_get(tm->m, arch_tensor_name(&tm->c, tm->m, layer, what, name, sizeof name));
}

static void bind_layer(tf_model *tm, int l) {
    tf_layer *L = &tm->layers[l];
    if (tm->c.family == ARCH_GPT2) {
        L->ln1_w = get(tm, l, "ln_1.weight"), L->ln1_b = get(tm, l, "ln_1.bias");
        L->ln2_w = get(tm, l, "ln_2.weight"), L->ln2_b = get(tm, l, "ln_2.bias");
        L->qkv_w = get(tm, l, "attn.c_attn.weight"), L->qkv_b = get(tm, l, "attn.c_attn.bias");
        L->o_w = get(tm, l, "attn.c_proj.weight"), L->o_b = get(tm, l, "attn.c_proj.bias");
        L->up_w = get(tm, l, "mlp.c_fc.weight"), L->up_b = get(tm, l, "mlp.c_fc.bias");
        L->down_w = get(tm, l, "mlp.c_proj.weight"), L->down_b = get(tm, l, "mlp.c_proj.bias");
        return;
    }
    L->ln1_w = get(tm, l, "input_layernorm.weight");
    L->ln2_w = get(tm, l, "post_attention_layernorm.weight");
    L->q_w = get(tm, l, "self_attn.q_proj.weight"), L->q_b = get(tm, l, "self_attn.q_proj.bias");
    L->k_w = get(tm, l, "self_attn.k_proj.weight"), L->k_b = get(tm, l, "self_attn.k_proj.bias");
    L->v_w = get(tm, l, "self_attn.v_proj.weight"), L->v_b = get(tm, l, "self_attn.v_proj.bias");
    L->o_w = get(tm, l, "self_attn.o_proj.weight"), L->o_b = get(tm, l, "self_attn.o_proj.bias");
    L->gate_w = get(tm, l, "mlp.gate_proj.weight"), L->gate_b = get(tm, l, "mlp.gate_proj.bias");
    L->up_w = get(tm, l, "mlp.up_proj.weight"), L->up_b = get(tm, l, "mlp.up_proj.bias");
    L->down_w = get(tm, l, "mlp.down_proj.weight"), L->down_b = get(tm, l, "mlp.down_proj.bias");
}

int tf_model_new(llmopt_model *m, int device, tf_model **out, llmopt_error *err) {
    *out = NULL;
    tf_model *tm = calloc(1, sizeof *tm);
    if (!tm) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int rc = arch_from_model(m, &tm->c, err);
    if (rc) {
        free(tm);
        return rc;
    }
    tm->m = rt_model_ref(m);
    tm->device = device;
    if (device != LLMOPT_DEVICE_CPU) {
        const char *dn = rt_device_name(device);
        if (!(tm->dev = host_api_table()->device_ops(device))) {
            rt_model_unref(tm->m);
            free(tm);
            return error_set(err, LLMOPT_ENOTFOUND, "no memory ops registered for device %s%s: load its kernel plugin", dn,
                             dn[0] == '?' ? " (unknown id)" : "");
        }
    }
    const arch_config *c = &tm->c;
    tm->layers = calloc((size_t)c->n_layer, sizeof *tm->layers);
    if (!tm->layers) {
        tf_model_free(tm);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    if (c->family == ARCH_GPT2) {
        tm->tok_emb = get(tm, -1, "wte.weight"), tm->pos_emb = get(tm, -1, "wpe.weight");
        tm->norm_w = get(tm, -1, "ln_f.weight"), tm->norm_b = get(tm, -1, "ln_f.bias");
    } else {
        tm->tok_emb = get(tm, -1, "model.embed_tokens.weight"), tm->norm_w = get(tm, -1, "model.norm.weight");
    }
    tm->lm_head = c->tied ? tm->tok_emb : get(tm, -1, "lm_head.weight");
    for (int l = 0; l < c->n_layer; l++) bind_layer(tm, l);
    if ((rc = f32_vectors(tm, err))) goto fail;

    /* every kernel up front, so a missing one is an error before any work */
    const llmopt_tensor *weights[] = {tm->lm_head};
    if ((rc = need_weight_kernels(tm, tm->tok_emb, 1, err)) || (rc = need_weight_kernels(tm, weights[0], 0, err)))
        goto fail;
    if (tm->pos_emb && (rc = need_weight_kernels(tm, tm->pos_emb, 1, err))) goto fail;
    for (int l = 0; l < c->n_layer; l++) {
        const tf_layer *L = &tm->layers[l];
        const llmopt_tensor *ws[] = {L->qkv_w, L->q_w, L->k_w, L->v_w, L->o_w, L->up_w, L->gate_w, L->down_w};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (ws[i] && (rc = need_weight_kernels(tm, ws[i], 0, err))) goto fail;
    }
    int F32 = LLMOPT_DTYPE_F32;
    if (!(tm->k.norm = find(c->family == ARCH_GPT2 ? LLMOPT_OP_LAYERNORM : LLMOPT_OP_RMSNORM, device, F32, err)) ||
        !(tm->k.attention = find(LLMOPT_OP_ATTENTION, device, F32, err)) ||
        !(tm->k.add = find(LLMOPT_OP_ADD, device, F32, err))) {
        rc = err->status;
        goto fail;
    }
    if (c->family == ARCH_GPT2) {
        tm->k.act = find(c->act == ACT_GELU_ERF ? LLMOPT_OP_GELU_ERF : LLMOPT_OP_GELU, device, F32, err);
        if (!tm->k.act) { rc = err->status; goto fail; }
    } else if (!(tm->k.rope = find(LLMOPT_OP_ROPE, device, F32, err)) ||
               !(tm->k.swiglu = find(LLMOPT_OP_SWIGLU, device, F32, err))) {
        rc = err->status;
        goto fail;
    }
    /* the weights go to the device last: a missing kernel fails before any copy */
    if (tm->dev && (rc = device_copies(tm, err))) goto fail;
    *out = tm;
    return 0;
fail:
    tf_model_free(tm);
    return rc;
}

void tf_model_free(tf_model *tm) {
    if (!tm) return;
    for (size_t i = 0; i < tm->n_owned; i++) rt_tensor_unref(tm->owned[i]);
    free(tm->owned);
    free(tm->layers);
    rt_model_unref(tm->m);
    free(tm);
}

void tf_model_set_matmul_precision(tf_model *tm, int precision) { tm->precision = precision; }

const arch_config *tf_model_arch(const tf_model *tm) { return &tm->c; }

void tf_model_set_capture(tf_model *tm, tf_capture_fn fn, void *arg) {
    tm->capture = fn;
    tm->capture_arg = arg;
}
const llmopt_model *tf_model_source(const tf_model *tm) { return tm->m; }

/* ---- sessions ---- */

int tf_session_new_batch(tf_model *tm, int n_seq, int max_ctx, tf_session **out, llmopt_error *err) {
    *out = NULL;
    const arch_config *c = &tm->c;
    if (n_seq < 1) return error_set(err, LLMOPT_EINVAL, "a session needs at least one sequence");
    if (max_ctx <= 0 || max_ctx > c->n_ctx) max_ctx = c->n_ctx;
    tf_session *s = calloc(1, sizeof *s);
    if (!s) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    s->tm = tm;
    s->n_seq = n_seq;
    s->max_ctx = max_ctx;
    size_t kv = (size_t)c->n_layer * (size_t)n_seq * (size_t)max_ctx * (size_t)c->n_kv_head * (size_t)c->head_dim;
    s->pos = calloc((size_t)n_seq, sizeof *s->pos);
    s->kc = dmalloc(tm, kv * sizeof(float));
    s->vc = dmalloc(tm, kv * sizeof(float));
    if (!s->pos || !s->kc || !s->vc) {
        tf_session_free(s);
        return error_set(err, LLMOPT_ENOMEM, "out of memory for a KV cache of %d x %d positions (%.1f MiB)", n_seq,
                         max_ctx, 2.0 * (double)kv * 4 / 1048576.0);
    }
    *out = s;
    return 0;
}

int tf_session_new(tf_model *tm, int max_ctx, tf_session **out, llmopt_error *err) {
    return tf_session_new_batch(tm, 1, max_ctx, out, err);
}

static void free_scratch(tf_session *s) {
    const tf_model *tm = s->tm;
    void *bufs[] = {s->x, s->h, s->q, s->qkv, s->kvn, s->att, s->ff, s->ff2, s->ids, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) dfree(tm, bufs[i]);
    free(s->ids_host);
    s->x = s->h = s->q = s->qkv = s->kvn = s->att = s->ff = s->ff2 = s->logits = NULL;
    s->ids = s->ids_host = NULL;
    s->cap = 0;
}

void tf_session_free(tf_session *s) {
    if (!s) return;
    free_scratch(s);
    free(s->pos);
    dfree(s->tm, s->kc);
    dfree(s->tm, s->vc);
    free(s);
}

int tf_session_pos(const tf_session *s) { return s->pos[0]; }
int tf_session_seq_pos(const tf_session *s, int seq) { return seq >= 0 && seq < s->n_seq ? s->pos[seq] : -1; }
int tf_session_n_seq(const tf_session *s) { return s->n_seq; }
int tf_session_capacity(const tf_session *s) { return s->max_ctx; }
const tf_model *tf_session_model(const tf_session *s) { return s->tm; }
void tf_session_rewind(tf_session *s, int pos) {
    for (int i = 0; i < s->n_seq; i++)
        if (pos >= 0 && pos < s->pos[i]) s->pos[i] = pos;
}

static int ensure_scratch(tf_session *s, int T, llmopt_error *err) {
    if (T <= s->cap) return 0;
    free_scratch(s);
    const arch_config *c = &s->tm->c;
    size_t t = (size_t)T, C = (size_t)c->n_embd, Q = (size_t)c->n_head * c->head_dim;
    size_t KV = (size_t)c->n_kv_head * c->head_dim, F = (size_t)c->n_ff;
    const tf_model *tm = s->tm;
    s->x = dmalloc(tm, t * C * 4), s->h = dmalloc(tm, t * C * 4), s->q = dmalloc(tm, t * Q * 4);
    s->qkv = dmalloc(tm, t * (Q + 2 * KV) * 4), s->kvn = dmalloc(tm, t * 2 * KV * 4), s->att = dmalloc(tm, t * Q * 4);
    s->ff = dmalloc(tm, t * F * 4), s->ff2 = dmalloc(tm, t * F * 4);
    s->ids = dmalloc(tm, t * sizeof *s->ids);
    int host_ok = 1;
    if (tm->dev) {
        s->ids_host = malloc(t * sizeof *s->ids_host);
        s->logits = dmalloc(tm, t * (size_t)c->vocab * 4);
        host_ok = s->ids_host && s->logits;
    }
    if (!s->x || !s->h || !s->q || !s->qkv || !s->kvn || !s->att || !s->ff || !s->ff2 || !s->ids || !host_ok) {
        free_scratch(s);
        return error_set(err, LLMOPT_ENOMEM, "out of memory for activations of %d tokens", T);
    }
    s->cap = T;
    return 0;
}

/* ---- kernel calls on plain buffers ---- */

/* A tensor header over a buffer in the model's device memory (an offset into a session buffer). */
static llmopt_tensor view(const tf_model *tm, const void *data, int dtype, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    llmopt_tensor t;
    memset(&t, 0, sizeof t);
    t.struct_size = sizeof t;
    t.dtype = dtype;
    t.device = tm->device;
    t.ndim = ndim;
    t.shape[0] = d0, t.shape[1] = ndim > 1 ? d1 : 1, t.shape[2] = ndim > 2 ? d2 : 1, t.shape[3] = 1;
    t.data = (void *)data;
    t.nbytes = rt_dtype_nbytes(dtype, ndim, t.shape);
    return t;
}
#define F32 LLMOPT_DTYPE_F32

static int run(llmopt_kernel_fn fn, const char *op, const llmopt_tensor **in, int n, llmopt_tensor *out,
               const void *params, llmopt_error *err) {
    int rc = fn((const llmopt_tensor *const *)in, n, out, params);
    return rc ? error_set(err, rc, "kernel '%s' failed: %s", op, status_str(rc)) : 0;
}

/* out[M,N] (+)= x[M,K] · W (+ b) */
static int matmul(const tf_model *tm, const float *x, int M, const llmopt_tensor *w, const llmopt_tensor *b,
                  float *out, int accumulate, int layout, llmopt_error *err) {
    int64_t K = layout == LLMOPT_W_OUT_IN ? w->shape[1] : w->shape[0];
    int64_t N = layout == LLMOPT_W_OUT_IN ? w->shape[0] : w->shape[1];
    if (tm->capture) {
        if (tm->dev) return error_set(err, LLMOPT_EUNSUPPORTED, "calibration capture runs on the cpu device, not on %s", tm->dev->name);
        int rc = tm->capture(tm->capture_arg, w, x, M, (int)K);
        if (rc) return error_set(err, rc, "calibration capture stopped the forward pass");
    }
    llmopt_tensor tx = view(tm, x, F32, 2, M, K, 1), to = view(tm, out, F32, 2, M, N, 1);
    const llmopt_tensor *in[3] = {&tx, w, b};
    llmopt_op_matmul p = {sizeof p, layout, accumulate, tm->precision};
    return run(weight_kernels(tm, w->dtype)->matmul, LLMOPT_OP_MATMUL, in, b ? 3 : 2, &to, &p, err);
}

/* A block's linear layer, in the layout its weight is stored in (arch_linear_layout). */
static int linear(const tf_model *tm, const float *x, int M, const llmopt_tensor *w, const llmopt_tensor *b,
                  float *out, int accumulate, llmopt_error *err) {
    return matmul(tm, x, M, w, b, out, accumulate, arch_linear_layout(&tm->c, w), err);
}

static int norm(const tf_model *tm, const float *x, int M, const llmopt_tensor *g, const llmopt_tensor *b,
                float *out, llmopt_error *err) {
    int C = tm->c.n_embd;
    llmopt_tensor tx = view(tm, x, F32, 2, M, C, 1), to = view(tm, out, F32, 2, M, C, 1);
    const llmopt_tensor *in[3] = {&tx, g, b};
    llmopt_op_norm p = {sizeof p, tm->c.norm_eps};
    return run(tm->k.norm, "norm", in, b ? 3 : 2, &to, &p, err);
}

static int embed(const tf_model *tm, const llmopt_tensor *table, const int32_t *ids, int T, float *out,
                 llmopt_error *err) {
    llmopt_tensor ti = view(tm, ids, LLMOPT_DTYPE_I32, 1, T, 1, 1), to = view(tm, out, F32, 2, T, table->shape[1], 1);
    const llmopt_tensor *in[2] = {table, &ti};
    return run(weight_kernels(tm, table->dtype)->embedding, LLMOPT_OP_EMBEDDING, in, 2, &to, NULL, err);
}

static int add(const tf_model *tm, float *a, const float *b, int64_t n, llmopt_error *err) {
    llmopt_tensor ta = view(tm, a, F32, 1, n, 1, 1), tb = view(tm, b, F32, 1, n, 1, 1);
    const llmopt_tensor *in[2] = {&ta, &tb};
    return run(tm->k.add, LLMOPT_OP_ADD, in, 2, &ta, NULL, err);
}

static int rope(const tf_model *tm, float *x, int T, int H, int pos, llmopt_error *err) {
    const arch_config *c = &tm->c;
    llmopt_tensor t = view(tm, x, F32, 3, T, H, c->head_dim);
    const llmopt_tensor *in[2] = {&t, tm->rope_freq};
    llmopt_op_rope p = {sizeof p, pos, c->head_dim, c->rope_theta, c->rope_scale};
    int rc = run(tm->k.rope, LLMOPT_OP_ROPE, in, tm->rope_freq ? 2 : 1, &t, &p, err);
    if (rc == LLMOPT_EINVAL && tm->rope_freq)
        error_set(err, rc, "kernel 'rope' refused a frequency table (in[1]), which llama3 rope scaling needs: "
                  "its kernel plugin predates it");
    return rc;
}

/* ---- one layer ---- */

/* Attention for every sequence of the batch: projections over all n_seq*T rows at once, then
 * per sequence its rope positions, its cache rows and its attention, into s->att. */
static int attention_core(tf_session *s, int l, int T, llmopt_error *err) {
    const tf_model *tm = s->tm;
    const arch_config *c = &tm->c;
    const tf_layer *L = &tm->layers[l];
    int D = c->head_dim, Hq = c->n_head, Hkv = c->n_kv_head, M = s->n_seq * T, rc;
    size_t Q = (size_t)Hq * D, KV = (size_t)Hkv * D, seq_stride = (size_t)s->max_ctx * KV;
    float *kc_l = s->kc + (size_t)l * s->n_seq * seq_stride, *vc_l = s->vc + (size_t)l * s->n_seq * seq_stride;
    /* new keys and values of all rows, [M,KV] each, before they go to each sequence's cache */
    float *k_all = s->kvn, *v_all = s->kvn + (size_t)M * KV;

    if ((rc = norm(tm, s->x, M, L->ln1_w, L->ln1_b, s->h, err))) return rc;
    if (c->family == ARCH_GPT2) {
        /* fused c_attn: qkv rows are [q | k | v], each C wide; split into q, k_all, v_all */
        if ((rc = linear(tm, s->h, M, L->qkv_w, L->qkv_b, s->qkv, 0, err))) return rc;
        for (int r = 0; r < M; r++) {
            const float *row = s->qkv + (size_t)r * 3 * Q;
            if ((rc = dcopy(tm, s->q + (size_t)r * Q, row, Q * 4, err)) ||
                (rc = dcopy(tm, k_all + (size_t)r * KV, row + Q, KV * 4, err)) ||
                (rc = dcopy(tm, v_all + (size_t)r * KV, row + 2 * Q, KV * 4, err)))
                return rc;
        }
    } else if ((rc = linear(tm, s->h, M, L->q_w, L->q_b, s->q, 0, err)) ||
               (rc = linear(tm, s->h, M, L->k_w, L->k_b, k_all, 0, err)) ||
               (rc = linear(tm, s->h, M, L->v_w, L->v_b, v_all, 0, err))) {
        return rc;
    }
    for (int b = 0; b < s->n_seq; b++) {
        int pos = s->pos[b];
        float *q = s->q + (size_t)b * T * Q, *kc = kc_l + (size_t)b * seq_stride, *vc = vc_l + (size_t)b * seq_stride;
        float *k_new = kc + (size_t)pos * KV, *v_new = vc + (size_t)pos * KV;
        if ((rc = dcopy(tm, k_new, k_all + (size_t)b * T * KV, (size_t)T * KV * 4, err)) ||
            (rc = dcopy(tm, v_new, v_all + (size_t)b * T * KV, (size_t)T * KV * 4, err)))
            return rc;
        if (c->family == ARCH_LLAMA && ((rc = rope(tm, q, T, Hq, pos, err)) || (rc = rope(tm, k_new, T, Hkv, pos, err))))
            return rc;
        llmopt_tensor tq = view(tm, q, F32, 3, T, Hq, D), tk = view(tm, kc, F32, 3, pos + T, Hkv, D);
        llmopt_tensor tv = view(tm, vc, F32, 3, pos + T, Hkv, D), to = view(tm, s->att + (size_t)b * T * Q, F32, 3, T, Hq, D);
        const llmopt_tensor *in[3] = {&tq, &tk, &tv};
        llmopt_op_attention p = {sizeof p, pos, 1, arch_attn_scale(c, l)};
        if ((rc = run(tm->k.attention, LLMOPT_OP_ATTENTION, in, 3, &to, &p, err))) return rc;
    }
    return 0;
}

static int attention_block(tf_session *s, int l, int T, llmopt_error *err) {
    const tf_layer *L = &s->tm->layers[l];
    int rc = attention_core(s, l, T, err);
    /* residual: x += att · Wo (+ bo) */
    return rc ? rc : linear(s->tm, s->att, s->n_seq * T, L->o_w, L->o_b, s->x, 1, err);
}

/* The MLP's hidden activations of every row, act(ln2(x) · W_up) (SwiGLU for Llama), into s->ff. */
static int mlp_core(tf_session *s, int l, int T, llmopt_error *err) {
    const tf_model *tm = s->tm;
    const tf_layer *L = &tm->layers[l];
    int F = tm->c.n_ff, rc;
    T *= s->n_seq; /* every row of the batch */
    if ((rc = norm(tm, s->x, T, L->ln2_w, L->ln2_b, s->h, err))) return rc;
    llmopt_tensor tf = view(tm, s->ff, F32, 2, T, F, 1);
    if (tm->c.family == ARCH_GPT2) {
        const llmopt_tensor *in[1] = {&tf};
        if ((rc = linear(tm, s->h, T, L->up_w, L->up_b, s->ff, 0, err)) ||
            (rc = run(tm->k.act, "gelu", in, 1, &tf, NULL, err)))
            return rc;
    } else {
        llmopt_tensor tu = view(tm, s->ff2, F32, 2, T, F, 1);
        const llmopt_tensor *in[2] = {&tf, &tu};
        if ((rc = linear(tm, s->h, T, L->gate_w, L->gate_b, s->ff, 0, err)) ||
            (rc = linear(tm, s->h, T, L->up_w, L->up_b, s->ff2, 0, err)) ||
            (rc = run(tm->k.swiglu, LLMOPT_OP_SWIGLU, in, 2, &tf, NULL, err)))
            return rc;
    }
    return 0;
}

static int mlp_block(tf_session *s, int l, int T, llmopt_error *err) {
    const tf_layer *L = &s->tm->layers[l];
    int rc = mlp_core(s, l, T, err);
    return rc ? rc : linear(s->tm, s->ff, s->n_seq * T, L->down_w, L->down_b, s->x, 1, err);
}

int tf_forward_batch(tf_session *s, const int32_t *ids, int T, float *logits, int all_logits, llmopt_error *err) {
    const tf_model *tm = s->tm;
    const arch_config *c = &tm->c;
    int B = s->n_seq, M = B * T;
    if (T <= 0) return error_set(err, LLMOPT_EINVAL, "no tokens to run");
    for (int b = 0; b < B; b++)
        if (s->pos[b] + T > s->max_ctx)
            return error_set(err, LLMOPT_EINVAL, "%d tokens after %d cached exceed the context of %d positions", T,
                             s->pos[b], s->max_ctx);
    for (int r = 0; r < M; r++)
        if (ids[r] < 0 || ids[r] >= c->vocab)
            return error_set(err, LLMOPT_EINVAL, "token id %d is outside the vocabulary [0, %d)", ids[r], c->vocab);
    int rc = ensure_scratch(s, M, err);
    if (rc) return rc;
    size_t C = (size_t)c->n_embd;
    const int32_t *tok = ids;
    if (tm->dev) { /* the ids go to the device first */
        if ((rc = dcopy_h2d(tm, s->ids, ids, (size_t)M * sizeof *ids, err))) return rc;
        tok = s->ids;
    }
    if ((rc = embed(tm, tm->tok_emb, tok, M, s->x, err))) return rc;
    if (tm->pos_emb) {
        /* learned positions: each sequence's own pos..pos+T-1, gathered as an embedding */
        int32_t *pos_ids = tm->dev ? s->ids_host : s->ids;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) pos_ids[b * T + t] = s->pos[b] + t;
        if (tm->dev && (rc = dcopy_h2d(tm, s->ids, pos_ids, (size_t)M * sizeof *pos_ids, err))) return rc;
        if ((rc = embed(tm, tm->pos_emb, s->ids, M, s->h, err)) || (rc = add(tm, s->x, s->h, (int64_t)M * (int64_t)C, err)))
            return rc;
    }
    for (int l = 0; l < c->n_layer; l++)
        if ((rc = attention_block(s, l, T, err)) || (rc = mlp_block(s, l, T, err))) return rc;
    for (int b = 0; b < B; b++) s->pos[b] += T;
    if (!logits) return 0;
    /* final norm and the LM head on every row, or on each sequence's last row */
    const float *rows = s->x;
    int rows_n = M;
    if (!all_logits) {
        for (int b = 0; b < B; b++)
            if ((rc = dcopy(tm, s->h + (size_t)b * C, s->x + ((size_t)b * T + (size_t)T - 1) * C, C * 4, err))) return rc;
        /* x is not needed after this call */
        if ((rc = dcopy(tm, s->x, s->h, (size_t)B * C * 4, err))) return rc;
        rows_n = B;
    }
    if ((rc = norm(tm, rows, rows_n, tm->norm_w, tm->norm_b, s->h, err))) return rc;
    if (!tm->dev) return matmul(tm, s->h, rows_n, tm->lm_head, NULL, logits, 0, LLMOPT_W_OUT_IN, err);
    /* off the CPU: into the device's logits, then out (the copy waits for the work before it) */
    if ((rc = matmul(tm, s->h, rows_n, tm->lm_head, NULL, s->logits, 0, LLMOPT_W_OUT_IN, err))) return rc;
    size_t n = (size_t)rows_n * (size_t)c->vocab * 4;
    rc = tm->dev->copy_d2h(tm->dev->ctx, logits, s->logits, n);
    return rc ? error_set(err, rc, "%s: copying %zu bytes of logits to the host failed: %s", tm->dev->name, n, status_str(rc))
              : 0;
}

/* ---- one block at a time (sequential calibration): host memory, so the CPU only ---- */

static int cpu_only(const tf_model *tm, const char *what, llmopt_error *err) {
    if (tm->device == LLMOPT_DEVICE_CPU) return 0;
    return error_set(err, LLMOPT_EUNSUPPORTED, "%s runs on the CPU only (block-by-block calibration)", what);
}

int tf_embed(tf_session *s, const int32_t *ids, int T, float *x, llmopt_error *err) {
    const tf_model *tm = s->tm;
    const arch_config *c = &tm->c;
    if (cpu_only(tm, "tf_embed", err)) return err->status;
    if (s->n_seq != 1 || T <= 0 || s->pos[0] + T > s->max_ctx)
        return error_set(err, LLMOPT_EINVAL, "tf_embed: %d tokens at %d do not fit one sequence of %d", T, s->pos[0],
                         s->max_ctx);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return error_set(err, LLMOPT_EINVAL, "token id %d is outside the vocabulary [0, %d)", ids[t], c->vocab);
    int rc = ensure_scratch(s, T, err);
    if (rc || (rc = embed(tm, tm->tok_emb, ids, T, x, err))) return rc;
    if (!tm->pos_emb) return 0;
    for (int t = 0; t < T; t++) s->ids[t] = s->pos[0] + t;
    if ((rc = embed(tm, tm->pos_emb, s->ids, T, s->h, err))) return rc;
    return add(tm, x, s->h, (int64_t)T * c->n_embd, err);
}

int tf_block_step(tf_session *s, int layer, int step, float *x, float *buf, int T, llmopt_error *err) {
    const tf_model *tm = s->tm;
    const arch_config *c = &tm->c;
    if (cpu_only(tm, "tf_block_step", err)) return err->status;
    if (s->n_seq != 1 || layer < 0 || layer >= c->n_layer || step < 0 || step >= TF_STEPS || T <= 0 ||
        s->pos[0] + T > s->max_ctx)
        return error_set(err, LLMOPT_EINVAL, "tf_block_step: layer %d, step %d, %d tokens at %d: out of range", layer,
                         step, T, s->pos[0]);
    int rc = ensure_scratch(s, T, err);
    if (rc) return rc;
    const tf_layer *L = &tm->layers[layer];
    const size_t C = (size_t)c->n_embd, Q = (size_t)c->n_head * (size_t)c->head_dim, F = (size_t)c->n_ff;
    const size_t xb = (size_t)T * C * sizeof(float);
    if (step == TF_STEP_LN1) return norm(tm, x, T, L->ln1_w, L->ln1_b, buf, err);
    memcpy(s->x, x, xb); /* the kernels below work on the session's x */
    switch (step) {
    case TF_STEP_ATTN:
        if ((rc = attention_core(s, layer, T, err))) return rc;
        memcpy(buf, s->att, (size_t)T * Q * sizeof(float));
        return 0;
    case TF_STEP_ATTN_OUT:
        if ((rc = linear(tm, buf, T, L->o_w, L->o_b, s->x, 1, err)) ||
            (rc = norm(tm, s->x, T, L->ln2_w, L->ln2_b, buf, err)))
            return rc;
        break;
    case TF_STEP_MLP:
        if ((rc = mlp_core(s, layer, T, err))) return rc;
        memcpy(buf, s->ff, (size_t)T * F * sizeof(float));
        return 0;
    default: /* TF_STEP_MLP_OUT */
        if ((rc = linear(tm, buf, T, L->down_w, L->down_b, s->x, 1, err))) return rc;
        break;
    }
    memcpy(x, s->x, xb);
    return 0;
}

int tf_block_step_weights(const tf_model *tm, int layer, int step, const llmopt_tensor **w) {
    if (layer < 0 || layer >= tm->c.n_layer) return 0;
    const tf_layer *L = &tm->layers[layer];
    int n = 0;
    switch (step) {
    case TF_STEP_LN1:
        if (L->qkv_w) w[n++] = L->qkv_w;
        else w[n++] = L->q_w, w[n++] = L->k_w, w[n++] = L->v_w;
        break;
    case TF_STEP_ATTN: w[n++] = L->o_w; break;
    case TF_STEP_ATTN_OUT:
        if (L->gate_w) w[n++] = L->gate_w;
        w[n++] = L->up_w;
        break;
    case TF_STEP_MLP: w[n++] = L->down_w; break;
    default: break;
    }
    return n;
}

int tf_final_norm(tf_session *s, const float *x, int T, float *out, llmopt_error *err) {
    if (cpu_only(s->tm, "tf_final_norm", err)) return err->status;
    return norm(s->tm, x, T, s->tm->norm_w, s->tm->norm_b, out, err);
}

const llmopt_tensor *tf_model_lm_head(const tf_model *tm) { return tm->lm_head; }

int tf_model_rebind_weights(tf_model *tm, int l, llmopt_error *err) {
    if (l < 0 || l >= tm->c.n_layer) return error_set(err, LLMOPT_EINVAL, "no layer %d", l);
    if (cpu_only(tm, "tf_model_rebind_weights", err)) return err->status;
    tf_layer fresh = {0}, *L = &tm->layers[l];
    tf_layer keep = *L;
    bind_layer(tm, l);
    fresh = *L;
    *L = keep; /* norm gains and biases stay as bound (their f32 copies for half checkpoints) */
    const llmopt_tensor **slots[] = {&L->qkv_w, &L->q_w, &L->k_w, &L->v_w, &L->o_w, &L->up_w, &L->gate_w, &L->down_w};
    const llmopt_tensor *now[] = {fresh.qkv_w, fresh.q_w, fresh.k_w, fresh.v_w, fresh.o_w, fresh.up_w, fresh.gate_w,
                                  fresh.down_w};
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        if (!now[i]) continue;
        int rc = need_weight_kernels(tm, now[i], 0, err);
        if (rc) return rc;
        *slots[i] = now[i];
    }
    return 0;
}

int tf_forward(tf_session *s, const int32_t *ids, int T, float *logits, int all_logits, llmopt_error *err) {
    if (s->n_seq != 1) return error_set(err, LLMOPT_EINVAL, "tf_forward runs one sequence; this session has %d", s->n_seq);
    return tf_forward_batch(s, ids, T, logits, all_logits, err);
}
