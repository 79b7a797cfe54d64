/* Refcounted tensors. The public llmopt_tensor is embedded first in a private struct that holds
 * the atomic refcount and who frees the bytes; host_private points back at that struct. */
#include "runtime.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define TENSOR_ALIGN 64 /* bytes: a cache line, and enough for AVX-512 loads */

typedef struct rt_tensor {
    llmopt_tensor pub;           /* first, so &priv->pub == priv */
    atomic_long refs;
    void (*release)(void *owner); /* wrapped tensors: called at the last unref */
    void *owner;
    int owns_data;               /* heap tensors: data came from aligned_alloc */
} rt_tensor;

static rt_tensor *priv_of(const llmopt_tensor *t) {
    return (rt_tensor *)t->host_private;
}

/* Fills everything but data/nbytes; 0 when the shape is invalid for the dtype. */
static int fill_header(llmopt_tensor *t, int dtype, int ndim, const int64_t *shape,
                       size_t *nbytes) {
    if (!rt_dtype_traits(dtype) || ndim < 0 || ndim > LLMOPT_MAX_DIMS || (ndim > 0 && !shape))
        return 0;
    int has_zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return 0;
        if (shape[i] == 0) has_zero = 1;
    }
    *nbytes = rt_dtype_nbytes(dtype, ndim, shape);
    if (*nbytes == 0 && !has_zero) return 0;  /* overflow or a partial block */
    t->struct_size = sizeof(llmopt_tensor);
    t->dtype = dtype;
    t->device = LLMOPT_DEVICE_CPU;
    t->ndim = ndim;
    for (int i = 0; i < LLMOPT_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    return 1;
}

static rt_tensor *priv_new(void) {
    rt_tensor *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    atomic_init(&p->refs, 1);
    p->pub.host_private = p;
    return p;
}

llmopt_tensor *rt_tensor_new(int dtype, int ndim, const int64_t *shape) {
    rt_tensor *p = priv_new();
    if (!p) return NULL;
    size_t nbytes = 0;
    if (!fill_header(&p->pub, dtype, ndim, shape, &nbytes)) {
        free(p);
        return NULL;
    }
    /* aligned_alloc wants a size that is a multiple of the alignment; never ask for 0 bytes,
     * so even an empty tensor has a valid data pointer. nbytes < PTRDIFF_MAX: no overflow. */
    size_t alloc = nbytes == 0 ? TENSOR_ALIGN
                               : (nbytes + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    void *data = aligned_alloc(TENSOR_ALIGN, alloc);
    if (!data) {
        free(p);
        return NULL;
    }
    memset(data, 0, alloc);
    p->pub.data = data;
    p->pub.nbytes = nbytes;
    p->owns_data = 1;
    return &p->pub;
}

llmopt_tensor *rt_tensor_wrap(int dtype, int ndim, const int64_t *shape, void *data,
                              size_t nbytes, void (*release)(void *owner), void *owner) {
    rt_tensor *p = priv_new();
    if (!p) return NULL;
    size_t want = 0;
    if (!fill_header(&p->pub, dtype, ndim, shape, &want) || want != nbytes ||
        (!data && nbytes != 0)) {
        free(p);
        return NULL;
    }
    p->pub.data = data;
    p->pub.nbytes = nbytes;
    p->release = release;
    p->owner = owner;
    return &p->pub;
}

const llmopt_tensor *rt_tensor_ref(const llmopt_tensor *t) {
    if (!t) return NULL;
    /* Relaxed is enough to take a reference: the caller already holds one. */
    atomic_fetch_add_explicit(&priv_of(t)->refs, 1, memory_order_relaxed);
    return t;
}

void rt_tensor_unref(const llmopt_tensor *t) {
    if (!t) return;
    rt_tensor *p = priv_of(t);
    /* acq_rel: every write made through other references happens before the free below. */
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) return;
    if (p->owns_data) free(p->pub.data);
    else if (p->release) p->release(p->owner);
    free(p);
}

int64_t rt_tensor_numel(const llmopt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

long rt_tensor_refcount(const llmopt_tensor *t) {
    return atomic_load_explicit(&priv_of(t)->refs, memory_order_acquire);
}

/* bf16 is the top half of an f32: widening is exact. */
static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

int rt_tensor_read_f32(const llmopt_tensor *t, float *dst) {
    int64_t n = rt_tensor_numel(t);
    const uint16_t *h = t->data;
    if (t->dtype == LLMOPT_DTYPE_F32) memcpy(dst, t->data, (size_t)n * sizeof(float));
    else if (t->dtype == LLMOPT_DTYPE_F16)
        for (int64_t i = 0; i < n; i++) dst[i] = q_f16_to_f32(h[i]);
    else if (t->dtype == LLMOPT_DTYPE_BF16)
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
    else return LLMOPT_EINVAL;
    return 0;
}

llmopt_tensor *rt_tensor_f32_copy(const llmopt_tensor *t) {
    if (t->dtype != LLMOPT_DTYPE_F32 && t->dtype != LLMOPT_DTYPE_F16 && t->dtype != LLMOPT_DTYPE_BF16) return NULL;
    llmopt_tensor *c = rt_tensor_new(LLMOPT_DTYPE_F32, t->ndim, t->shape);
    if (c) rt_tensor_read_f32(t, c->data);
    return c;
}
