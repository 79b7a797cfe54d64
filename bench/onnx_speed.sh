#!/usr/bin/env bash
# llmopt against onnxruntime on the same model: llmopt exports GPT-2 124M (onnx.export,
# kv_cache: true, logits: last) and onnxruntime's CPU provider runs that graph
# (bench/ort_speed.py); llmopt runs the checkpoint itself (bench/llmopt_speed.sh, its eval.speed
# stage). Same threads, same measurements: prefill of 512 tokens (last position's logits), and
# 128 single-token decode steps after a 128-token prompt.
#
#   bench/onnx_speed.sh BUILD_DIR [MODEL_DIR [THREADS [REPEATS]]]
#
# MODEL_DIR: default build-bench/gpt2-124m (made with bench/torch_speed.py make when missing).
# onnxruntime is the interop venv's (.venv, tests/interop/requirements-onnx.txt).
# QUANT="format: gq, bits: 4, group_size: 32, sym: true" (quantize.rtn's parameters) quantizes
# the block weights first: llmopt runs that checkpoint, onnxruntime its export (4-bit weights as
# MatMulNBits at accuracy_level 4, int8 activations, as llmopt's kernels use).
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:?usage: onnx_speed.sh BUILD_DIR [MODEL_DIR [THREADS [REPEATS]]]}" && pwd)"
model="${2:-$root/build-bench/gpt2-124m}"
threads="${3:-2}"
reps="${4:-3}"
host="$build/host/llmopt-host"
py="$root/.venv/bin/python"
[ -x "$host" ] || { echo "no $host: build first" >&2; exit 1; }
"$py" -c "import onnxruntime" 2>/dev/null || { echo "no onnxruntime in $py: scripts/interop-venv.sh" >&2; exit 1; }
if [ ! -f "$model/model.safetensors" ]; then
    echo "making $model" >&2
    "$py" "$root/bench/torch_speed.py" make "$model"
fi
model="$(cd "$model" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "cpu=$(lscpu | sed -n 's/^Model name: *//p') cpus=$(nproc) threads=$threads openblas_core=${OPENBLAS_CORETYPE:-openblas_default}" \
     "git=$(git -C "$root" rev-parse --short HEAD)"
if [ -n "${QUANT:-}" ]; then
    cat >"$tmp/export.yaml" <<YAML
name: bench-onnx-export
model: $model
stages:
  - {id: q, uses: quantize.rtn, with: {${QUANT}}}
  - {id: onnx, uses: onnx.export, inputs: {model: q}, with: {kv_cache: true, logits: last, int8_compute: true}}
outputs: [q]
YAML
else
    cat >"$tmp/export.yaml" <<YAML
name: bench-onnx-export
model: $model
stages:
  - {id: onnx, uses: onnx.export, with: {kv_cache: true, logits: last}}
YAML
fi
"$host" --plugins "$build/plugins" -q run "$tmp/export.yaml" --out "$tmp/run" >/dev/null
[ -n "${QUANT:-}" ] && model="$tmp/run/q/model"
echo "quant=${QUANT:-none} onnx_bytes=$(stat -c %s "$tmp/run/onnx/model.onnx")"
"$py" "$root/bench/ort_speed.py" "$tmp/run/onnx/model.onnx" --threads "$threads" | tee "$tmp/ort.txt"
bash "$root/bench/llmopt_speed.sh" "$build" "$model" "$threads" "$reps" | tee "$tmp/llmopt.txt"
python3 - "$tmp/ort.txt" "$tmp/llmopt.txt" <<'PY'
import sys
kv = {}
for f in sys.argv[1:]:
    for line in open(f):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            kv[k] = v
def f(k):
    return float(kv[k])
pre, dec = f("prefill512_s"), f("decode128_s")
print(f"prefill512: llmopt {512 / pre:.1f} tok/s, onnxruntime {512 / f('ort_prefill512_s'):.1f} tok/s, "
      f"llmopt/ort {f('ort_prefill512_s') / pre:.2f}x")
print(f"decode: llmopt {128 / dec:.1f} tok/s, onnxruntime {128 / f('ort_decode128_s'):.1f} tok/s, "
      f"llmopt/ort {f('ort_decode128_s') / dec:.2f}x")
PY
