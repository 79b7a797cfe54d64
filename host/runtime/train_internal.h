/* The training engine's private state, shared by train.c (binding, forward, backward, AdamW)
 * and train_state.c (export, LoRA merge, checkpoints). Shapes: B sequences of T tokens, BT = B*T
 * rows; C hidden, Q = Hq*D, KV = Hkv*D, F the MLP width, V the vocabulary. */
#ifndef HOST_RUNTIME_TRAIN_INTERNAL_H
#define HOST_RUNTIME_TRAIN_INTERNAL_H

#include "train.h"
#include "arch.h"

/* A trainable tensor: f32 master weights, gradient (of the summed loss) and AdamW moments. */
typedef struct tr_param {
    char *name;                    /* checkpoint name, or the PEFT name of an adapter */
    llmopt_tensor *w, *g, *m, *v;  /* f32, the shape of the source; m, v u8 codes when 8-bit */
    llmopt_tensor *m_absmax, *v_absmax; /* 8-bit moments: f32 [blocks] (adamw_8bit); else NULL */
    const llmopt_tensor *src;      /* the model's tensor it was copied from; NULL for adapters */
} tr_param;

/* A weight slot of the forward pass: what the kernels read, and its parameter when trained. */
typedef struct tr_w {
    const llmopt_tensor *t;        /* p->w, the model's tensor, or an f32 copy of a frozen vector */
    tr_param *p;
    char name[160];
} tr_w;

/* LoRA on one linear layer (Hu et al. 2021, eq. 3): y += s (drop(x) Aᵀ) Bᵀ, s = alpha / r. */
typedef struct tr_lora {
    tr_param *A, *B;               /* [r, in], [out, r] */
    float *xd;                     /* [BT, in] drop(x), saved when dropout > 0 */
    float *u;                      /* [BT, r] s * drop(x) Aᵀ, saved */
    const float *x;                /* the input the forward saw (a saved activation) */
    uint64_t id;                   /* mixes into the dropout stream */
} tr_lora;

typedef struct tr_linear {
    tr_w w, b;                     /* b.t NULL when there is no bias */
    tr_lora *lora;
    int64_t in, out;
    int layout;                    /* w's layout (arch_linear_layout) */
} tr_linear;

typedef struct tr_layer {
    tr_w ln1_w, ln1_b, ln2_w, ln2_b;
    tr_linear qkv, q, k, v, o, up, gate, down;   /* qkv: GPT-2 c_attn; q, k, v: Llama */
} tr_layer;

/* Activations saved by the forward for the backward, per layer l; with tr_options.recompute,
 * x for every layer and the rest for one layer at a time (the one the backward is in). */
typedef struct tr_acts {
    float *x;      /* [(L+1)][BT,C] residual stream entering layer l; x[L] leaves the last */
    float *xmid;   /* [L][BT,C] after the attention residual */
    float *h1, *h2;/* [L][BT,C] norm outputs */
    float *q;      /* [L][BT,Q] (after rope) */
    float *k, *v;  /* [L][BT,KV] (k after rope) */
    float *att;    /* [L][BT,Q] attention output */
    float *ffa;    /* [L][BT,F] c_fc / gate_proj output (pre-activation) */
    float *ffb;    /* [L][BT,F] up_proj output (Llama) */
    float *ffo;    /* [L][BT,F] activation output (input of the down projection) */
    float *hf;     /* [BT,C] final norm output */
    float *logits; /* [BT,V] */
    float *losses; /* [BT] */
} tr_acts;

typedef struct tr_kernel { const char *op; int dtype; llmopt_kernel_fn fn; } tr_kernel;

struct tr_trainer {
    llmopt_model *m;
    arch_config c;
    tr_options o;                  /* pattern lists point into owned copies below */
    char **trainable, **targets;
    int B, T, BT;
    tr_w tok_emb, pos_emb, norm_w, norm_b, lm_head;
    tr_layer *layers;
    /* the lowest place that trains: -1 the embeddings, l layer l, n_layer none below the final
     * norm and head; the backward goes no lower (tr_new sets it) */
    int grad_floor;
    int ce_fused;                  /* the plugin has cross_entropy_fused (need_kernels) */
    tr_linear **linears;           /* every linear layer, in forward order */
    size_t n_linears;
    tr_param **params;             /* in checkpoint order, then adapters in forward order */
    size_t n_params;
    const llmopt_tensor **owned;   /* f32 copies of frozen vectors */
    size_t n_owned;
    tr_kernel *kernels;
    size_t n_kernels;
    tr_acts a;
    /* backward scratch; dlogits: a block of ce_rows rows (the backward turns the logits into their gradient) */
    float *dx, *dtmp, *dh, *datt, *dq, *dk, *dv, *dqkv, *qkv, *dffa, *dffb, *dffo, *dlogits, *du, *dxd;
    int32_t *pos_ids;
    int step;                      /* optimizer steps taken */
    uint64_t micro;                /* micro-batches run with dropout: the dropout stream's counter */
    size_t acc_targets;            /* targets accumulated since the last step */
    int finished;                  /* tr_finish: no gradients or moments any more */
};

/* LLMOPT_EINVAL saying training is finished, for what needs gradients or moments. */
int tr_refuse_finished(const char *what, llmopt_error *err);

/* n f32 values into a float tensor's storage of its dtype (round to nearest even). */
void tr_from_f32(llmopt_tensor *t, const float *src, int64_t n);
/* '*' wildcard match of a whole string. */
int tr_glob(const char *pat, const char *s);

#endif
