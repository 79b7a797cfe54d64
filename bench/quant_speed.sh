#!/usr/bin/env bash
# Quantized against f32 on the same checkpoint, in one run: the eval.speed stage (prefill 512 and
# decode 128 after a 128-token prompt, best of the stage's repeats; model bytes in memory) on the
# input and on its quantize.rtn outputs q8_0, q4_0 and GQ4 g128 (sym), then a table with the
# ratios to f32. GPT-2's Conv1D weights run quantized as [out, in] rows.
#
#   bench/quant_speed.sh BUILD_DIR MODEL_DIR [THREADS]
#
# MODEL_DIR: e.g. the GPT-2 124M shape bench/run.sh makes (build-bench/gpt2-124m), or
# `.venv/bin/python bench/torch_speed.py make DIR`. PyTorch's dynamic int8 is not in it yet.
set -eu
build="$(cd "${1:?usage: quant_speed.sh BUILD_DIR MODEL_DIR [THREADS]}" && pwd)"
model="$(cd "${2:?model dir}" && pwd)"
threads="${3:-2}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1 # the cpu plugin runs OpenBLAS single-threaded inside host threads
speed="uses: eval.speed, with: {repeats: 3, decode_tokens: 128}"
cat >"$tmp/q.yaml" <<YAML
name: bench-quant-speed
model: $model
stages:
  - {id: q8_0, uses: quantize.rtn, with: {format: q8_0}}
  - {id: q4_0, uses: quantize.rtn, with: {format: q4_0}}
  - {id: gq4, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 128, sym: true}}
  - {id: speed_f32, $speed}
  - {id: speed_q8_0, inputs: {model: q8_0}, $speed}
  - {id: speed_q4_0, inputs: {model: q4_0}, $speed}
  - {id: speed_gq4, inputs: {model: gq4}, $speed}
YAML
"$build/host/llmopt-host" -q --plugins "$build/plugins" --threads "$threads" run "$tmp/q.yaml" --out "$tmp/run" --jobs 1 >/dev/null
python3 - "$tmp/run/report.json" "$threads" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = {s["id"]: {x["name"]: x["value"] for x in s["metrics"]} for s in r["stages"]}
base = m["speed_f32"]
print(f"threads={sys.argv[2]} llmopt={r['llmopt']['version']} git={r['llmopt']['git_revision']}")
print("| weights | model MiB in memory | prefill 512 tok/s | vs f32 | decode tok/s | vs f32 |")
print("|---|---|---|---|---|---|")
for k in ("f32", "q8_0", "q4_0", "gq4"):
    s = m[f"speed_{k}"]
    print(f"| {k} | {s['model_bytes'] / 2**20:.1f} | {s['prefill512_tok_s']:.1f} | "
          f"{s['prefill512_tok_s'] / base['prefill512_tok_s']:.2f}x | {s['decode_tok_s']:.1f} | "
          f"{s['decode_tok_s'] / base['decode_tok_s']:.2f}x |")
PY
