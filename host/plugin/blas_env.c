/* OPENBLAS_CORETYPE from the CPU's features (blas_env.h). */
#include "blas_env.h"

#include <stdlib.h>

int blas_env_prepare(const char **value) {
#if defined(__x86_64__) || defined(__i386__)
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set && *set) return 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_is("intel")) return 0;
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512cd"))
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
