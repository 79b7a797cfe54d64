/* adamw_8bit (llmopt/kernel_ops.h): AdamW with block-wise 8-bit moments (Dettmers et al. 2022).
 * The reference and the fast kernel share the update of a block (adamw's operations in its
 * order, on the dequantized moments) and differ only in how a value finds its map entry: a
 * binary search over the midpoints in the reference, a table on the value's float bits and one
 * comparison in the fast one (cpu_simd.a8_codes, or on AVX-512 the whole block in one pass,
 * cpu_simd.a8_block). Both give the same byte, hence the same bits. update() is generic_adamw's
 * loop again (fast.c), here so that the reference links without the fast kernels. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "backward.h"
#include "cpu.h"

#define BLOCK LLMOPT_ADAMW8_BLOCK

static void maps_make(cpu_adamw8_maps *m) {
    for (int s = 0; s < 2; s++) {
        llmopt_adamw8_map(s == 0, m->code[s]);
        for (int k = 0; k < 255; k++) m->mid[s][k] = (m->code[s][k] + m->code[s][k + 1]) * 0.5f;
    }
}

/* the byte of x: how many midpoints are <= x */
static uint8_t code_search(const float *mid, float x) {
    int lo = 0, hi = 255; /* the answer is in [lo, hi] */
    while (lo < hi) {
        int k = (lo + hi) / 2;
        if (mid[k] <= x) lo = k + 1;
        else hi = k;
    }
    return (uint8_t)lo;
}

/* ---- the fast lookup ---- */

/* A cell is the floats that share their top 17 bits (sign, exponent, 8 bits of mantissa): 1/256
 * of a binade, narrower than the gap between any two midpoints of either map (the narrowest,
 * 0.9/128 of a decade's top, is 1/142 of it). So the byte of x is that of its cell's edge nearest
 * 0, or one step away from it (up for x >= 0, down for x < 0), and one comparison with the
 * midpoint of that step tells which: byte = base[cell] + (thr[cell] <= x), with base the edge's
 * byte (less one below 0) and thr that midpoint. tables_make checks the one-step claim for every
 * cell of |x| <= 1 and falls back to the search if it ever failed. The lookup is
 * cpu_simd.a8_codes; the cells between 1 and the negative floats are never read or written. */
#define CELLS ((0x3f800000u >> 15) + 1) /* cells of 0 <= x <= 1 */
#define NEG 0x10000u                    /* the first cell of the negative floats */
static cpu_adamw8_maps g_maps;
static int32_t g_base[2][NEG + CELLS]; /* [signed, unsigned][the top 17 bits of x] */
static float g_thr[2][NEG + CELLS];
static int g_search_only;
static cpu_a8_tables g_tables;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static float bits_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void tables_make(void) {
    maps_make(&g_maps);
    for (int s = 0; s < 2; s++) {
        const float *mid = g_maps.mid[s];
        for (uint32_t c = 0; c < CELLS; c++) {
            float lo = bits_f32(c << 15), hi = c + 1 < CELLS ? bits_f32((c << 15) | 0x7fffu) : lo;
            int gp = code_search(mid, lo), gn = code_search(mid, -lo);
            g_base[s][c] = gp, g_thr[s][c] = gp < 255 ? mid[gp] : INFINITY;
            g_base[s][NEG + c] = gn - 1, g_thr[s][NEG + c] = gn > 0 ? mid[gn - 1] : -INFINITY;
            if (code_search(mid, hi) > gp + 1 || code_search(mid, -hi) + 1 < gn) g_search_only = 1;
        }
        g_tables.code[s] = g_maps.code[s], g_tables.base[s] = g_base[s], g_tables.thr[s] = g_thr[s];
    }
    g_tables.cells = CELLS;
}

/* ---- the update ---- */

/* adamw's update of n values on dequantized moments, in its order; the moments come back updated.
 * restrict and constants in locals, so that it vectorizes. */
static void update(const float *restrict grad, float *restrict param, float *restrict nm, float *restrict nv,
                   int64_t n, const cpu_adamw8_job *j) {
    const float b1 = j->b1, b2 = j->b2, b1c = 1.0f - j->b1, b2c = 1.0f - j->b2, scale = j->grad_scale;
    const float decay = j->decay, step_size = j->step_size, bc2 = j->bc2_sqrt, eps = j->eps;
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] * scale;
        float m = b1 * nm[i] + b1c * g;
        float v = b2 * nv[i] + b2c * g * g;
        float p = param[i] * decay;
        param[i] = p - step_size * m / (sqrtf(v) / bc2 + eps);
        nm[i] = m, nv[i] = v;
    }
}

