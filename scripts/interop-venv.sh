#!/usr/bin/env bash
# Makes the Python venv the interop tests run in (.venv at the repo root): Debian's torch and
# numpy (system site packages) plus the exact pins of tests/interop/requirements.txt. Idempotent:
# skips apt when the packages are installed and pip when the pins are already satisfied.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/tests/interop/requirements.txt"
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

# Reinstall only when the pins changed since the last successful install.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi

# PEFT and accelerate without their declared dependencies (see requirements-peft.txt for why).
req_peft="$root/tests/interop/requirements-peft.txt"
stamp_peft="$venv/.requirements-peft.sha256"
want_peft="$(sha256sum "$req_peft" | cut -d' ' -f1)"
if [ ! -f "$stamp_peft" ] || [ "$(cat "$stamp_peft")" != "$want_peft" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$req_peft"
    echo "$want_peft" > "$stamp_peft"
fi

# optimum + auto-gptq (transformers' GPTQ loader) and what auto-gptq imports, likewise without
# their declared dependencies (see requirements-gptq.txt for why).
req_gptq="$root/tests/interop/requirements-gptq.txt"
stamp_gptq="$venv/.requirements-gptq.sha256"
want_gptq="$(sha256sum "$req_gptq" | cut -d' ' -f1)"
if [ ! -f "$stamp_gptq" ] || [ "$(cat "$stamp_gptq")" != "$want_gptq" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$req_gptq"
    echo "$want_gptq" > "$stamp_gptq"
fi

# llama-cpp-python, which builds llama.cpp from source (no wheel for this platform on PyPI):
# about 4 minutes on 2 cores with only the library built, once per venv.
req_lcp="$root/tests/interop/requirements-llama-cpp.txt"
stamp_lcp="$venv/.requirements-llama-cpp.sha256"
want_lcp="$(sha256sum "$req_lcp" | cut -d' ' -f1)"
if [ ! -f "$stamp_lcp" ] || [ "$(cat "$stamp_lcp")" != "$want_lcp" ]; then
    echo "building llama-cpp-python (llama.cpp from source, a few minutes)"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$req_lcp"
    echo "$want_lcp" > "$stamp_lcp"
fi

"$venv/bin/python" - <<'PY'
import sys
import torch, numpy, transformers, tokenizers, safetensors, peft, optimum, auto_gptq, llama_cpp
assert torch.__file__.startswith("/usr/lib/python3/dist-packages/"), torch.__file__
print(f"interop venv: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}, peft {peft.__version__}, "
      f"auto-gptq {auto_gptq.__version__}, llama-cpp-python {llama_cpp.__version__}")
PY
