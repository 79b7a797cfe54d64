/* Reference backward kernels and AdamW: one plain loop nest per op, single-threaded, each
 * written beside the forward math it differentiates (llm.c's train_gpt2.c style). They are the
 * specification the fast kernels (backward_fast.c) are tested against, and the finite-difference
 * tests in tests/unit/test_backward_kernels.c hold them to the forward reference (ref.c). */
#include "backward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

float cpu_gelu_grad(float x) {
    // y = 0.5 x (1 + tanh(u)), u = s (x + 0.044715 x^3); dy/dx = 0.5 (1 + tanh u) + 0.5 x sech^2(u) du/dx
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    float th = tanhf(u);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
}

float cpu_gelu_erf_grad(float x) {
    // y = x Phi(x); dy/dx = Phi(x) + x phi(x)
    return 0.5f * (1.0f + erff(x * 0.7071067811865476f)) + x * expf(-0.5f * x * x) * 0.3989422804014327f;
}

float cpu_silu_grad(float x) {
    // y = x s(x); dy/dx = s (1 + x (1 - s))
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

static float load(const void *data, int dtype, int64_t i) {
    switch (dtype) {
    case LLMOPT_DTYPE_F16: return cpu_f16_to_f32(((const uint16_t *)data)[i]);
    case LLMOPT_DTYPE_BF16: return cpu_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

int cpu_ref_matmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) for OUT_IN or (K,N) for IN_OUT, dy is (M,N); dx is (M,K), dW like W, db is (N)
    cpu_mm_dims d;
    int want_dx;
    int rc = cpu_check_matmul_backward(in, n_in, out, p, &d, &want_dx);
    if (rc) return rc;
    const llmopt_op_matmul_backward *mb = p;
    const float *x = in[0]->data, *dy = in[2]->data;
    const void *w = in[1]->data;
    int wt = in[1]->dtype;
    float *dx = out->data, *dw = mb->dw ? mb->dw->data : NULL, *db = mb->db ? mb->db->data : NULL;
    for (int64_t m = 0; m < d.M; m++) {
        for (int64_t k = 0; k < d.K && dx; k++) {
            float val = 0.0f;
            for (int64_t n = 0; n < d.N; n++)
                val += dy[m * d.N + n] * load(w, wt, d.layout == LLMOPT_W_OUT_IN ? n * d.K + k : k * d.N + n);
            dx[m * d.K + k] = d.accumulate ? dx[m * d.K + k] + val : val;
        }
        for (int64_t n = 0; n < d.N; n++) {
            float g = dy[m * d.N + n];
            if (db) db[n] += g;
            for (int64_t k = 0; k < d.K && dw; k++)
                dw[d.layout == LLMOPT_W_OUT_IN ? n * d.K + k : k * d.N + n] += g * x[m * d.K + k];
        }
    }
    return 0;
}

int cpu_ref_layernorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x, dy and dx are (M,C); gamma, dgamma, dbeta are (C). With norm = (x - mean) rstd:
    // dx = rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)), dnorm = dy gamma
    cpu_rows d;
    int rc = cpu_check_norm_backward(in, n_in, out, p, 1, &d);
    if (rc) return rc;
    const llmopt_op_norm_backward *nb = p;
    const float *x = in[0]->data, *gamma = in[1]->data, *dy = in[2]->data;
    float *dx = out->data, *dgamma = nb->dgamma->data, *dbeta = nb->dbeta->data;
    int64_t C = d.cols;
    for (int64_t m = 0; m < d.rows; m++) {
        const float *xm = x + m * C, *dym = dy + m * C;
        float mean = 0.0f, var = 0.0f;
        for (int64_t c = 0; c < C; c++) mean += xm[c];
        mean /= (float)C;
        for (int64_t c = 0; c < C; c++) var += (xm[c] - mean) * (xm[c] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + nb->eps);
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            float norm = (xm[c] - mean) * rstd, dnorm = dym[c] * gamma[c];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= (float)C;
        dnorm_norm_mean /= (float)C;
        for (int64_t c = 0; c < C; c++) {
            float norm = (xm[c] - mean) * rstd, dnorm = dym[c] * gamma[c];
            dgamma[c] += norm * dym[c];
            dbeta[c] += dym[c];
            dx[m * C + c] = (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd;
        }
    }
    return 0;
}

int cpu_ref_rmsnorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x, dy and dx are (M,C); gamma, dgamma are (C). y = x rstd gamma, rstd = (mean(x^2) + eps)^-1/2:
    // dx = rstd dnorm - x rstd^3 mean(dnorm x), dnorm = dy gamma
    cpu_rows d;
    int rc = cpu_check_norm_backward(in, n_in, out, p, 0, &d);
    if (rc) return rc;
    const llmopt_op_norm_backward *nb = p;
    const float *x = in[0]->data, *gamma = in[1]->data, *dy = in[2]->data;
    float *dx = out->data, *dgamma = nb->dgamma->data;
    int64_t C = d.cols;
    for (int64_t m = 0; m < d.rows; m++) {
        const float *xm = x + m * C, *dym = dy + m * C;
        float ms = 0.0f;
        for (int64_t c = 0; c < C; c++) ms += xm[c] * xm[c];
        float rstd = 1.0f / sqrtf(ms / (float)C + nb->eps);
        float dot = 0.0f;
        for (int64_t c = 0; c < C; c++) dot += dym[c] * gamma[c] * xm[c];
        dot /= (float)C;
        for (int64_t c = 0; c < C; c++) {
            dgamma[c] += dym[c] * xm[c] * rstd;
            dx[m * C + c] = rstd * dym[c] * gamma[c] - xm[c] * rstd * rstd * rstd * dot;
        }
    }
    return 0;
}

