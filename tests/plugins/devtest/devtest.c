/* Test device plugin (built for tests only, never installed): registers memory ops for
 * LLMOPT_DEVICE_TEST backed by host memory behind its own allocator, and forward kernels for that
 * device that run the CPU plugin's kernels (found through kernel_find at call time) after
 * checking that every tensor is a device tensor lying inside one of its live allocations, so a
 * copy the host forgot fails loudly instead of working by accident. The memory is mmap'd pages
 * kept PROT_NONE except while one of the plugin's own calls runs, so the host touching device
 * memory directly (a memcpy where a device copy belongs) faults, as it would on a GPU.
 * memory_info reports the bytes in use against a limit (LLMOPT_DEVTEST_LIMIT bytes, default
 * 256 MiB), so tests see leaks and a full device. Built with DEVTEST_BAD=<field> it registers a
 * malformed descriptor (that field NULL) for the registration tests; with DEVTEST_SKIP_OP="op"
 * it leaves that op's kernel out. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <llmopt/llmopt.h>

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PLUGIN_ID
#define PLUGIN_ID "devtest"
#endif

static const llmopt_host_api *g_api;

/* ---- the allocator: a table of live blocks ---- */

typedef struct block {
    char *p;
    size_t n;      /* bytes asked for */
    size_t mapped; /* whole pages */
} block;

typedef struct dev_state {
    pthread_mutex_t lock;
    block *blocks;
    size_t n_blocks, cap;
    size_t used, limit;
    int open;      /* plugin calls running: while > 0 the blocks are readable and writable */
} dev_state;

static dev_state g_dev = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Index of the live block holding [p, p+n), or -1. Called with the lock held. */
static long find_block(const void *p, size_t n) {
    const char *c = p;
    for (size_t i = 0; i < g_dev.n_blocks; i++) {
        const block *b = &g_dev.blocks[i];
        if (c >= b->p && c <= b->p + b->n && n <= (size_t)(b->p + b->n - c)) return (long)i;
    }
    return -1;
}

/* The device memory is host-accessible only between enter and leave (nested and concurrent
 * calls count). */
static void protect_all(int prot) {
    for (size_t i = 0; i < g_dev.n_blocks; i++) mprotect(g_dev.blocks[i].p, g_dev.blocks[i].mapped, prot);
}

static void enter(void) {
    pthread_mutex_lock(&g_dev.lock);
    if (g_dev.open++ == 0) protect_all(PROT_READ | PROT_WRITE);
    pthread_mutex_unlock(&g_dev.lock);
}

static void leave(void) {
    pthread_mutex_lock(&g_dev.lock);
    if (--g_dev.open == 0) protect_all(PROT_NONE);
    pthread_mutex_unlock(&g_dev.lock);
}

static int is_device(const void *p, size_t n) {
    pthread_mutex_lock(&g_dev.lock);
    long i = find_block(p, n);
    pthread_mutex_unlock(&g_dev.lock);
    return i >= 0;
}

static int dev_alloc(void *ctx, size_t bytes, size_t align, void **out) {
    (void)ctx;
    *out = NULL;
    if (bytes == 0 || align == 0 || (align & (align - 1)) != 0) {
        g_api->log(LLMOPT_LOG_ERROR, "devtest: alloc(%zu bytes, align %zu): bad arguments", bytes, align);
        return LLMOPT_EINVAL;
    }
    pthread_mutex_lock(&g_dev.lock);
    int rc = LLMOPT_ENOMEM;
    if (bytes <= g_dev.limit - g_dev.used) {
        if (g_dev.n_blocks == g_dev.cap) {
            size_t cap = g_dev.cap ? 2 * g_dev.cap : 64;
            block *grown = realloc(g_dev.blocks, cap * sizeof *grown);
            if (grown) g_dev.blocks = grown, g_dev.cap = cap;
        }
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t mapped = (bytes + page - 1) / page * page;
        char *p = NULL;
        if (align <= page && g_dev.n_blocks < g_dev.cap) {
            p = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) p = NULL;
        }
        if (p) {
            memset(p, 0xff, mapped); /* NaN everywhere: a read before a write shows */
            if (g_dev.open == 0) mprotect(p, mapped, PROT_NONE);
            g_dev.blocks[g_dev.n_blocks++] = (block){p, bytes, mapped};
            g_dev.used += bytes;
            *out = p;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&g_dev.lock);
    return rc;
}

