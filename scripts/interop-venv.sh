#!/usr/bin/env bash
# Makes the Python venv the interop tests run in (.venv at the repo root): Debian's torch and
# numpy (system site packages) plus the exact pins of tests/interop/requirements.txt. Idempotent:
# skips apt when the packages are installed and pip when the pins are already satisfied.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"

pkgs="python3-venv python3-torch python3-numpy bible-kjv"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# Debian's interpreter, not whatever python3 is first on PATH (pyenv, conda): only it sees
# Debian's python3-torch through --system-site-packages.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi

# pinned NAME PIP_ARGS...: pip install -r tests/interop/NAME.txt with PIP_ARGS, only when that
# file changed since its last successful install (a stamp of its hash in the venv).
pinned() {
    local name=$1 file="$root/tests/interop/$1.txt" stamp="$venv/.$1.sha256" want
    shift
    want="$(sha256sum "$file" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "interop venv: installing tests/interop/$name.txt"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" -r "$file"
        echo "$want" > "$stamp"
    fi
}
pinned requirements
# PEFT and accelerate without their declared dependencies (see requirements-peft.txt for why).
pinned requirements-peft --no-deps
# optimum + auto-gptq (transformers' GPTQ loader) and what auto-gptq imports, likewise without
# their declared dependencies (see requirements-gptq.txt for why).
pinned requirements-gptq --no-deps
# onnxruntime, likewise (see requirements-onnx.txt)
pinned requirements-onnx --no-deps
# llama-cpp-python, which builds llama.cpp from source (no wheel for this platform on PyPI):
# 150-220 s on 2 cores with only the library built, once per venv.
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pinned requirements-llama-cpp --no-deps

"$venv/bin/python" - <<'PY'
import sys
import torch, numpy, transformers, tokenizers, safetensors, peft, optimum, auto_gptq, llama_cpp, onnxruntime
assert torch.__file__.startswith("/usr/lib/python3/dist-packages/"), torch.__file__
print(f"interop venv: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}, peft {peft.__version__}, "
      f"auto-gptq {auto_gptq.__version__}, llama-cpp-python {llama_cpp.__version__}, "
      f"onnxruntime {onnxruntime.__version__}")
PY