/* the largest |nm| and nv, in lanes so that it vectorizes */
static void absmax2(const float *restrict nm, const float *restrict nv, int64_t n, float *mmax, float *vmax) {
    float lm[8] = {0}, lv[8] = {0};
    int64_t n8 = n & ~(int64_t)7;
    for (int64_t i = 0; i < n8; i += 8)
        for (int k = 0; k < 8; k++) {
            float a = fabsf(nm[i + k]), b = nv[i + k];
            lm[k] = a > lm[k] ? a : lm[k], lv[k] = b > lv[k] ? b : lv[k];
        }
    for (int64_t i = n8; i < n; i++) {
        float a = fabsf(nm[i]), b = nv[i];
        lm[0] = a > lm[0] ? a : lm[0], lv[0] = b > lv[0] ? b : lv[0];
    }
    float a = 0.0f, b = 0.0f;
    for (int k = 0; k < 8; k++) a = lm[k] > a ? lm[k] : a, b = lv[k] > b ? lv[k] : b;
    *mmax = a, *vmax = b;
}

void cpu_adamw8_blocks(void *arg, int64_t b0, int64_t b1) {
    const cpu_adamw8_job *j = arg;
    const float *sm = j->maps->code[0], *um = j->maps->code[1];
    float nm[BLOCK], nv[BLOCK];
    int fast = j->fast && !g_search_only;
    cpu_adamw_k k = {j->b1, j->b2, j->eps, j->decay, j->step_size, j->bc2_sqrt, j->grad_scale};
    for (int64_t b = b0; b < b1; b++) {
        int64_t i0 = b * BLOCK, len = j->n - i0 < BLOCK ? j->n - i0 : BLOCK;
        uint8_t *mc = j->m + i0, *vc = j->v + i0;
        if (fast && j->block) {
            j->block(&k, &g_tables, j->grad + i0, j->param + i0, mc, vc, j->m_absmax + b, j->v_absmax + b, len);
            continue;
        }
        float am = j->m_absmax[b], av = j->v_absmax[b], mmax, vmax;
        for (int64_t i = 0; i < len; i++) nm[i] = sm[mc[i]] * am, nv[i] = um[vc[i]] * av;
        if (j->fast) j->adamw(&k, j->grad + i0, j->param + i0, nm, nv, len);
        else update(j->grad + i0, j->param + i0, nm, nv, len, j);
        absmax2(nm, nv, len, &mmax, &vmax);
        j->m_absmax[b] = mmax, j->v_absmax[b] = vmax;
        float dm = mmax > 0.0f ? mmax : 1.0f, dv = vmax > 0.0f ? vmax : 1.0f; /* all zero: x is 0 */
        for (int64_t i = 0; i < len; i++) nm[i] /= dm, nv[i] /= dv;
        if (fast) {
            j->codes(g_base[0], g_thr[0], CELLS, nm, mc, len);
            j->codes(g_base[1], g_thr[1], CELLS, nv, vc, len);
        } else
            for (int64_t i = 0; i < len; i++)
                mc[i] = code_search(j->maps->mid[0], nm[i]), vc[i] = code_search(j->maps->mid[1], nv[i]);
        /* a v above 0 never becomes 0 (kernel_ops.h) */
        for (int64_t i = 0; i < len; i++) vc[i] = (uint8_t)(vc[i] + (vc[i] == 0 && nv[i] > 0.0f));
    }
}

int cpu_adamw8_job_init(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p, int fast,
                        cpu_adamw8_job *j) {
    int64_t n;
    int rc = cpu_check_adamw_8bit(in, n_in, out, p, &n);
    if (rc) return rc;
    const llmopt_op_adamw_8bit *a = p;
    *j = (cpu_adamw8_job){.grad = in[0]->data, .param = out->data, .m = a->m->data, .v = a->v->data,
                          .m_absmax = a->m_absmax->data, .v_absmax = a->v_absmax->data, .n = n,
                          .blocks = (n + BLOCK - 1) / BLOCK, .b1 = a->beta1, .b2 = a->beta2, .eps = a->eps,
                          .decay = 1.0f - a->lr * a->weight_decay,
                          .step_size = a->lr / (float)(1.0 - pow((double)a->beta1, a->step)),
                          .bc2_sqrt = (float)sqrt(1.0 - pow((double)a->beta2, a->step)),
                          .grad_scale = a->grad_scale, .fast = fast};
    if (fast) pthread_once(&g_once, tables_make), j->maps = &g_maps;
    else maps_make(&j->local), j->maps = &j->local;
    return 0;
}

int cpu_ref_adamw_8bit(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p) {
    cpu_adamw8_job j;
    int rc = cpu_adamw8_job_init(in, n_in, out, p, 0, &j);
    if (!rc) cpu_adamw8_blocks(&j, 0, j.blocks);
    return rc;
}