static void dev_free(void *ctx, void *ptr) {
    (void)ctx;
    if (!ptr) return;
    pthread_mutex_lock(&g_dev.lock);
    long i = -1;
    size_t mapped = 0;
    for (size_t j = 0; j < g_dev.n_blocks; j++)
        if (g_dev.blocks[j].p == ptr) i = (long)j;
    if (i >= 0) {
        g_dev.used -= g_dev.blocks[i].n;
        mapped = g_dev.blocks[i].mapped;
        g_dev.blocks[i] = g_dev.blocks[--g_dev.n_blocks];
    }
    pthread_mutex_unlock(&g_dev.lock);
    if (i < 0) {
        /* not ours: a host bug; leaking beats freeing what someone else owns */
        g_api->log(LLMOPT_LOG_ERROR, "devtest: free(%p): not an allocation of this device", ptr);
        return;
    }
    munmap(ptr, mapped);
}

static int check_copy(const char *what, const void *dev, const void *host, size_t n) {
    if (!is_device(dev, n)) {
        g_api->log(LLMOPT_LOG_ERROR, "devtest: %s of %zu bytes: %p is not memory of this device", what, n, dev);
        return LLMOPT_EINVAL;
    }
    if (host && is_device(host, 1)) {
        g_api->log(LLMOPT_LOG_ERROR, "devtest: %s of %zu bytes: host side %p is device memory", what, n, host);
        return LLMOPT_EINVAL;
    }
    return 0;
}

static int dev_h2d(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    int rc = check_copy("copy_h2d", dst, src, n);
    if (rc == 0) enter(), memcpy(dst, src, n), leave();
    return rc;
}

static int dev_d2h(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    int rc = check_copy("copy_d2h", src, dst, n);
    if (rc == 0) enter(), memcpy(dst, src, n), leave();
    return rc;
}

static int dev_d2d(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    int rc = check_copy("copy_d2d", dst, NULL, n);
    if (rc == 0) rc = check_copy("copy_d2d", src, NULL, n);
    if (rc == 0) enter(), memmove(dst, src, n), leave();
    return rc;
}

static int dev_sync(void *ctx) {
    (void)ctx;
    return 0; /* every call completes before it returns */
}

static int dev_memory_info(void *ctx, size_t *free_bytes, size_t *total_bytes) {
    (void)ctx;
    pthread_mutex_lock(&g_dev.lock);
    *free_bytes = g_dev.limit - g_dev.used;
    *total_bytes = g_dev.limit;
    pthread_mutex_unlock(&g_dev.lock);
    return 0;
}

static llmopt_device_ops g_ops = {
    .struct_size = sizeof(llmopt_device_ops),
    .device = LLMOPT_DEVICE_TEST,
    .name = "test:0 (host memory)",
    .ctx = &g_dev,
    .alloc = dev_alloc,
    .free = dev_free,
    .copy_h2d = dev_h2d,
    .copy_d2h = dev_d2h,
    .copy_d2d = dev_d2d,
    .synchronize = dev_sync,
    .memory_info = dev_memory_info,
};

/* ---- kernels: the CPU plugin's, on tensors checked to be ours ---- */

#define MAX_IN 8

/* Runs the CPU kernel for op (its key dtype: in[key]'s, or f32 when key < 0) over CPU views
 * of the tensors, after refusing any that is not a TEST tensor inside a live allocation. */
static int forward(const char *op, int key, const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                   const void *params) {
    if (!in || !out || n_in < 0 || n_in > MAX_IN || (key >= 0 && (key >= n_in || !in[key]))) return LLMOPT_EINVAL;
    llmopt_tensor views[MAX_IN + 1];
    const llmopt_tensor *vin[MAX_IN];
    for (int i = 0; i <= n_in; i++) {
        const llmopt_tensor *t = i < n_in ? in[i] : out;
        if (i < n_in && !t) {
            vin[i] = NULL; /* an optional input left out; the CPU kernel decides */
            continue;
        }
        if (t->device != LLMOPT_DEVICE_TEST || !t->data || !is_device(t->data, t->nbytes)) {
            g_api->log(LLMOPT_LOG_ERROR, "devtest: %s: %s %d is not a tensor of this device (device %d, data %p)", op,
                       i < n_in ? "input" : "output", i < n_in ? i : 0, (int)t->device, t->data);
            return LLMOPT_EINVAL;
        }
        views[i] = *t;
        views[i].device = LLMOPT_DEVICE_CPU; /* the bytes are host memory: the CPU kernel may read them */
        if (i < n_in) vin[i] = &views[i];
    }
    int dtype = key >= 0 ? in[key]->dtype : LLMOPT_DTYPE_F32;
    const llmopt_kernel_desc *k = g_api->kernel_find(op, LLMOPT_DEVICE_CPU, dtype);
    if (!k) {
        g_api->log(LLMOPT_LOG_ERROR, "devtest: %s: no cpu kernel to run (load the cpu plugin)", op);
        return LLMOPT_EUNSUPPORTED;
    }
    enter();
    int rc = k->fn(vin, n_in, &views[n_in], params);
    leave();
    return rc;
}

