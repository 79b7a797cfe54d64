#!/usr/bin/env bash
# Training speed and peak RSS, llmopt against PyTorch CPU, side by side: the same model, batch,
# sequence length, thread count, fp32, AdamW, number of steps (the first step of each run is a
# warm-up and is not timed). See bench/README.md.
#
#   bench/train_speed.sh BUILD_DIR [THREADS]
#
# Environment: REPEATS (3: separate processes per cell, best tokens/s, largest peak RSS),
#   CASES ("gpt2-full kjv-full kjv-lora gpt2-lora llama-full llama-lora"; also gpt2-qlora,
#   kjv-qlora, llama-qlora: finetune.qlora on an NF4 base, llmopt alone), GPT2_DIR (default
#   build-bench/gpt2-124m, made with bench/torch_speed.py make when missing), LLAMA_DIR (default
#   build-bench/llama-125m, bench/torch_speed.py make-llama: 12 layers, 768 wide, GQA 12/4 heads,
#   SwiGLU 2048, 32000 ids, untied; LoRA on q_proj and v_proj, PEFT's Llama default),
#   GPT2_B/GPT2_T/GPT2_STEPS (4/128/4, also the Llama cases'),
#   KJV_B/KJV_T/KJV_STEPS (8/128/20), TORCH_PYS (python interpreters; default the interop venv's
#   Debian torch 1.13 and, if it imports, build-bench/torch2-venv's PyPI torch), PRECISION
#   (highest: fp32 on both sides; medium: llmopt's matmul_precision medium against torch under
#   autocast to bfloat16, torch_train_speed.py --autocast-bf16), GRADIENT_CHECKPOINTING (0; 1:
#   finetune's gradient_checkpointing: true against transformers' gradient_checkpointing_enable(),
#   torch_train_speed.py --gradient-checkpointing), OPTIMIZER (adamw; adamw_8bit: finetune's
#   optimizer: adamw_8bit against bitsandbytes' AdamW8bit, on the interpreters that import it).
# Results (key=value files and table.md) go to BUILD_DIR/train-bench/<date-time>/.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:?usage: train_speed.sh BUILD_DIR [THREADS]}" && pwd)"
threads="${2:-2}"
reps="${REPEATS:-3}"
cases="${CASES:-gpt2-full kjv-full kjv-lora gpt2-lora llama-full llama-lora}"
precision="${PRECISION:-highest}"
gc="${GRADIENT_CHECKPOINTING:-0}"
case "$gc" in 0) gc_flag="" gc_yaml="" ;; 1) gc_flag="--gradient-checkpointing" gc_yaml=", gradient_checkpointing: true" ;; *) echo "GRADIENT_CHECKPOINTING: 0 or 1" >&2; exit 2 ;; esac
optimizer="${OPTIMIZER:-adamw}"
case "$optimizer" in adamw) opt_yaml="" ;; adamw_8bit) opt_yaml=", optimizer: adamw_8bit" ;; *) echo "OPTIMIZER: adamw or adamw_8bit" >&2; exit 2 ;; esac
case "$precision" in highest) autocast="" ;; medium) autocast="--autocast-bf16" ;; *) echo "PRECISION: highest or medium" >&2; exit 2 ;; esac
host="$build/host/llmopt-host"
res="$build/train-bench/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$res"
log() { printf '== %s (load average %s)\n' "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
[ -x "$host" ] || { echo "no $host: build first" >&2; exit 1; }
[ -f "$root/data/kjv.txt" ] || { echo "data/kjv.txt is missing (the KJV text the demo and tests use)" >&2; exit 1; }

venv="$root/.venv/bin/python"
[ -x "$venv" ] || venv=/work/main/.venv/bin/python
if [ -z "${TORCH_PYS:-}" ]; then
    TORCH_PYS="$venv"
    for t2 in "$root/build-bench/torch2-venv/bin/python" /work/main/build-bench/torch2-venv/bin/python; do
        if [ -x "$t2" ] && "$t2" -c 'import torch' 2>/dev/null; then TORCH_PYS="$TORCH_PYS $t2"; break; fi
    done
fi
if [ "$optimizer" = adamw_8bit ]; then # only the interpreters with bitsandbytes have the peer
    keep=""
    for py in $TORCH_PYS; do
        if "$py" -c 'import bitsandbytes' >/dev/null 2>&1; then keep="$keep $py"; else echo "no bitsandbytes in $py: left out" >&2; fi
    done
    TORCH_PYS="$keep"
fi

# GPT-2 124M with random weights (bench/torch_speed.py make), given kjv-tiny's tokenizer so
# llmopt can read the text: its 4096 ids are all inside GPT-2's 50257, and the ids do not
# change the work (the LM head is still 50257 wide).
gpt2="${GPT2_DIR:-$root/build-bench/gpt2-124m}"
if [[ " $cases " == *" gpt2-"* ]]; then
    if [ ! -f "$gpt2/model.safetensors" ]; then
        log "making $gpt2"
        "$venv" "$root/bench/torch_speed.py" make "$gpt2"
    fi
    g="$res/gpt2-124m-kjvtok"
    mkdir -p "$g"
    ln -s "$(cd "$gpt2" && pwd)/config.json" "$(cd "$gpt2" && pwd)/model.safetensors" "$g/"
    ln -s "$root/models/kjv-tiny/tokenizer.json" "$root/models/kjv-tiny/tokenizer_config.json" "$g/"
fi
llama="${LLAMA_DIR:-$root/build-bench/llama-125m}"
if [[ " $cases " == *" llama-"* ]]; then
    if [ ! -f "$llama/model.safetensors" ]; then
        log "making $llama"
        "$venv" "$root/bench/torch_speed.py" make-llama "$llama"
    fi
    gl="$res/llama-125m-kjvtok" # kjv-tiny's tokenizer as for GPT-2: its ids are inside 32000
    mkdir -p "$gl"
    ln -s "$(cd "$llama" && pwd)/config.json" "$(cd "$llama" && pwd)/model.safetensors" "$gl/"
    ln -s "$root/models/kjv-tiny/tokenizer.json" "$root/models/kjv-tiny/tokenizer_config.json" "$gl/"
fi

{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git=$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- 2>/dev/null || echo '+dirty')"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | tr ' ' '_')"
    echo "cpus=$(nproc)"
    echo "threads=$threads"
    echo "repeats=$reps"
    echo "precision=$precision"
    echo "gradient_checkpointing=$gc"
    echo "optimizer=$optimizer"
    echo "llmopt_version=$("$host" --version | head -1 | tr ' ' '_')"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '_')"
} >"$res/machine.txt"