int cpu_ref_rope_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // dy and dx are (T,H,D); the forward rotation by +angle is undone by -angle:
    // dx1 = dy1 cos + dy2 sin, dx2 = dy2 cos - dy1 sin
    int rc = cpu_check_rope(in, n_in, out, p);
    if (rc) return rc;
    const llmopt_op_rope *r = p;
    int64_t T = in[0]->shape[0], H = in[0]->shape[1], D = in[0]->shape[2], half = r->rot_dim / 2;
    const float *dy = in[0]->data, *freq = n_in == 2 ? in[1]->data : NULL;
    float *dx = out->data;
    for (int64_t t = 0; t < T; t++) {
        double pos = (double)(r->n_past + t) / r->scale;
        for (int64_t h = 0; h < H; h++) {
            const float *g = dy + (t * H + h) * D;
            float *o = dx + (t * H + h) * D;
            for (int64_t i = 0; i < half; i++) {
                double angle = pos * (freq ? (double)freq[i] : pow(r->theta, -2.0 * (double)i / (double)r->rot_dim));
                float cos_a = (float)cos(angle), sin_a = (float)sin(angle);
                float g1 = g[i], g2 = g[i + half];
                o[i] = g1 * cos_a + g2 * sin_a;
                o[i + half] = g2 * cos_a - g1 * sin_a;
            }
            for (int64_t i = r->rot_dim; i < D; i++) o[i] = g[i];
        }
    }
    return 0;
}

