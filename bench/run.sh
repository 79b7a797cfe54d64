#!/usr/bin/env bash
# The llmopt speed bench in one command: builds what it needs, makes the GPT-2 124M random-init
# checkpoint, measures the machine (OpenBLAS sgemm peak, read bandwidth), llmopt and PyTorch CPU
# side by side at the same thread count, and prints one table. See bench/README.md.
#
#   bench/run.sh                      # everything, 2 threads, 3 repeats of each process
#   THREADS=2 REPEATS=5 bench/run.sh
#   TORCH2=1 bench/run.sh             # also (make and) use the PyPI torch venv (build-bench/torch2-venv)
#   SKIP_BUILD=1 bench/run.sh         # use build-bench as it is
#
# Results (key=value files and table.md) go to build-bench/bench-results/<date-time>/.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-bench"
threads="${THREADS:-2}"
reps="${REPEATS:-3}"
cache="$build/bench-cache"
model="$cache/gpt2-124m-random"
bin="$build/benchbin"
res="$build/bench-results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$cache" "$bin" "$res"
log() { printf '== %s (load average %s)\n' "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }

# 1. build: llmopt (Release) and the two C probes
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building llmopt (Release) in $build"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j2 >/dev/null
fi
cc -O2 -march=native -I"$root/host" -o "$bin/sgemm_peak" "$root/bench/sgemm_peak.c" "$root/host/plugin/blas_env.c" \
    $(pkg-config --cflags --libs openblas)
cc -O2 -march=native -pthread -o "$bin/membw" "$root/bench/membw.c"

# 2. Python: the pinned interop venv (Debian's torch 1.13); optionally a newer PyPI torch
[ -x "$root/.venv/bin/python" ] || "$root/scripts/interop-venv.sh"
pys=("$root/.venv/bin/python")
t2="$build/torch2-venv"
if [ "${TORCH2:-0}" = 1 ] && [ ! -x "$t2/bin/python" ]; then
    # PyPI's Linux torch wheels are CUDA builds: install torch without its nvidia-* dependencies,
    # then only the few CUDA libraries its shared objects are linked against that this machine
    # does not already have (see bench/README.md); failure here only drops the column.
    log "making $t2"
    (/usr/bin/python3 -m venv "$t2" &&
        "$t2/bin/pip" install -q --disable-pip-version-check --no-deps -r "$root/bench/requirements-torch2.txt") || echo "torch2 venv: install failed" >&2
fi
if [ -x "$t2/bin/python" ]; then
    if "$t2/bin/python" -c 'import torch; torch.ones(2) @ torch.ones(2)' 2>/dev/null; then
        pys+=("$t2/bin/python")
    else
        echo "torch2 venv: torch does not import here; left out" >&2
    fi
fi

# 3. the checkpoint
if [ ! -f "$model/model.safetensors" ]; then
    log "making $model"
    "$root/.venv/bin/python" "$root/bench/torch_speed.py" make "$model"
fi

# 4. machine
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | tr ' ' '_')"
    echo "cpus=$(nproc)"
    echo "mem_kib=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '_')"
} >"$res/machine.txt"
cpu_some() { sed -n 's/^some avg10=[^ ]* avg60=[^ ]* avg300=[^ ]* total=\([0-9]*\)/\1/p' /proc/pressure/cpu 2>/dev/null || true; }
psi0="$(cpu_some)" t_start="$(date +%s)"

# 5. measurements (threads: OpenBLAS/OpenMP pinned so nothing oversubscribes the cores)
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
. "$root/scripts/blas-core.sh"
blas_core_export "$build" bench
echo "openblas_core=${OPENBLAS_CORETYPE:-openblas_default} cpu_family_model=$(lscpu | sed -n 's/^CPU family: *//p').$(lscpu | sed -n 's/^Model: *//p')" >>"$res/machine.txt"
log "read bandwidth"
"$bin/membw" --threads "1,$threads" | tee "$res/membw.txt" >&2
log "OpenBLAS sgemm"
OPENBLAS_NUM_THREADS="$threads" "$bin/sgemm_peak" --threads "1,$threads" | tee "$res/sgemm.txt" >&2
log "llmopt, $threads threads"
"$root/bench/llmopt_speed.sh" "$build" "$model" "$threads" "$reps" | tee "$res/llmopt.txt" >&2
if [ "$threads" != 1 ]; then
    log "llmopt, 1 thread"
    "$root/bench/llmopt_speed.sh" "$build" "$model" 1 1 | tee "$res/llmopt_t1.txt" >&2
fi
for py in "${pys[@]}"; do
    tag="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
    log "torch $tag, $threads threads"
    "$py" "$root/bench/torch_speed.py" speed "$model" --threads "$threads" --repeats 5 2>/dev/null |
        tee "$res/torch-$tag.txt" >&2
    best_wall="" max_rss=0
    for r in $(seq 1 "$reps"); do
        t0="$(date +%s.%N)"
        /usr/bin/time -v -o "$res/.time" "$py" "$root/bench/torch_speed.py" load "$model" --threads "$threads" \
            >"$res/.load$r" 2>/dev/null
        t1="$(date +%s.%N)"
        wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')"
        rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$res/.time")"
        [ "$rss" -gt "$max_rss" ] && max_rss="$rss"
        if [ -z "$best_wall" ] || awk -v a="$wall" -v b="$best_wall" 'BEGIN{exit !(a < b)}'; then
            best_wall="$wall"
            cp "$res/.load$r" "$res/.load-best"
        fi
    done
    {
        cat "$res/.load-best"
        echo "process_wall_s=$best_wall"
        echo "process_peak_rss_mib=$(awk -v k="$max_rss" 'BEGIN{printf "%.1f", k / 1024}')"
    } >"$res/torch-$tag-load.txt"
    rm -f "$res"/.load* "$res/.time"
    cat "$res/torch-$tag-load.txt" >&2
done
{
    echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '_')"
    # share of the bench's wall time in which some runnable task waited for a CPU (PSI)
    psi1="$(cpu_some)"
    [ -n "$psi0" ] && [ -n "$psi1" ] &&
        echo "cpu_pressure_pct=$(awk -v a="$psi0" -v b="$psi1" -v t="$(($(date +%s) - t_start))" 'BEGIN{printf "%.0f", (b - a) / 1e4 / (t > 0 ? t : 1)}')" || true
} >>"$res/machine.txt"

# 6. the table
python3 "$root/bench/summarize.py" "$res" "$model" | tee "$res/table.md"
echo
echo "results: $res"
