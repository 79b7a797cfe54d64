#ifndef LLMOPT_HOST_BLAS_ENV_H
#define LLMOPT_HOST_BLAS_ENV_H
/* OpenBLAS built with DYNAMIC_ARCH picks its kernels once, when it loads, by CPU model; version
 * 0.3.21 (Debian 12) falls back to its Prescott (SSE3) kernels on models newer than it, e.g.
 * Emerald Rapids (family 6, model 207), where sgemm then runs at a fifth of its SkylakeX speed.
 * Before the first plugin loads it (the CPU plugin links OpenBLAS), an unset OPENBLAS_CORETYPE
 * is set from what the CPU can do rather than what it is called: SkylakeX on an Intel CPU with
 * AVX-512 F, BW, VL, DQ and CD, Haswell on one with AVX2 and FMA. Other vendors, and a value the
 * user set, are left alone (OpenBLAS knows AMD's families by number). Returns 1 when it set the
 * variable, with the value in *value; 0 otherwise. */
int blas_env_prepare(const char **value);
#endif