int cpu_ref_attention_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // q, dy, dq are (T,Hq,D); k, v, dk, dv are (T,Hkv,D). Per (t, h): att = softmax(scale q.k_j),
    // out = sum_j att_j v_j; datt_j = dy.v_j; dpre_j = att_j (datt_j - sum_i att_i datt_i);
    // dq += scale dpre_j k_j; dk_j += scale dpre_j q; dv_j += att_j dy
    cpu_attn_dims d;
    int rc = cpu_check_attention_backward(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_attention_backward *a = p;
    const float *q = in[0]->data, *k = in[1]->data, *v = in[2]->data, *dy = in[3]->data;
    float *dq = out->data, *dk = a->dk->data, *dv = a->dv->data;
    float *att = malloc((size_t)d.T * sizeof(float)), *datt = malloc((size_t)d.T * sizeof(float));
    if (!att || !datt) {
        free(att), free(datt);
        return LLMOPT_ENOMEM;
    }
    memset(dq, 0, (size_t)(d.T * d.Hq * d.D) * sizeof(float));
    memset(dk, 0, (size_t)(d.T * d.Hkv * d.D) * sizeof(float));
    memset(dv, 0, (size_t)(d.T * d.Hkv * d.D) * sizeof(float));
    int64_t group = d.Hq / d.Hkv;
    for (int64_t t = 0; t < d.T; t++) {
        int64_t n_keys = a->causal ? t + 1 : d.T;
        for (int64_t h = 0; h < d.Hq; h++) {
            int64_t kvh = h / group;
            const float *qh = q + (t * d.Hq + h) * d.D, *dyh = dy + (t * d.Hq + h) * d.D;
            float maxval = -INFINITY, sum = 0.0f;
            for (int64_t j = 0; j < n_keys; j++) {
                const float *kj = k + (j * d.Hkv + kvh) * d.D;
                float s = 0.0f;
                for (int64_t i = 0; i < d.D; i++) s += qh[i] * kj[i];
                att[j] = s * a->scale;
                if (att[j] > maxval) maxval = att[j];
            }
            for (int64_t j = 0; j < n_keys; j++) {
                att[j] = expf(att[j] - maxval);
                sum += att[j];
            }
            float dot = 0.0f;
            for (int64_t j = 0; j < n_keys; j++) {
                att[j] /= sum;
                const float *vj = v + (j * d.Hkv + kvh) * d.D;
                float s = 0.0f;
                for (int64_t i = 0; i < d.D; i++) s += dyh[i] * vj[i];
                datt[j] = s;
                dot += att[j] * s;
            }
            float *dqh = dq + (t * d.Hq + h) * d.D;
            for (int64_t j = 0; j < n_keys; j++) {
                float dpre = att[j] * (datt[j] - dot) * a->scale;
                const float *kj = k + (j * d.Hkv + kvh) * d.D;
                float *dkj = dk + (j * d.Hkv + kvh) * d.D, *dvj = dv + (j * d.Hkv + kvh) * d.D;
                for (int64_t i = 0; i < d.D; i++) {
                    dqh[i] += dpre * kj[i];
                    dkj[i] += dpre * qh[i];
                    dvj[i] += att[j] * dyh[i];
                }
            }
        }
    }
    free(att), free(datt);
    return 0;
}

/* dx = dy * f'(x) for an elementwise f; in[0] x, in[1] dy. */
static int act_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, float (*grad)(float)) {
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 2, &n);
    if (rc) return rc;
    const float *x = in[0]->data, *dy = in[1]->data;
    float *dx = out->data;
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * grad(x[i]);
    return 0;
}

int cpu_ref_gelu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return act_backward(in, n_in, out, cpu_gelu_grad);
}

int cpu_ref_gelu_erf_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return act_backward(in, n_in, out, cpu_gelu_erf_grad);
}

int cpu_ref_silu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    (void)p;
    return act_backward(in, n_in, out, cpu_silu_grad);
}

int cpu_ref_swiglu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // gate, up, dy, dgate, dup are (M,F); y = silu(gate) up: dgate = dy up silu'(gate), dup = dy silu(gate)
    int64_t n;
    int rc = cpu_check_swiglu_backward(in, n_in, out, p, &n);
    if (rc) return rc;
    const float *gate = in[0]->data, *up = in[1]->data, *dy = in[2]->data;
    float *dgate = out->data, *dup = ((const llmopt_op_swiglu_backward *)p)->dup->data;
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], u = up[i], gy = dy[i];
        dgate[i] = gy * u * cpu_silu_grad(g);
        dup[i] = gy * g / (1.0f + expf(-g));
    }
    return 0;
}

