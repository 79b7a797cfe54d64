/* The Llama family (llama, mistral, qwen2) as an ONNX graph (opset 17 or later), the computation
 * of transformers' LlamaForCausalLM in eval mode: the token embedding; per block, RMSNorm, the
 * q/k/v projections (Linear weights [out, in] stored transposed, MatMul's [in, out]), rotary
 * embeddings (rotate_half, the runtime's frequencies with rope_scaling applied), causal
 * attention with grouped key/value heads, o_proj, the residual, RMSNorm, the gated MLP
 * down(act(gate x) * up x), the residual; the final RMSNorm and the LM head. Shapes: b batch,
 * s sequence, H query heads, KV key/value heads, hd head size. */
#include <math.h>
#include <stdio.h>

#include "onnx_export.h"

#define A ox_api

/* the initializer of block tensor fmt (layer filled in) */
static const char *w(llmopt_stage_ctx *ctx, const llmopt_model *m, ox_graph *g, ox_keep *keep, const char *fmt, int layer) {
    char name[300];
    snprintf(name, sizeof name, fmt, layer);
    return ox_tensor(ctx, m, g, keep, name);
}

/* x / sqrt(mean(x^2) + eps) * gain, over the last axis (LlamaRMSNorm) */
static const char *rms_norm(ox_graph *g, int64_t opset, const char *x, const char *gain, float eps) {
    const int64_t axes[1] = {-1};
    const char *sq = ox_op(g, "Mul", "sq", x, x, NULL), *mean;
    if (opset >= 18) { /* ReduceMean's axes became an input in opset 18 */
        mean = ox_op(g, "ReduceMean", "ms", sq, ox_const_i64(g, "axes", axes, 1), NULL);
    } else {
        mean = ox_op(g, "ReduceMean", "ms", sq, NULL);
        ox_attr_ints(g, "axes", axes, 1);
    }
    ox_attr_int(g, "keepdims", 1);
    const char *r = ox_op(g, "Sqrt", "rms", ox_op(g, "Add", "mse", mean, ox_const_f32(g, "eps", eps), NULL), NULL);
    return ox_op(g, "Mul", "normed", ox_op(g, "Div", "xn", x, r, NULL), gain, NULL);
}

/* x cos + rotate_half(x) sin; x [b, heads, s, hd], cos/sin [s, hd] */
static const char *rope(ox_graph *g, const char *x, const char *cos, const char *sin, int64_t hd) {
    const char *x1 = ox_slice_last(g, x, 0, hd / 2), *x2 = ox_slice_last(g, x, hd / 2, hd);
    const char *rot = ox_op(g, "Concat", "rot", ox_op(g, "Neg", "neg", x2, NULL), x1, NULL);
    ox_attr_int(g, "axis", -1);
    return ox_op(g, "Add", "roped", ox_op(g, "Mul", "xc", x, cos, NULL), ox_op(g, "Mul", "rs", rot, sin, NULL), NULL);
}

int ox_llama_graph(llmopt_stage_ctx *ctx, const llmopt_model *m, const llmopt_arch_info *a, const ox_opts *o, ox_graph *g,
                   ox_keep *keep) {
    const int64_t opset = o->opset;
    const int64_t H = a->n_head, KV = a->n_kv_head, hd = a->head_dim, rep = H / KV, half = hd / 2;
    if (a->rope_n_freq != half || half > LLMOPT_ROPE_MAX_FREQ)
        return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "rotary embedding over %d of %lld pairs has no ONNX export",
                            a->rope_n_freq, (long long)half);
    ox_positions_out p;
    ox_positions(g, &p, o, a->n_layer, KV, hd, 5);
    const char *embed = ox_tensor(ctx, m, g, keep, "model.embed_tokens.weight");
    if (!embed) return LLMOPT_EINVAL;
    const char *h = ox_op(g, "Gather", "tok", embed, "input_ids", NULL); /* [b, s, d] */

    /* angles [s, hd] = (pos / rope_scale) * freq, both halves (rotate_half), and their cos, sin */
    const int64_t freq_dims[1] = {half}, i1[1] = {1};
    const char *pos_f = ox_op(g, "Cast", "posf", p.pos, NULL);
    ox_attr_int(g, "to", OX_FLOAT);
    if (a->rope_scale != 1.0f) pos_f = ox_op(g, "Div", "pos_scaled", pos_f, ox_const_f32(g, "rope_scale", a->rope_scale), NULL);
    const char *freq = ox_weight(g, "rope_freq", a->rope_freq, 1, freq_dims);
    const int64_t last_axis[1] = {-1};
    const char *ang = ox_op(g, "Mul", "angles", ox_op(g, "Unsqueeze", "pos_col", pos_f, ox_const_i64(g, "axes", last_axis, 1), NULL),
                            freq, NULL); /* [s, half], or [b, s, half] from position_ids */
    ang = ox_op(g, "Concat", "angles2", ang, ang, NULL);
    ox_attr_int(g, "axis", -1);
    const char *cos = ox_op(g, "Cos", "cos", ang, NULL), *sin = ox_op(g, "Sin", "sin", ang, NULL);
    if (o->masked) { /* [b, 1, s, hd] against the heads' [b, heads, s, hd] */
        cos = ox_op(g, "Unsqueeze", "cos_b", cos, ox_const_i64(g, "axes", i1, 1), NULL);
        sin = ox_op(g, "Unsqueeze", "sin_b", sin, ox_const_i64(g, "axes", i1, 1), NULL);
    }

    const int64_t q_heads[4] = {0, 0, H, hd}, kv_heads[4] = {0, 0, KV, hd}, grouped[5] = {0, KV, rep, -1, hd};
    const int64_t ungrouped[4] = {0, H, -1, hd}, merged[3] = {0, 0, H * hd}, i2[1] = {2};
    const int64_t to_bhsd[4] = {0, 2, 1, 3}, swap_last[4] = {0, 1, 3, 2};
    const char *q_shape = ox_const_i64(g, "qh", q_heads, 4), *kv_shape = ox_const_i64(g, "kvh", kv_heads, 4);
    const char *grouped_shape = ox_const_i64(g, "grouped", grouped, 5);
    const char *ungrouped_shape = ox_const_i64(g, "ungrouped", ungrouped, 4), *merged_shape = ox_const_i64(g, "merged", merged, 3);
    const char *scale = ox_const_f32(g, "scale", 1.0f / sqrtf((float)hd)), *axis2 = ox_const_i64(g, "axes", i2, 1);
    char f[128];
