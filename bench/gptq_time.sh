#!/usr/bin/env bash
# GPTQ wall time on the GPT-2 124M shape (issue 5's goal: under 2 minutes on 2 cores): one
# quantize.gptq stage, 4-bit groups of 128 (asymmetric), true-sequential, 128 calibration
# sequences of 512 tokens of the KJV text's training split, under /usr/bin/time -v.
#
#   bench/gptq_time.sh BUILD_DIR [MODEL_DIR [THREADS]]
#
# MODEL_DIR: default build-bench/gpt2-124m (made with bench/torch_speed.py make when missing); it
# is given kjv-tiny's tokenizer so llmopt can read the text (its 4096 ids are all inside GPT-2's
# 50257; the ids do not change the work). Environment: N_SAMPLES (128), SEQ_LEN (512), BITS (4),
# GROUP (128). Prints wall_s, user_s, peak_rss_mib, and the stage's own metrics; writes
# nothing outside a temporary directory.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:?usage: gptq_time.sh BUILD_DIR [MODEL_DIR [THREADS]]}" && pwd)"
model="${2:-$root/build-bench/gpt2-124m}"
threads="${3:-2}"
host="$build/host/llmopt-host"
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
cat >"$tmp/gptq.yaml" <<YAML
name: bench-gptq-time
model: $tmp/m
data:
  train: {path: $root/data/kjv.txt, split: "0:95%"}
stages:
  - {id: gptq, uses: quantize.gptq,
     with: {bits: ${BITS:-4}, group_size: ${GROUP:-128}, sym: false, n_samples: ${N_SAMPLES:-128}, seq_len: ${SEQ_LEN:-512}}}
YAML
export OPENBLAS_NUM_THREADS=1 # the cpu plugin runs OpenBLAS inside host threads
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "cpu=$(lscpu | sed -n 's/^Model name: *//p') cpus=$(nproc) threads=$threads openblas_core=${OPENBLAS_CORETYPE:-openblas_default} git=$(git -C "$root" rev-parse --short HEAD)"
/usr/bin/time -v -o "$tmp/time" "$host" --plugins "$build/plugins" --threads "$threads" run "$tmp/gptq.yaml" \
    --out "$tmp/run" --jobs 1 >&2
python3 - "$tmp/time" "$tmp/run/report.json" <<'PY'
import json, re, sys
t = open(sys.argv[1]).read()
def field(name):
    return re.search(re.escape(name) + r": (.*)", t).group(1).strip()
wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
print(f"wall_s={secs:.1f} user_s={float(field('User time (seconds)')):.1f} "
      f"peak_rss_mib={int(field('Maximum resident set size (kbytes)')) / 1024:.0f}")
for s in json.load(open(sys.argv[2]))["stages"]:
    for m in s.get("metrics", []):
        print(f"{s['id']}.{m['name']}={m['value']}")
PY
