#!/usr/bin/env bash
# Quantized against f32 on the same checkpoint, in one run, side by side with PyTorch's dynamic
# int8 (torch.quantization.quantize_dynamic, the tool most users try first):
#   - llmopt: the eval.speed stage (prefill 512 and decode 128 after a 128-token prompt, best of
#     the stage's repeats; model bytes in memory) on the input and on quantize.rtn outputs, every
#     model once a round for ROUNDS rounds (default 3) in turn, each row the best of its rounds
#     (a shared VM's speed drifts by 10-20% over minutes; in turn, the drift hits every row alike):
#       q8_0        every linear weight and the tied LM head (wte) in Q8_0
#       int8        int8 per output channel (GQ 8-bit, one group a row), LM head too
#       q4_0        the blocks' weights in Q4_0, the LM head in Q8_0 (llama.cpp keeps its output
#                   matrix at higher precision too)
#       gq4         GQ 4-bit groups of 128 (sym), the LM head in Q8_0
#       q4_0_all,   every linear weight and the LM head 4-bit (a fully 4-bit model; the head's
#       gq4_all     quality cost is the user's call: docs/quantization.md measures it)
#       *_f32head   the stages' default selection: the tied LM head left f32 (for comparison)
#     The position embedding (wpe) stays f32 in every row; it is read one row a token.
#   - PyTorch (bench/torch_speed.py speed): the same model in float32 and after quantize_dynamic
#     (GPT-2's Conv1D turned into the nn.Linear it is first, or quantize_dynamic skips them), with
#     each Python found: the interop venv (Debian's torch 1.13) and, when present,
#     build-bench/torch2-venv (PyPI torch, `TORCH2=1 bench/run.sh` makes it).
#
#   bench/quant_speed.sh BUILD_DIR MODEL_DIR [THREADS]
#
# MODEL_DIR: e.g. the GPT-2 124M shape bench/run.sh makes (build-bench/gpt2-124m), or
# `.venv/bin/python bench/torch_speed.py make DIR`. NO_TORCH=1 leaves PyTorch out.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:?usage: quant_speed.sh BUILD_DIR MODEL_DIR [THREADS]}" && pwd)"
model="$(cd "${2:?model dir}" && pwd)"
threads="${3:-2}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1 # the cpu plugin runs OpenBLAS single-threaded inside host threads
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "openblas_core=${OPENBLAS_CORETYPE:-openblas_default}" >&2
speed="uses: eval.speed, with: {repeats: 3, decode_tokens: 128}"
export ROUNDS="${ROUNDS:-3}"; rounds="$ROUNDS" # every model timed once a round, rounds in turn: drift of the machine hits all rows alike
head="uses: quantize.rtn, with: {format: q8_0, include: ['*wte*'], exclude: []}"
cat >"$tmp/q.yaml" <<YAML
name: bench-quant-speed
model: $model
stages:
  - {id: q8_0, uses: quantize.rtn, with: {format: q8_0, exclude: ['*wpe*']}}
  - {id: int8, uses: quantize.rtn, with: {format: int8, exclude: ['*wpe*']}}
  - {id: q4_0_body, uses: quantize.rtn, with: {format: q4_0}}
  - {id: q4_0, inputs: {model: q4_0_body}, $head}
  - {id: gq4_body, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 128, sym: true}}
  - {id: gq4, inputs: {model: gq4_body}, $head}
  - {id: q4_0_all, uses: quantize.rtn, with: {format: q4_0, exclude: ['*wpe*']}}
  - {id: gq4_all, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 128, sym: true, exclude: ['*wpe*']}}
  - {id: q8_0_f32head, uses: quantize.rtn, with: {format: q8_0}}
$(for r in $(seq 1 "$rounds"); do
    for k in f32 q8_0 int8 q4_0 gq4 q4_0_all gq4_all q8_0_f32head q4_0_f32head; do
        case $k in f32) in="" ;; q4_0_f32head) in="inputs: {model: q4_0_body}, " ;; *) in="inputs: {model: $k}, " ;; esac
        echo "  - {id: speed_${k}_r$r, ${in}$speed}"
    done
