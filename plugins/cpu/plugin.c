/* The "cpu" kernel plugin: registers every op of llmopt/kernel_ops.h for LLMOPT_DEVICE_CPU.
 * One plugin that dispatches at run time: init detects AVX-512F, else AVX2+FMA+F16C, else the
 * portable path, picks the SIMD table and registers the fast kernels; LLMOPT_CPU_FORCE
 * (ref|generic|avx2|avx512) overrides the choice (ref registers the reference loops). */
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include "backward.h"
#include "nf4.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const llmopt_host_api *cpu_api;
const cpu_simd *cpu_isa = &cpu_simd_generic;
const cpu_qsimd *cpu_qisa = &cpu_qsimd_generic;
int cpu_use_bf16_gemm;

typedef enum cpu_path { PATH_REF, PATH_GENERIC, PATH_AVX2, PATH_AVX512, PATH_COUNT } cpu_path;

static const char *const path_name[PATH_COUNT] = {"ref", "generic", "avx2", "avx512"};
static const char *const path_label[PATH_COUNT] = {"reference loops", "portable C", "AVX2+FMA",
                                                   "AVX-512F"};

/* The descriptor is constant data; its summary points here and init writes the chosen path. */
static char g_summary[160] = "CPU kernels for every op (OpenBLAS + SIMD, path chosen at init)";

/* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c". */
static int has_f16c(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
#else
    return 0;
#endif
}

static int cpu_has(cpu_path p) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (p == PATH_AVX512) return __builtin_cpu_supports("avx512f") != 0;
    if (p == PATH_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
#endif
    return p == PATH_REF || p == PATH_GENERIC;
}

/* The integer dot products of the quantized kernels: VNNI on the AVX-512 path when the CPU has
 * it (with BW and VL), else AVX2 maddubs on either SIMD path. */