export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "openblas_core=${OPENBLAS_CORETYPE:-openblas_default}" >>"$res/machine.txt"

# max RSS (MiB) from a /usr/bin/time -v file
rss_mib() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{printf "%.1f", $1 / 1024}'; }

run_llmopt() { # case model mode B T steps -> key=value lines, one set per repeat
    local c="$1" model="$2" mode="$3" B="$4" T="$5" steps="$6" r
    local extra=""
    [ "$mode" = lora ] || [ "$mode" = qlora ] && extra=", rank: 8, alpha: 16, targets: [${targets//,/, }]"
    cat >"$res/$c.yaml" <<EOF
name: train-bench-$c
model: $model
matmul_precision: $precision
seed: 1
data:
  train: {path: $root/data/kjv.txt, split: "0:10%"}
stages:
  - {id: train, uses: finetune.$mode, with: {batch: $B, seq_len: $T, steps: $((steps + 1)), lr: 1.0e-4,
     schedule: constant, warmup: 0, grad_clip: 1.0, weight_decay: 0.01$gc_yaml$opt_yaml$extra}}
EOF
    for r in $(seq 1 "$reps"); do
        log "$c: llmopt run $r"
        rm -rf "$res/$c-run"
        OPENBLAS_NUM_THREADS=1 /usr/bin/time -v -o "$res/$c-llmopt.time" "$host" -q --plugins "$build/plugins" \
            --threads "$threads" run "$res/$c.yaml" --out "$res/$c-run" --jobs 1 >/dev/null
        python3 - "$res/$c-run/report.json" <<'PY'
import json, sys
m = {x["name"]: x["value"] for x in json.load(open(sys.argv[1]))["stages"][0]["metrics"]}
print(f"tokens_per_s={m['steady_tokens_per_s']:.2f}")
print(f"tokens_per_cpu_s={m['steady_tokens_per_cpu_s']:.2f}")
print(f"all_steps_tokens_per_s={m['tokens_per_s']:.2f}")
print(f"trainable_params={m['trainable_params']:.0f}")
print(f"loss_last={m['train_loss']:.4f}")
PY
        echo "peak_rss_mib=$(rss_mib "$res/$c-llmopt.time")"
    done >"$res/$c-llmopt.txt"
    rm -rf "$res/$c-run"
}