int cpu_ref_embedding_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // ids is (T), dy is (T,C), dtable is (V,C): dtable[ids[t]] += dy[t]
    (void)p;
    cpu_rows d;
    int64_t V;
    int rc = cpu_check_embedding_backward(in, n_in, out, &d, &V);
    if (rc) return rc;
    const int32_t *ids = in[0]->data;
    const float *dy = in[1]->data;
    float *dt = out->data;
    for (int64_t t = 0; t < d.rows; t++)
        for (int64_t c = 0; c < d.cols; c++) dt[(int64_t)ids[t] * d.cols + c] += dy[t * d.cols + c];
    return 0;
}

/* The rows of cross-entropy's gradient (and, with losses, its per-row losses); dl may be logits. */
static void ce_grad_rows(const float *logits, const int32_t *targets, float *dl, const cpu_rows *d, int32_t ignore,
                         float scale, float *losses) {
    for (int64_t t = 0; t < d->rows; t++) {
        const float *lt = logits + t * d->cols;
        float *dt = dl + t * d->cols;
        if (targets[t] == ignore) {
            if (losses) losses[t] = 0.0f;
            for (int64_t i = 0; i < d->cols; i++) dt[i] = 0.0f;
            continue;
        }
        float maxval = -INFINITY, sum = 0.0f;
        for (int64_t i = 0; i < d->cols; i++)
            if (lt[i] > maxval) maxval = lt[i];
        for (int64_t i = 0; i < d->cols; i++) sum += expf(lt[i] - maxval);
        if (losses) losses[t] = logf(sum) - (lt[targets[t]] - maxval); /* before dt, which may be lt */
        for (int64_t i = 0; i < d->cols; i++)
            dt[i] = (expf(lt[i] - maxval) / sum - (i == targets[t] ? 1.0f : 0.0f)) * scale;
    }
}

int cpu_ref_cross_entropy_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // logits and dlogits are (T,V), targets is (T): dlogits = (softmax(logits) - onehot(target)) scale
    cpu_rows d;
    int rc = cpu_check_cross_entropy_backward(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_cross_entropy_backward *ce = p;
    ce_grad_rows(in[0]->data, in[1]->data, out->data, &d, ce->ignore_index, ce->scale, NULL);
    return 0;
}

int cpu_ref_cross_entropy_fused(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // logits and dlogits are (T,V), may be one tensor; targets and losses are (T): the loss of
    // cpu_ref_cross_entropy and the gradient of cpu_ref_cross_entropy_backward
    cpu_rows d;
    int rc = cpu_check_cross_entropy_fused(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_cross_entropy_fused *ce = p;
    ce_grad_rows(in[0]->data, in[1]->data, out->data, &d, ce->ignore_index, ce->scale, ce->losses->data);
    return 0;
}

int cpu_ref_adamw(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // grad, param, m, v are (n). As torch.optim.AdamW: param *= 1 - lr wd; m = b1 m + (1-b1) g;
    // v = b2 v + (1-b2) g^2; param -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
    int64_t n;
    int rc = cpu_check_adamw(in, n_in, out, p, &n);
    if (rc) return rc;
    const llmopt_op_adamw *a = p;
    const float *grad = in[0]->data;
    float *param = out->data, *m = a->m->data, *v = a->v->data;
    float bc1 = (float)(1.0 - pow((double)a->beta1, a->step));
    float bc2_sqrt = (float)sqrt(1.0 - pow((double)a->beta2, a->step));
    float step_size = a->lr / bc1;
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] * a->grad_scale;
        m[i] = a->beta1 * m[i] + (1.0f - a->beta1) * g;
        v[i] = a->beta2 * v[i] + (1.0f - a->beta2) * g * g;
        param[i] *= 1.0f - a->lr * a->weight_decay;
        param[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + a->eps);
    }
    return 0;
}
