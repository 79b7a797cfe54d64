# Sourced by the bench scripts and tests/interop/run.sh: `blas_core_export BUILD_DIR` exports OPENBLAS_CORETYPE as the
# kernels OpenBLAS runs inside llmopt's CPU plugin (its summary names them), unless the caller set
# it. PyTorch from Debian (torch 1.13) runs its matmuls on the same OpenBLAS; without this it
# would keep OpenBLAS's own choice, which on a CPU model newer than OpenBLAS 0.3.21 is its slow
# Prescott fallback (host/plugin/blas_env.h), and the comparison would not be like for like.
#
# `blas_core_export BUILD_DIR bench` (the bench scripts) first drops an OPENBLAS_CORETYPE the
# environment set, so a benchmark measures the kernels this CPU gets from llmopt and OpenBLAS
# themselves, not a machine-wide setting (one workplace's machines set Haswell, AVX2, which on a
# Zen 5 halves sgemm against the AVX-512 kernels OpenBLAS picks there); KEEP_OPENBLAS_CORETYPE=1
# keeps it. Either way the scripts record the value used as openblas_core in their results.
blas_core_export() {
    if [ "${2:-}" = bench ] && [ -n "${OPENBLAS_CORETYPE:-}" ] && [ "${KEEP_OPENBLAS_CORETYPE:-0}" != 1 ]; then
        echo "bench: not using OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE from the environment (KEEP_OPENBLAS_CORETYPE=1 keeps it)" >&2
        unset OPENBLAS_CORETYPE
    fi
    if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
        local core
        core="$("$1/host/llmopt-host" --plugins "$1/plugins" plugins 2>/dev/null |
            sed -n 's/.*OpenBLAS sgemm (\([A-Za-z0-9]*\) kernels).*/\1/p' | head -1)"
        if [ -n "$core" ]; then export OPENBLAS_CORETYPE="$core"; fi
    fi
    local shown="${OPENBLAS_CORETYPE:-}"
    [ -n "$shown" ] || shown="the library's own choice"
    echo "OpenBLAS kernels for every engine: $shown" >&2
}
