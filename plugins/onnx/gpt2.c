/* GPT-2 as an ONNX graph (opset 17), the computation of transformers' GPT2LMHeadModel in eval
 * mode: token and position embeddings; per block, LayerNormalization, the fused q/k/v
 * projection (Conv1D weights are [in, out], MatMul's orientation), causal softmax attention,
 * the output projection, the residual, LayerNormalization, the MLP, the residual; the final
 * norm and the LM head. Shapes: b batch, s sequence, d n_embd, H heads, hd head size. */
#include <math.h>
#include <stdio.h>

#include "onnx_export.h"

#define A ox_api

/* the checkpoint name of block tensor fmt (layer filled in), with or without the
 * "transformer." of GPT2LMHeadModel's checkpoints */
static const char *tname(const llmopt_model *m, char *name, size_t n, const char *fmt, int layer) {
    char base[256];
    snprintf(base, sizeof base, fmt, layer);
    snprintf(name, n, "transformer.%s", base);
    if (!A->model_get(m, name)) snprintf(name, n, "%s", base);
    return name;
}

/* its initializer; NULL after set_error when missing */
static const char *w(llmopt_stage_ctx *ctx, const llmopt_model *m, ox_graph *g, ox_keep *keep, const char *fmt,
                     int layer) {
    char name[300];
    return ox_tensor(ctx, m, g, keep, tname(m, name, sizeof name, fmt, layer));
}

/* x W + b for block weight fmt and its bias */
static const char *lin(llmopt_stage_ctx *ctx, const llmopt_model *m, const ox_opts *o, ox_graph *g, ox_keep *keep,
                       const char *fmt, int layer, const char *x, const char *bias) {
    char name[300];
    return bias ? ox_linear(ctx, m, o, g, keep, tname(m, name, sizeof name, fmt, layer), x, bias) : NULL;
}

static const char *layer_norm(ox_graph *g, const char *x, const char *gain, const char *bias, float eps) {
    const char *y = ox_op(g, "LayerNormalization", "ln", x, gain, bias, NULL);
    ox_attr_int(g, "axis", -1);
    ox_attr_float(g, "epsilon", eps);
    return y;
}