done)
YAML
"$build/host/llmopt-host" -q --plugins "$build/plugins" --threads "$threads" run "$tmp/q.yaml" --out "$tmp/run" --jobs 1 >/dev/null

pys=()
if [ "${NO_TORCH:-0}" != 1 ]; then
    for py in "$root/.venv/bin/python" "$root/build-bench/torch2-venv/bin/python"; do
        [ -x "$py" ] && "$py" -c 'import torch, transformers' 2>/dev/null && pys+=("$py")
    done
fi
i=0
for py in ${pys[@]+"${pys[@]}"}; do
    for mode in f32 dynamic_int8; do
        flag=""
        [ "$mode" = dynamic_int8 ] && flag="--dynamic-int8"
        "$py" "$root/bench/torch_speed.py" speed "$model" --threads "$threads" --repeats 2 $flag \
            >"$tmp/torch_${i}_$mode.txt" 2>/dev/null || echo "torch ($py, $mode) failed" >&2
    done
    i=$((i + 1))
done

python3 - "$tmp/run/report.json" "$threads" "$tmp" <<'PY'
import glob, json, os, sys
r = json.load(open(sys.argv[1]))
m = {}
for s in r["stages"]:  # speed_<model>_r<round>: the best of the rounds, prefill and decode each
    if not s["id"].startswith("speed_"):
        continue
    k = s["id"][len("speed_"):].rsplit("_r", 1)[0]
    v = {x["name"]: x["value"] for x in s["metrics"]}
    b = m.setdefault(f"speed_{k}", dict(v))
    for key in ("prefill512_tok_s", "decode_tok_s"):
        b[key] = max(b[key], v[key])
base = m["speed_f32"]
print(f"threads={sys.argv[2]} llmopt={r['llmopt']['version']} git={r['llmopt']['git_revision']} "
      f"(best of {os.environ.get('ROUNDS', '3')} interleaved rounds)")
print("| engine | weights | MiB in memory | prefill 512 tok/s | vs llmopt f32 | decode tok/s | vs llmopt f32 |")
print("|---|---|---|---|---|---|---|")
rows = [("f32", "f32"), ("q8_0", "q8_0 (LM head too)"), ("int8", "int8 per channel (LM head too)"),
        ("q4_0", "q4_0, LM head q8_0"), ("gq4", "GQ4 g128, LM head q8_0"),
        ("q4_0_all", "q4_0, LM head too"), ("gq4_all", "GQ4 g128, LM head too"),
        ("q8_0_f32head", "q8_0, LM head f32"), ("q4_0_f32head", "q4_0, LM head f32")]
for k, label in rows:
    s = m[f"speed_{k}"]
    print(f"| llmopt | {label} | {s['model_bytes'] / 2**20:.1f} | {s['prefill512_tok_s']:.1f} | "
          f"{s['prefill512_tok_s'] / base['prefill512_tok_s']:.2f}x | {s['decode_tok_s']:.1f} | "
          f"{s['decode_tok_s'] / base['decode_tok_s']:.2f}x |")
for f in sorted(glob.glob(os.path.join(sys.argv[3], "torch_*.txt"))):
    kv = dict(l.strip().split("=", 1) for l in open(f) if "=" in l)
    if "prefill512_lasttok_s" not in kv or "decode128_eager_s" not in kv:
        continue
    mode = "dynamic int8 (every Linear)" if kv.get("quantized") else "f32"
    pf, dec = 512 / float(kv["prefill512_lasttok_s"]), 128 / float(kv["decode128_eager_s"])
    print(f"| torch {kv['torch_version']} | {mode} | peak RSS {float(kv['peak_rss_mib']):.0f} | {pf:.1f} | "
          f"{pf / base['prefill512_tok_s']:.2f}x | {dec:.1f} | {dec / base['decode_tok_s']:.2f}x |")
PY
