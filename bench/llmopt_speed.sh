#!/usr/bin/env bash
# llmopt side of the speed bench: prints `key=value` lines (bench/run.sh collects them).
#
#   bench/llmopt_speed.sh BUILD_DIR MODEL_DIR [THREADS [REPEATS]]
#   PRECISION=medium bench/llmopt_speed.sh ...   # the pipeline's matmul_precision (default highest)
#
# speed: the eval.speed stage (plugins/eval/speed.c) through `llmopt-host run`, REPEATS separate
#   runs; prefill times inside a run are already the best of 5, and each key printed is the best
#   over the runs: prefill512_s, prefill128_s, decode128_s (128 single-token steps after a 128-token
#   prompt, the steps only); peak_rss_mib is the largest of the runs'.
# load: `llmopt-host forward MODEL --ids 1` end to end under /usr/bin/time -v (plugins, config,
#   safetensors mmap, one 1-token forward), REPEATS times: load_forward1_s (best wall) and
#   load_peak_rss_mib.
set -eu
build="${1:?usage: llmopt_speed.sh BUILD_DIR MODEL_DIR [THREADS [REPEATS]]}"
model="$(cd "${2:?model dir}" && pwd)"
threads="${3:-2}"
reps="${4:-3}"
precision="${PRECISION:-highest}"
host="$build/host/llmopt-host"
plugins="$build/plugins"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1 # the cpu plugin runs OpenBLAS single-threaded inside host threads

cat >"$tmp/speed.yaml" <<EOF
name: bench-speed
model: $model
matmul_precision: $precision
stages:
  - {id: speed, uses: eval.speed, with: {repeats: 5, decode_tokens: 128}}
EOF

echo "llmopt_version=$("$host" --version | head -1)"
echo "llmopt_threads=$threads"
echo "llmopt_matmul_precision=$precision"
for r in $(seq 1 "$reps"); do
    "$host" -q --plugins "$plugins" --threads "$threads" run "$tmp/speed.yaml" --out "$tmp/run$r" --jobs 1 >/dev/null
    python3 - "$tmp/run$r/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = {x["name"]: x["value"] for x in r["stages"][0]["metrics"]}
print(f"run_prefill512_s={512 / m['prefill512_tok_s']:.5f}")
print(f"run_prefill128_s={128 / m['prefill128_tok_s']:.5f}")
print(f"run_decode128_s={128 / m['decode_tok_s']:.5f}")
print(f"run_peak_rss_mib={m['peak_rss_bytes'] / 1048576:.1f}")
PY
done >"$tmp/runs.txt"
cat "$tmp/runs.txt"
for k in prefill512_s prefill128_s decode128_s; do
    echo "$k=$(grep "^run_$k=" "$tmp/runs.txt" | cut -d= -f2 | sort -g | head -1)"
done
echo "peak_rss_mib=$(grep '^run_peak_rss_mib=' "$tmp/runs.txt" | cut -d= -f2 | sort -g | tail -1)"

for r in $(seq 1 "$reps"); do
    t0="$(date +%s.%N)"
    /usr/bin/time -v -o "$tmp/time$r" "$host" -q --plugins "$plugins" --threads "$threads" forward "$model" --ids 1 >/dev/null
    t1="$(date +%s.%N)"
    wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')"
    rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$tmp/time$r")"
    echo "run_load_forward1_s=$wall"
    echo "run_load_peak_rss_mib=$(awk -v k="$rss" 'BEGIN{printf "%.1f", k / 1024}')"
done >"$tmp/load.txt"
cat "$tmp/load.txt"
echo "load_forward1_s=$(grep '^run_load_forward1_s=' "$tmp/load.txt" | cut -d= -f2 | sort -g | head -1)"
echo "load_peak_rss_mib=$(grep '^run_load_peak_rss_mib=' "$tmp/load.txt" | cut -d= -f2 | sort -g | tail -1)"
