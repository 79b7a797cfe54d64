/* Reference CPU kernels: one plain loop nest per op, single-threaded, written to be read next to
 * the op contract (llmopt/kernel_ops.h). They are the specification the fast paths are tested
 * against (tests/unit/test_cpu_kernels.c compiles this file in) and what LLMOPT_CPU_FORCE=ref
 * registers. Every kernel validates its arguments with the shared checks in check.c. */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>

/* Element i of an f32/f16/bf16 array, as f32. */
static float load(const void *data, int dtype, int64_t i) {
    switch (dtype) {
    case LLMOPT_DTYPE_F16: return cpu_f16_to_f32(((const uint16_t *)data)[i]);
    case LLMOPT_DTYPE_BF16: return cpu_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

int cpu_ref_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,K), W is (N,K) for OUT_IN or (K,N) for IN_OUT, bias is (N), out is (M,N)
    cpu_mm_dims d;
    int rc = cpu_check_matmul(in, n_in, out, p, &d);
    if (rc) return rc;
    const float *x = in[0]->data, *bias = d.has_bias ? in[2]->data : NULL;
    const void *w = in[1]->data;
    int wt = in[1]->dtype;
    float *o = out->data;
    for (int64_t m = 0; m < d.M; m++) {
        for (int64_t n = 0; n < d.N; n++) {
            float val = bias ? bias[n] : 0.0f;
            for (int64_t k = 0; k < d.K; k++) {
                int64_t wi = d.layout == LLMOPT_W_OUT_IN ? n * d.K + k : k * d.N + n;
                val += x[m * d.K + k] * load(w, wt, wi);
            }
            o[m * d.N + n] = d.accumulate ? o[m * d.N + n] + val : val;
        }
    }
    return 0;
}

int cpu_ref_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // table is (V,C), ids is (T), out is (T,C)
    (void)p;
    cpu_rows d;
    int rc = cpu_check_embedding(in, n_in, out, &d);
    if (rc) return rc;
    const int32_t *ids = in[1]->data;
    float *o = out->data;
    for (int64_t t = 0; t < d.rows; t++)
        for (int64_t c = 0; c < d.cols; c++)
            o[t * d.cols + c] = load(in[0]->data, in[0]->dtype, (int64_t)ids[t] * d.cols + c);
    return 0;
}

int cpu_ref_layernorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,C), gamma is (C), beta is (C) or absent, out is (M,C)
    cpu_rows d;
    int rc = cpu_check_norm(in, n_in, out, p, 1, &d);
    if (rc) return rc;
    float eps = ((const llmopt_op_norm *)p)->eps;
    const float *x = in[0]->data, *gamma = in[1]->data, *beta = n_in == 3 ? in[2]->data : NULL;
    float *o = out->data;
    for (int64_t m = 0; m < d.rows; m++) {
        const float *xm = x + m * d.cols;
        float mean = 0.0f;
        for (int64_t c = 0; c < d.cols; c++) mean += xm[c];
        mean /= (float)d.cols;
        float var = 0.0f;
        for (int64_t c = 0; c < d.cols; c++) var += (xm[c] - mean) * (xm[c] - mean);
        var /= (float)d.cols;
        float rstd = 1.0f / sqrtf(var + eps);
        for (int64_t c = 0; c < d.cols; c++)
            o[m * d.cols + c] = (xm[c] - mean) * rstd * gamma[c] + (beta ? beta[c] : 0.0f);
    }
    return 0;
}

int cpu_ref_rmsnorm(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (M,C), gamma is (C), out is (M,C)
    cpu_rows d;
    int rc = cpu_check_norm(in, n_in, out, p, 0, &d);
    if (rc) return rc;
    float eps = ((const llmopt_op_norm *)p)->eps;
    const float *x = in[0]->data, *gamma = in[1]->data;
    float *o = out->data;
    for (int64_t m = 0; m < d.rows; m++) {
        const float *xm = x + m * d.cols;
        float ms = 0.0f;
        for (int64_t c = 0; c < d.cols; c++) ms += xm[c] * xm[c];
        ms /= (float)d.cols;
        float rstd = 1.0f / sqrtf(ms + eps);
        for (int64_t c = 0; c < d.cols; c++) o[m * d.cols + c] = xm[c] * rstd * gamma[c];
    }
    return 0;
}

int cpu_ref_rope(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x is (T,H,D), out is (T,H,D) and may be x; rotate-half over the first rot_dim dims
    int rc = cpu_check_rope(in, n_in, out, p);
    if (rc) return rc;
    const llmopt_op_rope *r = p;
    int64_t T = in[0]->shape[0], H = in[0]->shape[1], D = in[0]->shape[2], half = r->rot_dim / 2;
    const float *x = in[0]->data, *freq = n_in == 2 ? in[1]->data : NULL;
    float *o = out->data;
    for (int64_t t = 0; t < T; t++) {
        double pos = (double)(r->n_past + t) / r->scale;
        for (int64_t h = 0; h < H; h++) {
            const float *xh = x + (t * H + h) * D;
            float *oh = o + (t * H + h) * D;
            for (int64_t i = 0; i < half; i++) {
                double angle = pos * (freq ? (double)freq[i] : pow(r->theta, -2.0 * (double)i / (double)r->rot_dim));
                float cos_a = (float)cos(angle), sin_a = (float)sin(angle);
                float x1 = xh[i], x2 = xh[i + half];
                oh[i] = x1 * cos_a - x2 * sin_a;
                oh[i + half] = x2 * cos_a + x1 * sin_a;
            }
            for (int64_t i = r->rot_dim; i < D; i++) oh[i] = xh[i];
        }
    }
    return 0;
}

