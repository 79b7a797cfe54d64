#ifndef LLMOPT_HOST_BLAS_ENV_H
#define LLMOPT_HOST_BLAS_ENV_H
#include <stddef.h>
/* OpenBLAS built with DYNAMIC_ARCH picks its kernels once, when it loads, by CPU model; version
 * 0.3.21 (Debian 12) falls back to its Prescott (SSE3) kernels on models newer than it, e.g.
 * Emerald Rapids (family 6, model 207), where sgemm then runs at a fifth of its SkylakeX speed.
 * Before the first plugin loads it (the CPU plugin links OpenBLAS), an unset OPENBLAS_CORETYPE
 * is set from what the CPU can do rather than what it is called: SkylakeX on an Intel CPU with
 * AVX-512 F, BW, VL, DQ and CD, Haswell on one with AVX2 and FMA. Other vendors, and a value the
 * user set, are left alone (OpenBLAS knows AMD's families by number). Returns 1 when it set the
 * variable, with the value in *value; 0 otherwise. */
int blas_env_prepare(const char **value);

/* The other way round: an OPENBLAS_CORETYPE the user (or the machine's environment) set that
 * names AVX2-or-older kernels on a CPU with the AVX-512 set SkylakeX's kernels need. It is kept
 * (the user's choice), but on a CPU with full-width AVX-512 units it halves sgemm: Haswell's
 * kernels ran at 236 GFLOP/s on two cores of an AMD Zen 5 where SkylakeX's ran at 440-482
 * (bench/sgemm_peak.c). Only OpenBLAS's own core names count: it ignores others and detects
 * the CPU as if the variable were unset. Returns 1 and writes a one-line hint into msg (n bytes)
 * when that is so; 0 otherwise. */
int blas_env_weaker_than_cpu(char *msg, size_t n);
#endif
