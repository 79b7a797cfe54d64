#!/usr/bin/env bash
# Inference on Llama 3.2 1B's shape (random weights, bfloat16 as Meta ships the checkpoint,
# llama3 rope scaling, vocabulary 128256, tied head): llmopt's eval.speed against PyTorch CPU
# running the same checkpoint in bfloat16, at the same thread count, side by side, with the
# machine's read bandwidth for the decode bound (weight bytes read per token / bandwidth).
#
#   bench/llama3_1b.sh                 # build-bench as it is (bench/run.sh builds it), 2 threads
#   THREADS=2 REPEATS=3 bench/llama3_1b.sh
#
# Torch column: build-bench/torch2-venv's when present (TORCH2=1 bench/run.sh makes it), else the
# interop venv's (Debian's torch 1.13). Results: build-bench/bench-results/llama3-1b-<date-time>/.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-bench"
threads="${THREADS:-2}"
reps="${REPEATS:-2}"
model="$build/bench-cache/llama3-1b-random"
bin="$build/benchbin"
res="$build/bench-results/llama3-1b-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$bin" "$res"
log() { printf '== %s (load average %s)\n' "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }

[ -x "$build/host/llmopt-host" ] || { echo "no $build/host/llmopt-host: run bench/run.sh first" >&2; exit 1; }
[ -x "$root/.venv/bin/python" ] || "$root/scripts/interop-venv.sh"
cc -O2 -march=native -pthread -o "$bin/membw" "$root/bench/membw.c"
if [ ! -f "$model/model.safetensors" ]; then
    log "making $model (about 40 s and 6 GB of memory)"
    "$root/.venv/bin/python" "$root/bench/torch_speed.py" make-llama3-1b "$model"
fi
echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) cpu=$(lscpu | sed -n 's/^Model name: *//p' | tr ' ' '_')" >"$res/machine.txt"

export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "openblas_core=${OPENBLAS_CORETYPE:-openblas_default}" >>"$res/machine.txt"
log "read bandwidth"
"$bin/membw" --threads "$threads" | tee "$res/membw.txt" >&2
log "llmopt, $threads threads"
"$root/bench/llmopt_speed.sh" "$build" "$model" "$threads" "$reps" | tee "$res/llmopt.txt" >&2
log "llmopt, $threads threads, matmul_precision medium"
PRECISION=medium "$root/bench/llmopt_speed.sh" "$build" "$model" "$threads" "$reps" | tee "$res/llmopt-medium.txt" >&2
pys=("$root/.venv/bin/python") # the strongest torch here: the PyPI one when present (torch 1.13 takes minutes a prefill)
[ -x "$build/torch2-venv/bin/python" ] && pys=("$build/torch2-venv/bin/python")
for py in "${pys[@]}"; do
    tag="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
    log "torch $tag, $threads threads, bfloat16"
    "$py" "$root/bench/torch_speed.py" speed "$model" --threads "$threads" --repeats "$reps" --dtype bfloat16 \
        2>/dev/null | tee "$res/torch-$tag.txt" >&2 || echo "torch $tag failed" >&2
done

python3 - "$res" "$model" "$threads" <<'PY' | tee "$res/table.md"
import glob, os, re, sys
res, model, threads = sys.argv[1], sys.argv[2], sys.argv[3]
def kv(path):
    out = {}
    for line in open(path):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            out[k] = v
    return out
bw = max(float(x) for x in re.findall(r"gbps=([0-9.]+)", open(f"{res}/membw.txt").read()))
wbytes = os.path.getsize(f"{model}/model.safetensors")
bound = bw * 1e9 / wbytes
cols = []
for name, f in (("llmopt", "llmopt.txt"), ("llmopt medium", "llmopt-medium.txt")):
    ours = kv(f"{res}/{f}")
    cols.append((name, 512 / float(ours["prefill512_s"]), 128 / float(ours["prefill128_s"]),
                 128 / float(ours["decode128_s"]), ours.get("peak_rss_mib", "?")))
for f in sorted(glob.glob(f"{res}/torch-*.txt")):
    t = kv(f)
    if "decode128_eager_s" not in t:
        continue
    cols.append((f"torch {t.get('torch_version', '?').split('+')[0]}", 512 / float(t["prefill512_lasttok_s"]), None,
                 128 / float(t["decode128_eager_s"]), t.get("peak_rss_mib", "?")))
print(f"Llama 3.2 1B shape, bfloat16 checkpoint ({wbytes / 1e9:.2f} GB), {threads} threads; "
      f"read bandwidth {bw:.2f} GB/s, decode bound {bound:.1f} tok/s\n")
print("| | " + " | ".join(c[0] for c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
print("| prefill 512, last-token logits: tok/s | " + " | ".join(f"{c[1]:.1f}" for c in cols) + " |")
print("| prefill 128: tok/s | " + " | ".join(f"{c[2]:.1f}" if c[2] else "" for c in cols) + " |")
print("| decode 128 after 128: tok/s (% of the bound) | " +
      " | ".join(f"{c[3]:.2f} ({100 * c[3] / bound:.0f}%)" for c in cols) + " |")
print("| peak RSS MiB | " + " | ".join(str(c[4]) for c in cols) + " |")
PY
