#!/usr/bin/env bash
# Runs the interop tests (llmopt against transformers, tokenizers, safetensors) with the build in
# directory $1 (default: build at the repo root). Makes or updates the venv first. Exit status: pytest's, except
# that "no tests collected" (5) is a failure too.
set -u
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "${1:-$root/build}" 2>/dev/null && pwd)" || { echo "interop: no build directory ${1:-$root/build}" >&2; exit 1; }
shift $(( $# > 0 ? 1 : 0 ))

"$root/scripts/interop-venv.sh" || { echo "interop: could not make the venv" >&2; exit 1; }

cd "$root"
# torch from Debian runs on the same OpenBLAS as the CPU plugin: the same kernels for both
. "$root/scripts/blas-core.sh"
blas_core_export "$build"
PYTHONDONTWRITEBYTECODE=1 LLMOPT_HOST="$build/host/llmopt-host" LLMOPT_PLUGINS="$build/plugins" \
    "$root/.venv/bin/python" -m pytest "$root/tests/interop" -q -rs -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "interop: no tests collected" >&2
    exit 1
fi
exit "$rc"