run_torch() { # case py model mode B T steps
    local c="$1" py="$2" model="$3" mode="$4" B="$5" T="$6" steps="$7" r tag
    tag="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
    for r in $(seq 1 "$reps"); do
        log "$c: torch $tag run $r"
        /usr/bin/time -v -o "$res/$c-torch.time" "$py" "$root/bench/torch_train_speed.py" "$model" --mode "$mode" \
            --batch "$B" --seq "$T" --steps "$steps" --warmup 1 --threads "$threads" --targets "$targets" $autocast $gc_flag --optimizer "$optimizer" 2>/dev/null |
            grep -v '^peak_rss_mib='
        echo "peak_rss_mib=$(rss_mib "$res/$c-torch.time")"
    done >"$res/$c-torch-$tag.txt"
}

for c in $cases; do
    case "$c" in
    gpt2-*) model="$g" B="${GPT2_B:-4}" T="${GPT2_T:-128}" steps="${GPT2_STEPS:-4}" ;;
    kjv-*) model="$root/models/kjv-tiny" B="${KJV_B:-8}" T="${KJV_T:-128}" steps="${KJV_STEPS:-20}" ;;
    llama-*) model="$gl" B="${GPT2_B:-4}" T="${GPT2_T:-128}" steps="${GPT2_STEPS:-4}" ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
    esac
    mode="${c#*-}"
    targets=c_attn
    [[ "$c" == llama-* ]] && targets=q_proj,v_proj
    echo "$c B=$B T=$T steps=$steps mode=$mode" >>"$res/cases.txt"
    run_llmopt "$c" "$model" "$mode" "$B" "$T" "$steps"
    # QLoRA: no torch peer here (bitsandbytes' 4-bit layers are CUDA kernels); compare with the
    # same case's lora row
    [ "$mode" = qlora ] && continue
    for py in $TORCH_PYS; do run_torch "$c" "$py" "$model" "$mode" "$B" "$T" "$steps"; done
done
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '_')" >>"$res/machine.txt"

python3 - "$res" <<'PY' | tee "$res/table.md"
import glob, os, sys
res = sys.argv[1]
def kv(path):
    d = {}
    for line in open(path):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            d.setdefault(k, []).append(v)
    return d
mach = {k: v[0] for k, v in kv(os.path.join(res, "machine.txt")).items()}
print(f"{mach['date']}, git {mach['git']}, {mach['cpu'].replace('_', ' ')}, {mach['cpus']} cpus, "
      f"{mach['threads']} threads, matmul precision {mach.get('precision', 'highest')} (torch: "
      f"{'autocast bfloat16' if mach.get('precision') == 'medium' else 'fp32'}), "
      f"{'gradient checkpointing on both sides, ' if mach.get('gradient_checkpointing') == '1' else ''}"
      f"{'8-bit AdamW (llmopt adamw_8bit, torch bitsandbytes AdamW8bit), ' if mach.get('optimizer') == 'adamw_8bit' else ''}best of {mach['repeats']} processes, OpenBLAS {mach.get('openblas_core', '?')} kernels; load average "
      f"{mach['load_before'].replace('_', ' ')} before, {mach.get('load_after', '?').replace('_', ' ')} after")
print()
print("| case | B x T, timed steps | trainer | tokens/s | tokens per CPU-s | peak RSS MiB | llmopt tok/s / this | llmopt RSS / this |")
print("|---|---|---|---|---|---|---|---|")
for line in open(os.path.join(res, "cases.txt")):
    c, *rest = line.split()
    p = dict(x.split("=") for x in rest)
    rows = [("llmopt", os.path.join(res, f"{c}-llmopt.txt"))]
    rows += [("torch " + os.path.basename(f)[len(f"{c}-torch-"):-4], f)
             for f in sorted(glob.glob(os.path.join(res, f"{c}-torch-*.txt")))]
    got = []
    for name, f in rows:
        d = kv(f)
        if "tokens_per_s" not in d:
            got.append((name, None, None, None))
            continue
        # best of the repeats for the rates; the largest peak RSS
        got.append((name, max(float(x) for x in d["tokens_per_s"]), max(float(x) for x in d["tokens_per_cpu_s"]),
                    max(float(x) for x in d["peak_rss_mib"])))
    ll = got[0]
    for name, tps, tpc, rss in got:
        if tps is None:
            print(f"| {c} | {p['B']} x {p['T']}, {p['steps']} | {name} | failed | | | | |")
            continue
        ratio = f"{ll[1] / tps:.2f}x" if name != "llmopt" and ll[1] else ""
        rr = f"{ll[3] / rss:.2f}" if name != "llmopt" and ll[3] else ""
        print(f"| {c} | {p['B']} x {p['T']}, {p['steps']} | {name} | {tps:.0f} | {tpc:.0f} | {rss:.0f} | {ratio} | {rr} |")
PY
echo
echo "results: $res"
