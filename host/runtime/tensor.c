/* Refcounted tensors. The public llmopt_tensor is embedded first in a private struct that holds
 * the atomic refcount and who frees the bytes (the heap, a wrapped owner, or a device plugin's
 * memory ops); host_private points back at that struct. Also the byte copies between devices. */
#include "runtime.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mapping.h"
#include "quant.h"

#define TENSOR_ALIGN 64 /* bytes: a cache line, and enough for AVX-512 loads */

typedef struct rt_tensor {
    llmopt_tensor pub;           /* first, so &priv->pub == priv */
    atomic_long refs;
    void (*release)(void *owner); /* wrapped tensors: called at the last unref */
    void *owner;
    int owns_data;               /* heap tensors: data came from aligned_alloc */
    const llmopt_device_ops *dev; /* device tensors: data came from dev->alloc */
} rt_tensor;

const char *rt_device_name(int device) {
    switch (device) {
    case LLMOPT_DEVICE_CPU: return "cpu";
    case LLMOPT_DEVICE_CUDA: return "cuda";
    case LLMOPT_DEVICE_TEST: return "test";
    default: return "?";
    }
}

int rt_device_from_name(const char *name) {
    for (int d = 0; name && d < LLMOPT_DEVICE_COUNT; d++)
        if (strcmp(rt_device_name(d), name) == 0) return d;
    return -1;
}

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

llmopt_tensor *rt_tensor_new_on(const llmopt_device_ops *dev, int dtype, int ndim, const int64_t *shape) {
    if (!dev) return rt_tensor_new(dtype, ndim, shape);
    rt_tensor *p = priv_new();
    if (!p) return NULL;
    size_t nbytes = 0;
    void *data = NULL;
    /* never 0 bytes (the contract's alloc wants bytes > 0), as for heap tensors */
    if (!fill_header(&p->pub, dtype, ndim, shape, &nbytes) ||
        dev->alloc(dev->ctx, nbytes ? nbytes : TENSOR_ALIGN, TENSOR_ALIGN, &data) != 0 || !data) {
        free(p);
        return NULL;
    }
    p->pub.device = dev->device;
    p->pub.data = data;
    p->pub.nbytes = nbytes;
    p->dev = dev;
    return &p->pub;
}

const llmopt_device_ops *rt_tensor_device_ops(const llmopt_tensor *t) {
    return t && t->host_private ? priv_of(t)->dev : NULL;
}

int rt_copy_bytes(const llmopt_device_ops *dst_dev, void *dst, const llmopt_device_ops *src_dev,
                  const void *src, size_t n) {
    if (n == 0) return 0;
    if (!dst || !src) return LLMOPT_EINVAL;
    if (!dst_dev && !src_dev) {
        memcpy(dst, src, n);
        return 0;
    }
    if (!src_dev) return dst_dev->copy_h2d(dst_dev->ctx, dst, src, n);
    if (!dst_dev) return src_dev->copy_d2h(src_dev->ctx, dst, src, n);
    if (dst_dev == src_dev) return dst_dev->copy_d2d(dst_dev->ctx, dst, src, n);
    /* two accelerators: through host memory (no peer copies in the contract yet) */
    void *tmp = malloc(n);
    if (!tmp) return LLMOPT_ENOMEM;
    int rc = src_dev->copy_d2h(src_dev->ctx, tmp, src, n);
    if (rc == 0) rc = dst_dev->copy_h2d(dst_dev->ctx, dst, tmp, n);
    free(tmp);
    return rc;
}

int rt_tensor_copy(llmopt_tensor *dst, const llmopt_tensor *src, llmopt_error *err) {
    if (!dst || !src) return error_set(err, LLMOPT_EINVAL, "tensor copy: a tensor is NULL");
    if (dst->dtype != src->dtype || dst->ndim != src->ndim || dst->nbytes != src->nbytes)
        return error_set(err, LLMOPT_EINVAL, "tensor copy: dtype, rank or size differ (%d/%d dims, %zu/%zu bytes)",
                         (int)src->ndim, (int)dst->ndim, src->nbytes, dst->nbytes);
    for (int i = 0; i < dst->ndim; i++)
        if (dst->shape[i] != src->shape[i])
            return error_set(err, LLMOPT_EINVAL, "tensor copy: dim %d is %lld in the source, %lld in the destination", i,
                             (long long)src->shape[i], (long long)dst->shape[i]);
    const llmopt_device_ops *dd = rt_tensor_device_ops(dst), *sd = rt_tensor_device_ops(src);
    if ((dst->device != LLMOPT_DEVICE_CPU && !dd) || (src->device != LLMOPT_DEVICE_CPU && !sd))
        return error_set(err, LLMOPT_EINVAL, "tensor copy: a device %d tensor the host did not allocate (no memory ops)",
                         dst->device != LLMOPT_DEVICE_CPU && !dd ? (int)dst->device : (int)src->device);
    int rc = rt_copy_bytes(dd, dst->data, sd, src->data, src->nbytes);
    if (rc != 0)
        return error_set(err, rc, "tensor copy of %zu bytes from device %d to device %d failed: %s", src->nbytes,
                         (int)src->device, (int)dst->device, status_str(rc));
    return 0;
}

int rt_tensor_to(const llmopt_tensor *t, const llmopt_device_ops *dev, llmopt_tensor **out, llmopt_error *err) {
    *out = NULL;
    if (!t) return error_set(err, LLMOPT_EINVAL, "tensor copy: the tensor is NULL");
    if (t->device == (dev ? dev->device : LLMOPT_DEVICE_CPU) && rt_tensor_device_ops(t) == dev) {
        *out = (llmopt_tensor *)rt_tensor_ref(t); /* already there: no copy */
        return 0;
    }
    llmopt_tensor *c = rt_tensor_new_on(dev, t->dtype, t->ndim, t->shape);
    if (!c)
        return error_set(err, LLMOPT_ENOMEM, "out of memory for %zu bytes on %s", t->nbytes, dev ? dev->name : "the host");
    int rc = rt_tensor_copy(c, t, err);
    if (rc != 0) {
        rt_tensor_unref(c);
        return rc;
    }
    *out = c;
    return 0;
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
    else if (p->dev) p->dev->free(p->dev->ctx, p->pub.data);
    else if (p->release) p->release(p->owner);
    free(p);
}

void rt_tensor_evict(const llmopt_tensor *t) {
    const rt_tensor *p = t ? priv_of(t) : NULL;
    if (p && p->release == rt_mapping_unref) rt_mapping_evict(p->owner, p->pub.data, p->pub.nbytes);
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
    if (t->device != LLMOPT_DEVICE_CPU) return LLMOPT_EINVAL; /* not host-readable */
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
    if (t->device != LLMOPT_DEVICE_CPU) return NULL;
    if (t->dtype != LLMOPT_DTYPE_F32 && t->dtype != LLMOPT_DTYPE_F16 && t->dtype != LLMOPT_DTYPE_BF16) return NULL;
    llmopt_tensor *c = rt_tensor_new(LLMOPT_DTYPE_F32, t->ndim, t->shape);
    if (c) rt_tensor_read_f32(t, c->data);
    return c;
}
