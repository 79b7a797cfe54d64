#!/usr/bin/env bash
# Wanda and SparseGPT wall time on the GPT-2 124M shape, llmopt beside the papers' procedure in
# torch (bench/torch_prune.py, a transcription of the reference repositories' code, which are not
# on PyPI), same threads, same calibration sequences: unstructured 50%, 128 sequences of 512
# tokens of the KJV text. llmopt runs group by group (its default, sequential); the reference
# code block by block.
#
#   bench/prune_time.sh BUILD_DIR [MODEL_DIR [THREADS]]
#
# MODEL_DIR: default build-bench/gpt2-124m (made with bench/torch_speed.py make when missing),
# given kjv-tiny's tokenizer as bench/gptq_time.sh does. Environment: N_SAMPLES (128), SEQ_LEN
# (512), METHODS ("wanda sparsegpt"), PYTHON (the torch interpreter: build-bench/torch2-venv's
# when it exists, which bench/run.sh makes, else .venv's). Prints one line a method and side.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:?usage: prune_time.sh BUILD_DIR [MODEL_DIR [THREADS]]}" && pwd)"
model="${2:-$root/build-bench/gpt2-124m}"
threads="${3:-2}"
host="$build/host/llmopt-host"
n="${N_SAMPLES:-128}" len="${SEQ_LEN:-512}"
py="${PYTHON:-}"
[ -n "$py" ] || { [ -x "$root/build-bench/torch2-venv/bin/python" ] && py="$root/build-bench/torch2-venv/bin/python" || py="$root/.venv/bin/python"; }
[ -x "$host" ] || { echo "no $host: build first" >&2; exit 1; }
[ -f "$root/data/kjv.txt" ] || { echo "data/kjv.txt is missing: scripts/kjv-text.sh makes it" >&2; exit 1; }
if [ ! -f "$model/model.safetensors" ]; then
    echo "making $model" >&2
    "$root/.venv/bin/python" "$root/bench/torch_speed.py" make "$model"
fi
model="$(cd "$model" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/m"
ln -s "$model/config.json" "$model/model.safetensors" "$tmp/m/"
ln -s "$root/models/kjv-tiny/tokenizer.json" "$root/models/kjv-tiny/tokenizer_config.json" "$tmp/m/"
head -c 2000000 "$root/data/kjv.txt" >"$tmp/calib.txt" # ~450k tokens: the windows spread over it
export OPENBLAS_NUM_THREADS=1 # the cpu plugin runs OpenBLAS inside host threads
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "cpu=$(lscpu | sed -n 's/^Model name: *//p') cpus=$(nproc) threads=$threads n_samples=$n seq_len=$len" \
     "openblas_core=${OPENBLAS_CORETYPE:-openblas_default} git=$(git -C "$root" rev-parse --short HEAD)"
for method in ${METHODS:-wanda sparsegpt}; do
    cat >"$tmp/$method.yaml" <<YAML
name: bench-prune-$method
model: $tmp/m
data:
  train: {path: $tmp/calib.txt}
stages:
  - {id: p, uses: prune.$method, with: {sparsity: 0.5, n_samples: $n, seq_len: $len}}
YAML
    "$host" --plugins "$build/plugins" --threads "$threads" -q run "$tmp/$method.yaml" --out "$tmp/run-$method" --jobs 1 \
        >/dev/null
    python3 - "$tmp/run-$method/report.json" "$method" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["stages"][0]
m = {x["name"]: x["value"] for x in s["metrics"]}
print(f"llmopt {sys.argv[2]}: wall_s={s['wall_s']:.1f} peak_rss_mib={s['peak_rss_bytes'] / 2**20:.0f} "
      f"sparsity={m['sparsity']:.4f}")
PY
    echo "torch  $method: $(OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "$py" "$root/bench/torch_prune.py" \
        "$method" "$tmp/m" "$tmp/calib.txt" --n-samples "$n" --seq-len "$len" --threads "$threads")"
done