static const cpu_qsimd *pick_qsimd(cpu_path p) {
#if defined(__x86_64__) || defined(__i386__)
    if (p == PATH_AVX512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        return &cpu_qsimd_avx512vnni;
#endif
    return p == PATH_AVX512 || p == PATH_AVX2 ? &cpu_qsimd_avx2 : &cpu_qsimd_generic;
}

/* The quantized weight dtypes with matmul and embedding kernels: ggml's three, and every GQ
 * (bits, group, asym) through one any-group key per bits and asym (int8 per output channel is
 * GQ(8, K, 0), a group per row length K). */
static const int quant_dtypes[] = {
    LLMOPT_DTYPE_Q8_0, LLMOPT_DTYPE_Q4_0, LLMOPT_DTYPE_Q4_1,
    LLMOPT_DTYPE_GQ_ANY_GROUP(8, 0), LLMOPT_DTYPE_GQ_ANY_GROUP(8, 1), LLMOPT_DTYPE_GQ_ANY_GROUP(4, 0),
    LLMOPT_DTYPE_GQ_ANY_GROUP(4, 1), LLMOPT_DTYPE_GQ_ANY_GROUP(3, 0), LLMOPT_DTYPE_GQ_ANY_GROUP(3, 1),
    LLMOPT_DTYPE_GQ_ANY_GROUP(2, 0), LLMOPT_DTYPE_GQ_ANY_GROUP(2, 1),
};
#define N_QUANT (sizeof quant_dtypes / sizeof quant_dtypes[0])

static char g_qsummary[3][160];

/* matmul, embedding and (dx only, the weight frozen) matmul_backward for every quantized dtype
 * (the registry accepts any dtype that has traits, group-quantized ones included). */
static int register_quant(llmopt_registrar *reg, cpu_path path) {
    if (path == PATH_REF) {
        snprintf(g_qsummary[0], sizeof g_qsummary[0], "reference loops, one thread");
        snprintf(g_qsummary[1], sizeof g_qsummary[1], "reference loops, one thread");
        snprintf(g_qsummary[2], sizeof g_qsummary[2], "reference loops, one thread");
    } else {
        /* [0]: prefill in the integer GEMM; [2]: in dequantized tiles */
        snprintf(g_qsummary[0], sizeof g_qsummary[0],
                 "%s int8 dot (x quantized per 32) for M<=4, else int8 GEMM (x quantized per 32)", cpu_qisa->name);
        snprintf(g_qsummary[1], sizeof g_qsummary[1], "%s dequantized rows", cpu_qisa->name);
        snprintf(g_qsummary[2], sizeof g_qsummary[2],
                 "%s int8 dot (x quantized per 32) for M<=4, else dequantized tiles + OpenBLAS sgemm", cpu_qisa->name);
    }
    for (size_t i = 0; i < N_QUANT; i++) {
        llmopt_kernel_desc k[3] = {
            {.struct_size = sizeof k[0], .device = LLMOPT_DEVICE_CPU, .op = LLMOPT_OP_MATMUL,
             .dtype = quant_dtypes[i], .fn = path == PATH_REF ? cpu_ref_qmatmul : cpu_qmatmul,
             .summary = g_qsummary[path != PATH_REF && !cpu_q_gemm_takes(quant_dtypes[i]) ? 2 : 0]},
            {.struct_size = sizeof k[1], .device = LLMOPT_DEVICE_CPU, .op = LLMOPT_OP_EMBEDDING,
             .dtype = quant_dtypes[i], .fn = path == PATH_REF ? cpu_ref_qembedding : cpu_qembedding,
             .summary = g_qsummary[1]},
            {.struct_size = sizeof k[2], .device = LLMOPT_DEVICE_CPU, .op = LLMOPT_OP_MATMUL_BACKWARD,
             .dtype = quant_dtypes[i], .fn = path == PATH_REF ? cpu_ref_qmatmul_backward : cpu_qmatmul_backward,
             .summary = path == PATH_REF ? "dx only (frozen W), reference loops"
                                         : "dx only (frozen W): dequantized column blocks of W + OpenBLAS sgemm"}};
        for (int o = 0; o < 3; o++) {
            int rc = reg->add_kernel(reg, &k[o]);
            if (rc) {
                reg->set_error(reg, "registering %s kernel for dtype %d failed (%d)", k[o].op, quant_dtypes[i], rc);
                return rc;
            }
        }
    }
    return cpu_register_nf4(reg, path == PATH_REF);
}

/* What each op's fast path does; %s is the instruction set's label. */
typedef struct op_entry {
    const char *op;
    int dtype;
    llmopt_kernel_fn fast, ref;
    const char *how;
} op_entry;

static const op_entry ops[] = {
    {LLMOPT_OP_MATMUL, LLMOPT_DTYPE_F32, cpu_matmul, cpu_ref_matmul,
     "%s dot gemv or split-K sgemv for M=1, else OpenBLAS sgemm; column blocks on host threads"},
    {LLMOPT_OP_MATMUL, LLMOPT_DTYPE_F16, cpu_matmul, cpu_ref_matmul,
     "%s f16 dot / split-K axpy widened in registers for M=1, else f16->f32 tiles + OpenBLAS sgemm"},
    {LLMOPT_OP_MATMUL, LLMOPT_DTYPE_BF16, cpu_matmul, cpu_ref_matmul,
     "%s bf16 dot / split-K axpy widened in registers for M=1, else bf16->f32 tiles + OpenBLAS sgemm"},
    {LLMOPT_OP_EMBEDDING, LLMOPT_DTYPE_F32, cpu_embedding, cpu_ref_embedding, "%s row copy"},
    {LLMOPT_OP_EMBEDDING, LLMOPT_DTYPE_F16, cpu_embedding, cpu_ref_embedding, "%s f16->f32 rows"},
    {LLMOPT_OP_EMBEDDING, LLMOPT_DTYPE_BF16, cpu_embedding, cpu_ref_embedding, "%s bf16->f32 rows"},
    {LLMOPT_OP_LAYERNORM, LLMOPT_DTYPE_F32, cpu_layernorm, cpu_ref_layernorm, "%s, rows on host threads"},
    {LLMOPT_OP_RMSNORM, LLMOPT_DTYPE_F32, cpu_rmsnorm, cpu_ref_rmsnorm, "%s dot, rows on host threads"},
    {LLMOPT_OP_ROPE, LLMOPT_DTYPE_F32, cpu_rope, cpu_ref_rope, "%s, rows on host threads"},
    {LLMOPT_OP_ATTENTION, LLMOPT_DTYPE_F32, cpu_attention, cpu_ref_attention,
     "%s dot/axpy, (row, head) tasks on host threads"},
    {LLMOPT_OP_GELU, LLMOPT_DTYPE_F32, cpu_gelu, cpu_ref_gelu, "%s tanhf, ranges on host threads"},
    {LLMOPT_OP_GELU_ERF, LLMOPT_DTYPE_F32, cpu_gelu_erf, cpu_ref_gelu_erf, "%s erff, ranges on host threads"},
    {LLMOPT_OP_SILU, LLMOPT_DTYPE_F32, cpu_silu, cpu_ref_silu, "%s expf, ranges on host threads"},
    {LLMOPT_OP_SWIGLU, LLMOPT_DTYPE_F32, cpu_swiglu, cpu_ref_swiglu, "%s expf, ranges on host threads"},
    {LLMOPT_OP_ADD, LLMOPT_DTYPE_F32, cpu_add, cpu_ref_add, "%s, ranges on host threads"},
    {LLMOPT_OP_SOFTMAX, LLMOPT_DTYPE_F32, cpu_softmax, cpu_ref_softmax, "%s expf, rows on host threads"},
    {LLMOPT_OP_CROSS_ENTROPY, LLMOPT_DTYPE_F32, cpu_cross_entropy, cpu_ref_cross_entropy,
     "%s log-sum-exp, rows on host threads"},
};
#define N_OPS (sizeof ops / sizeof ops[0])

static char g_kernel_summary[N_OPS][192];

static int cpu_init(const llmopt_host_api *host, llmopt_registrar *reg) {
    if (host->struct_size < sizeof(llmopt_host_api)) {
        reg->set_error(reg, "host API table too small; this plugin needs llmopt ABI 1.%d", LLMOPT_ABI_MINOR);
        return LLMOPT_EABI;
    }
    cpu_api = host;

    cpu_path path = cpu_has(PATH_AVX512) ? PATH_AVX512 : cpu_has(PATH_AVX2) ? PATH_AVX2 : PATH_GENERIC;
    const char *force = getenv("LLMOPT_CPU_FORCE");
    if (force && *force) {
        int found = -1;
        for (int p = 0; p < PATH_COUNT; p++)
            if (strcmp(force, path_name[p]) == 0) found = p;
        if (found < 0) {
            reg->set_error(reg, "LLMOPT_CPU_FORCE=%s: expected ref, generic, avx2 or avx512", force);
            return LLMOPT_EINVAL;
        }
        if (!cpu_has((cpu_path)found)) {
            reg->set_error(reg, "LLMOPT_CPU_FORCE=%s but this CPU lacks %s", force, path_label[found]);
            return LLMOPT_EUNSUPPORTED;
        }
        path = (cpu_path)found;
    }
    cpu_isa = path == PATH_AVX512 ? &cpu_simd_avx512 : path == PATH_AVX2 ? &cpu_simd_avx2 : &cpu_simd_generic;
    cpu_qisa = pick_qsimd(path);
    cpu_use_bf16_gemm = path == PATH_AVX512 && cpu_bf16_gemm_supported();
    /* all parallelism comes from the host pool; OpenBLAS runs inside one chunk */
    openblas_set_num_threads(1);

    char blas[64] = "";
    if (path != PATH_REF) {
        const char *core = openblas_get_corename();
        snprintf(blas, sizeof blas, " + OpenBLAS sgemm (%s kernels)", core);
        /* OpenBLAS's pre-AVX targets (what 0.3.21 falls back to on a CPU model it does not know,
         * unless the host's OPENBLAS_CORETYPE rule applied): sgemm at a fifth of its speed */
        static const char *const weak[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                                           "Katmai", "Northwood"};
        for (size_t i = 0; path >= PATH_AVX2 && i < sizeof weak / sizeof weak[0]; i++)
            if (core && strcmp(core, weak[i]) == 0)
                host->log(LLMOPT_LOG_WARN,
                          "cpu: OpenBLAS runs its %s kernels on a CPU with AVX2: sgemm is several times "
                          "slower than it could be; set OPENBLAS_CORETYPE=Haswell (or SkylakeX with AVX-512)",
                          core);
    }
    snprintf(g_summary, sizeof g_summary, "CPU kernels for every op: %s%s (%s)", path_label[path], blas,
             force && *force ? "forced by LLMOPT_CPU_FORCE" : "detected");
    for (size_t i = 0; i < N_OPS; i++) {
        if (path == PATH_REF)
            snprintf(g_kernel_summary[i], sizeof g_kernel_summary[i], "reference loops, one thread");
        else
            snprintf(g_kernel_summary[i], sizeof g_kernel_summary[i], ops[i].how, path_label[path]);
        if (cpu_use_bf16_gemm && strcmp(ops[i].op, LLMOPT_OP_MATMUL) == 0)
            strncat(g_kernel_summary[i], "; matmul_precision medium, M>=2: AVX-512 BF16 GEMM",
                    sizeof g_kernel_summary[i] - strlen(g_kernel_summary[i]) - 1);
        llmopt_kernel_desc k = {.struct_size = sizeof k, .device = LLMOPT_DEVICE_CPU, .op = ops[i].op,
                                .dtype = ops[i].dtype, .fn = path == PATH_REF ? ops[i].ref : ops[i].fast,
                                .summary = g_kernel_summary[i]};
        int rc = reg->add_kernel(reg, &k);
        if (rc) {
            reg->set_error(reg, "registering %s kernel failed (%d)", ops[i].op, rc);
            return rc;
        }
    }
    int rc = register_quant(reg, path);
    if (rc) return rc;
    if ((rc = cpu_register_backward(reg, path == PATH_REF))) return rc;
    host->log(LLMOPT_LOG_DEBUG, "cpu: %s", g_summary);
    return 0;
}

LLMOPT_PLUGIN(.id = "cpu", .version = "0.1.0", .license = "MIT", .summary = g_summary, .init = cpu_init);