int cpu_ref_attention(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // q is (T,Hq,D), k and v are (S,Hkv,D), out is (T,Hq,D); query head h reads kv head
    // h / (Hq/Hkv); row t sees keys 0..n_past+t when causal, else 0..n_past+T-1
    cpu_attn_dims d;
    int rc = cpu_check_attention(in, n_in, out, p, &d);
    if (rc) return rc;
    const llmopt_op_attention *a = p;
    const float *q = in[0]->data, *k = in[1]->data, *v = in[2]->data;
    float *o = out->data;
    float *att = malloc((size_t)(a->n_past + d.T) * sizeof(float));
    if (!att) return LLMOPT_ENOMEM;
    int64_t group = d.Hq / d.Hkv;
    for (int64_t t = 0; t < d.T; t++) {
        int64_t n_keys = a->causal ? a->n_past + t + 1 : a->n_past + d.T;
        for (int64_t h = 0; h < d.Hq; h++) {
            const float *qh = q + (t * d.Hq + h) * d.D;
            int64_t kvh = h / group;
            float maxval = -INFINITY;
            for (int64_t j = 0; j < n_keys; j++) {
                const float *kj = k + (j * d.Hkv + kvh) * d.D;
                float s = 0.0f;
                for (int64_t i = 0; i < d.D; i++) s += qh[i] * kj[i];
                att[j] = s * a->scale;
                if (att[j] > maxval) maxval = att[j];
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < n_keys; j++) {
                att[j] = expf(att[j] - maxval);
                sum += att[j];
            }
            float *oh = o + (t * d.Hq + h) * d.D;
            for (int64_t i = 0; i < d.D; i++) oh[i] = 0.0f;
            for (int64_t j = 0; j < n_keys; j++) {
                const float *vj = v + (j * d.Hkv + kvh) * d.D;
                for (int64_t i = 0; i < d.D; i++) oh[i] += att[j] / sum * vj[i];
            }
        }
    }
    free(att);
    return 0;
}

int cpu_ref_gelu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x and out are (N); 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (void)p;
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 1, &n);
    if (rc) return rc;
    const float *x = in[0]->data;
    float *o = out->data;
    const float s = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) o[i] = 0.5f * x[i] * (1.0f + tanhf(s * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
    return 0;
}

int cpu_ref_gelu_erf(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x and out are (N); 0.5 x (1 + erf(x / sqrt 2))
    (void)p;
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 1, &n);
    if (rc) return rc;
    const float *x = in[0]->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++) o[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
    return 0;
}

int cpu_ref_silu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x and out are (N); x * sigmoid(x)
    (void)p;
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 1, &n);
    if (rc) return rc;
    const float *x = in[0]->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++) o[i] = x[i] / (1.0f + expf(-x[i]));
    return 0;
}

int cpu_ref_swiglu(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // gate, up and out are (M,F); silu(gate) * up
    (void)p;
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 2, &n);
    if (rc) return rc;
    const float *gate = in[0]->data, *up = in[1]->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++) o[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    return 0;
}

int cpu_ref_add(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // a, b and out are (N)
    (void)p;
    int64_t n;
    int rc = cpu_check_elementwise(in, n_in, out, 2, &n);
    if (rc) return rc;
    const float *a = in[0]->data, *b = in[1]->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] + b[i];
    return 0;
}

int cpu_ref_softmax(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // x and out are (M,N); softmax over N, shifted by the row max for stability
    (void)p;
    cpu_rows d;
    int rc = cpu_check_softmax(in, n_in, out, &d);
    if (rc) return rc;
    const float *x = in[0]->data;
    float *o = out->data;
    for (int64_t m = 0; m < d.rows; m++) {
        const float *xm = x + m * d.cols;
        float *om = o + m * d.cols;
        float maxval = -INFINITY;
        for (int64_t i = 0; i < d.cols; i++)
            if (xm[i] > maxval) maxval = xm[i];
        float sum = 0.0f;
        for (int64_t i = 0; i < d.cols; i++) {
            om[i] = expf(xm[i] - maxval);
            sum += om[i];
        }
        for (int64_t i = 0; i < d.cols; i++) om[i] /= sum;
    }
    return 0;
}

int cpu_ref_cross_entropy(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    // logits is (T,V), targets is (T), out is (T); -log softmax(logits[t])[targets[t]]
    cpu_rows d;
    int rc = cpu_check_cross_entropy(in, n_in, out, p, &d);
    if (rc) return rc;
    int32_t ignore = ((const llmopt_op_cross_entropy *)p)->ignore_index;
    const float *logits = in[0]->data;
    const int32_t *targets = in[1]->data;
    float *o = out->data;
    for (int64_t t = 0; t < d.rows; t++) {
        if (targets[t] == ignore) {
            o[t] = 0.0f;
            continue;
        }
        const float *lt = logits + t * d.cols;
        float maxval = -INFINITY;
        for (int64_t i = 0; i < d.cols; i++)
            if (lt[i] > maxval) maxval = lt[i];
        float sum = 0.0f;
        for (int64_t i = 0; i < d.cols; i++) sum += expf(lt[i] - maxval);
        o[t] = logf(sum) - (lt[targets[t]] - maxval); /* the difference is exact near the max */
    }
    return 0;
}