#define W(name) (snprintf(f, sizeof f, "model.layers.%%d.%s", name), w(ctx, m, g, keep, f, l))
#define LIN(name, x, b) (snprintf(f, sizeof f, "model.layers.%d.%s.weight", l, name), ox_linear(ctx, m, o, g, keep, f, x, b))
    for (int l = 0; l < a->n_layer; l++) {
        const char *ln1 = W("input_layernorm.weight"), *ln2 = W("post_attention_layernorm.weight");
        const char *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL, *bg = NULL, *bu = NULL, *bd = NULL;
        if (a->attn_bias) bq = W("self_attn.q_proj.bias"), bk = W("self_attn.k_proj.bias"), bv = W("self_attn.v_proj.bias");
        if (a->o_bias) bo = W("self_attn.o_proj.bias");
        if (a->mlp_bias) bg = W("mlp.gate_proj.bias"), bu = W("mlp.up_proj.bias"), bd = W("mlp.down_proj.bias");
        if (!ln1 || !ln2 || (a->attn_bias && (!bq || !bk || !bv)) || (a->o_bias && !bo) ||
            (a->mlp_bias && (!bg || !bu || !bd)))
            return LLMOPT_EINVAL;

        const char *x = rms_norm(g, opset, h, ln1, a->norm_eps);
        const char *q = LIN("self_attn.q_proj", x, bq), *k = LIN("self_attn.k_proj", x, bk), *v = LIN("self_attn.v_proj", x, bv);
        if (!q || !k || !v) return LLMOPT_EINVAL;
        q = ox_transpose(g, ox_op(g, "Reshape", "q", q, q_shape, NULL), to_bhsd, 4);
        k = ox_transpose(g, ox_op(g, "Reshape", "k", k, kv_shape, NULL), to_bhsd, 4);
        v = ox_transpose(g, ox_op(g, "Reshape", "v", v, kv_shape, NULL), to_bhsd, 4);
        q = rope(g, q, cos, sin, hd); /* [b, H, s, hd] */
        k = ox_cached(g, &p, l, 0, rope(g, k, cos, sin, hd)); /* [b, KV, p + s, hd] */
        v = ox_cached(g, &p, l, 1, v);
        /* query head kv * rep + r reads key/value head kv (transformers' repeat_kv) */
        const char *q5 = ox_op(g, "Reshape", "q5", q, grouped_shape, NULL);                  /* [b, KV, rep, s, hd] */
        const char *k5 = ox_op(g, "Unsqueeze", "k5", ox_transpose(g, k, swap_last, 4), axis2, NULL); /* [b, KV, 1, hd, s] */
        const char *v5 = ox_op(g, "Unsqueeze", "v5", v, axis2, NULL);                         /* [b, KV, 1, s, hd] */
        const char *att = ox_op(g, "Mul", "scaled", ox_op(g, "MatMul", "scores", q5, k5, NULL), scale, NULL);
        att = ox_op(g, "Softmax", "probs", ox_op(g, "Add", "masked", att, p.mask, NULL), NULL);
        ox_attr_int(g, "axis", -1);
        const char *y = ox_op(g, "Reshape", "ctx", ox_op(g, "MatMul", "ctx5", att, v5, NULL), ungrouped_shape, NULL);
        y = ox_op(g, "Reshape", "merged", ox_transpose(g, y, to_bhsd, 4), merged_shape, NULL); /* [b, s, H*hd] */
        const char *o_out = LIN("self_attn.o_proj", y, bo);
        if (!o_out) return LLMOPT_EINVAL;
        h = ox_op(g, "Add", "h", h, o_out, NULL);

        x = rms_norm(g, opset, h, ln2, a->norm_eps);
        const char *gate = LIN("mlp.gate_proj", x, bg), *up = LIN("mlp.up_proj", x, bu);
        if (!gate || !up) return LLMOPT_EINVAL;
        const char *down = LIN("mlp.down_proj", ox_op(g, "Mul", "gated", ox_activation(g, a->act, gate), up, NULL), bd);
        if (!down) return LLMOPT_EINVAL;
        h = ox_op(g, "Add", "h", h, down, NULL);
        A->progress(ctx, 0.5 * (l + 1) / a->n_layer, "graph: block %d/%d", l + 1, a->n_layer);
    }
#undef W
#undef LIN
    const char *norm = ox_tensor(ctx, m, g, keep, "model.norm.weight");
    const char *head = a->tied ? embed : ox_tensor(ctx, m, g, keep, "lm_head.weight");
    if (!norm || !head) return LLMOPT_EINVAL;
    ox_logits(g, rms_norm(g, opset, h, norm, a->norm_eps), head, p.ids_shape, a->n_embd, a->vocab, o->last);
    ox_cache_outputs(g, &p);
    return 0;
}