int ox_gpt2_graph(llmopt_stage_ctx *ctx, const llmopt_model *m, const llmopt_arch_info *a, const ox_opts *o, ox_graph *g,
                  ox_keep *keep) {
    const int64_t d = a->n_embd, H = a->n_head, hd = a->head_dim;
    ox_positions_out p;
    ox_positions(g, &p, o, a->n_layer, H, hd, 4);
    const char *wte = w(ctx, m, g, keep, "wte.weight", 0), *wpe = w(ctx, m, g, keep, "wpe.weight", 0);
    if (!wte || !wpe) return LLMOPT_EINVAL;
    const char *h = ox_op(g, "Add", "h", ox_op(g, "Gather", "tok", wte, "input_ids", NULL), /* [b, s, d] */
                          ox_op(g, "Gather", "posemb", wpe, p.pos, NULL), NULL);

    const int64_t heads[4] = {0, 0, H, hd}, merged[3] = {0, 0, d};
    const int64_t to_bhsd[4] = {0, 2, 1, 3}, swap_last[4] = {0, 1, 3, 2};
    const char *heads_shape = ox_const_i64(g, "heads", heads, 4), *merged_shape = ox_const_i64(g, "merged", merged, 3);
    for (int l = 0; l < a->n_layer; l++) {
        const char *ln1g = w(ctx, m, g, keep, "h.%d.ln_1.weight", l), *ln1b = w(ctx, m, g, keep, "h.%d.ln_1.bias", l);
        const char *ab = w(ctx, m, g, keep, "h.%d.attn.c_attn.bias", l), *pb = w(ctx, m, g, keep, "h.%d.attn.c_proj.bias", l);
        const char *ln2g = w(ctx, m, g, keep, "h.%d.ln_2.weight", l), *ln2b = w(ctx, m, g, keep, "h.%d.ln_2.bias", l);
        const char *fb = w(ctx, m, g, keep, "h.%d.mlp.c_fc.bias", l), *mb = w(ctx, m, g, keep, "h.%d.mlp.c_proj.bias", l);
        if (!ln1g || !ln1b || !ab || !pb || !ln2g || !ln2b || !fb || !mb) return LLMOPT_EINVAL;

        const char *x = layer_norm(g, h, ln1g, ln1b, a->norm_eps);
        const char *qkv = lin(ctx, m, o, g, keep, "h.%d.attn.c_attn.weight", l, x, ab); /* [b, s, 3d] */
        if (!qkv) return LLMOPT_EINVAL;
        const char *q = ox_transpose(g, ox_op(g, "Reshape", "q", ox_slice_last(g, qkv, 0, d), heads_shape, NULL), to_bhsd, 4);
        const char *k = ox_transpose(g, ox_op(g, "Reshape", "k", ox_slice_last(g, qkv, d, 2 * d), heads_shape, NULL), to_bhsd, 4);
        const char *v = ox_transpose(g, ox_op(g, "Reshape", "v", ox_slice_last(g, qkv, 2 * d, 3 * d), heads_shape, NULL), to_bhsd,
                                     4);
        k = ox_transpose(g, ox_cached(g, &p, l, 0, k), swap_last, 4); /* [b, H, hd, p + s] */
        v = ox_cached(g, &p, l, 1, v);                                 /* [b, H, p + s, hd] */
        float scale = a->attn_unscaled ? 1.0f : 1.0f / sqrtf((float)hd);
        if (a->attn_scale_by_layer) scale /= (float)(l + 1);
        const char *att = ox_op(g, "MatMul", "scores", q, k, NULL); /* [b, H, s, p + s] */
        att = ox_op(g, "Add", "masked", ox_op(g, "Mul", "scaled", att, ox_const_f32(g, "scale", scale), NULL), p.mask, NULL);
        att = ox_op(g, "Softmax", "probs", att, NULL);
        ox_attr_int(g, "axis", -1);
        const char *y = ox_transpose(g, ox_op(g, "MatMul", "ctx", att, v, NULL), to_bhsd, 4); /* [b, s, H, hd] */
        y = ox_op(g, "Reshape", "merged", y, merged_shape, NULL);
        const char *proj = lin(ctx, m, o, g, keep, "h.%d.attn.c_proj.weight", l, y, pb);
        if (!proj) return LLMOPT_EINVAL;
        h = ox_op(g, "Add", "h", h, proj, NULL);

        x = layer_norm(g, h, ln2g, ln2b, a->norm_eps);
        const char *fc = lin(ctx, m, o, g, keep, "h.%d.mlp.c_fc.weight", l, x, fb);
        const char *mlp = fc ? lin(ctx, m, o, g, keep, "h.%d.mlp.c_proj.weight", l, ox_activation(g, a->act, fc), mb) : NULL;
        if (!mlp) return LLMOPT_EINVAL;
        h = ox_op(g, "Add", "h", h, mlp, NULL);
        A->progress(ctx, 0.5 * (l + 1) / a->n_layer, "graph: block %d/%d", l + 1, a->n_layer);
    }
    const char *lnfg = w(ctx, m, g, keep, "ln_f.weight", 0), *lnfb = w(ctx, m, g, keep, "ln_f.bias", 0);
    if (!lnfg || !lnfb) return LLMOPT_EINVAL;
    const char *head = a->tied ? wte : ox_tensor(ctx, m, g, keep, "lm_head.weight");
    if (!head) return LLMOPT_EINVAL;
    ox_logits(g, layer_norm(g, h, lnfg, lnfb, a->norm_eps), head, p.ids_shape, d, a->vocab, o->last);
    ox_cache_outputs(g, &p);
    return 0;
}
