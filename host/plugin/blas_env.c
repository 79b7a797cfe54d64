/* OPENBLAS_CORETYPE from the CPU's features (blas_env.h). */
#include "blas_env.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
static int cpu_has_avx512_set(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd");
}
#endif

int blas_env_prepare(const char **value) {
#if defined(__x86_64__) || defined(__i386__)
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set && *set) return 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_is("intel")) return 0;
    const char *core = NULL;
    if (cpu_has_avx512_set())
        core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        core = "Haswell";
    if (!core || setenv("OPENBLAS_CORETYPE", core, 0) != 0) return 0;
    if (value) *value = core;
    return 1;
#else
    (void)value;
    return 0;
#endif
}

int blas_env_weaker_than_cpu(char *msg, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (!set || !*set || !cpu_has_avx512_set()) return 0;
    /* OpenBLAS 0.3.21's x86 core names (its dynamic.c) whose kernels stop short of AVX-512; a
     * name it does not know it ignores (it detects the CPU as if unset), so that gets no hint */
    static const char *const narrow[] = {"Katmai",     "Coppermine", "Northwood", "Prescott",  "Banias",
                                         "Atom",       "Core2",      "Penryn",    "Dunnington", "Nehalem",
                                         "Athlon",     "Opteron",    "OpteronSSE3", "Barcelona", "Nano",
                                         "SandyBridge", "Bobcat",    "Bulldozer", "Piledriver", "Haswell",
                                         "Steamroller", "Excavator", "Zen"};
    int known = 0;
    for (size_t i = 0; i < sizeof narrow / sizeof narrow[0]; i++) known |= strcasecmp(set, narrow[i]) == 0;
    if (!known) return 0;
    if (msg && n)
        snprintf(msg, n,
                 "OPENBLAS_CORETYPE=%s from the environment keeps OpenBLAS off AVX-512 on this AVX-512 CPU; "
                 "sgemm (prompts, training) may run at half its rate: unset it, or set SkylakeX",
                 set);
    return 1;
#else
    (void)msg;
    (void)n;
    return 0;
#endif
}