#define KERNEL(name, op, key)                                                                              \
    static int k_##name(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *params) { \
        return forward(op, key, in, n_in, out, params);                                                    \
    }
KERNEL(matmul, LLMOPT_OP_MATMUL, 1)
KERNEL(embedding, LLMOPT_OP_EMBEDDING, 0)
KERNEL(layernorm, LLMOPT_OP_LAYERNORM, -1)
KERNEL(rmsnorm, LLMOPT_OP_RMSNORM, -1)
KERNEL(rope, LLMOPT_OP_ROPE, -1)
KERNEL(attention, LLMOPT_OP_ATTENTION, -1)
KERNEL(gelu, LLMOPT_OP_GELU, -1)
KERNEL(gelu_erf, LLMOPT_OP_GELU_ERF, -1)
KERNEL(silu, LLMOPT_OP_SILU, -1)
KERNEL(swiglu, LLMOPT_OP_SWIGLU, -1)
KERNEL(add, LLMOPT_OP_ADD, -1)
KERNEL(softmax, LLMOPT_OP_SOFTMAX, -1)

static const struct {
    const char *op;
    llmopt_kernel_fn fn;
} g_kernels[] = {
    {LLMOPT_OP_MATMUL, k_matmul}, {LLMOPT_OP_EMBEDDING, k_embedding}, {LLMOPT_OP_LAYERNORM, k_layernorm},
    {LLMOPT_OP_RMSNORM, k_rmsnorm}, {LLMOPT_OP_ROPE, k_rope},         {LLMOPT_OP_ATTENTION, k_attention},
    {LLMOPT_OP_GELU, k_gelu},       {LLMOPT_OP_GELU_ERF, k_gelu_erf}, {LLMOPT_OP_SILU, k_silu},
    {LLMOPT_OP_SWIGLU, k_swiglu},   {LLMOPT_OP_ADD, k_add},           {LLMOPT_OP_SOFTMAX, k_softmax},
};

static int devtest_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    g_api = api;
    if (api->struct_size < offsetof(llmopt_host_api, tensor_copy) + sizeof api->tensor_copy ||
        reg->struct_size < offsetof(llmopt_registrar, add_device) + sizeof reg->add_device) {
        reg->set_error(reg, "this host has no device memory API");
        return LLMOPT_EUNSUPPORTED;
    }
    const char *limit = getenv("LLMOPT_DEVTEST_LIMIT");
    g_dev.limit = limit && *limit ? (size_t)strtoull(limit, NULL, 10) : (size_t)256 << 20;
    llmopt_device_ops ops = g_ops;
#ifdef DEVTEST_BAD
    ops.DEVTEST_BAD = NULL;
#endif
    /* the registry copies the descriptor; ctx and the functions stay valid until shutdown */
    int rc = reg->add_device(reg, &ops);
    if (rc) return rc;
    for (size_t i = 0; i < sizeof g_kernels / sizeof g_kernels[0]; i++) {
#ifdef DEVTEST_SKIP_OP
        if (strcmp(g_kernels[i].op, DEVTEST_SKIP_OP) == 0) continue;
#endif
        llmopt_kernel_desc k = {.struct_size = sizeof k, .device = LLMOPT_DEVICE_TEST, .op = g_kernels[i].op,
                                .dtype = LLMOPT_DTYPE_ANY, .fn = g_kernels[i].fn,
                                .summary = "cpu kernel on checked test-device memory"};
        if ((rc = reg->add_kernel(reg, &k))) return rc;
    }
    return 0;
}

/* Live allocations at shutdown are the host's leaks: reported on stderr (the tests also check
 * memory_info's bytes in use after every test). */
static void devtest_shutdown(void) {
    pthread_mutex_lock(&g_dev.lock);
    if (g_dev.n_blocks)
        fprintf(stderr, "devtest: %zu allocations (%zu bytes) still live at shutdown\n", g_dev.n_blocks, g_dev.used);
    free(g_dev.blocks);
    g_dev.blocks = NULL;
    g_dev.n_blocks = g_dev.cap = g_dev.used = 0;
    pthread_mutex_unlock(&g_dev.lock);
}

LLMOPT_PLUGIN(.id = PLUGIN_ID, .version = "0.1.0", .license = "MIT",
              .summary = "test device: host memory behind its own allocator, cpu kernels on checked tensors",
              .init = devtest_init, .shutdown = devtest_shutdown);
