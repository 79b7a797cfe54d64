#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang into build-fuzz and runs each for SECONDS
# (default 20) over a copy of its seed corpus. Fails on any crash, leak, timeout or OOM; the
# input that caused it is kept under build-fuzz/crashes/<target>/. See docs/fuzzing.md.
set -eu
cd "$(dirname "$0")/.."
secs=${1:-20}
dir=build-fuzz
targets=${FUZZ_TARGETS:-"fuzz_safetensors fuzz_config_json fuzz_tokenizer fuzz_yaml_config fuzz_gguf fuzz_chat_template"}

if ! command -v clang >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
    echo "installing: clang libclang-rt-14-dev"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
fi

echo "== $dir (clang, libFuzzer + ASan + UBSan, ${secs}s per target)"
CC=clang cmake -S . -B "$dir" -DLLMOPT_FUZZ=ON -DLLMOPT_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" --target fuzz -j"$(nproc)" >/dev/null

status=0
for t in $targets; do
    work=$dir/corpus/$t crashes=$dir/crashes/$t log=$dir/$t.log
    rm -rf "$work" "$crashes"
    mkdir -p "$work" "$crashes"
    cp tests/fuzz/corpus/$t/* "$work"/
    dict=""
    [ -f tests/fuzz/dict/$t.dict ] && dict=-dict=tests/fuzz/dict/$t.dict
    rc=0
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$dir/tests/fuzz/$t" $dict -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$crashes/" "$work" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || true)
    if [ "$rc" -eq 0 ]; then
        printf '%-18s ok      %10s execs  %6s/s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$cov"
    else
        status=1
        printf '%-18s FAILED  (exit %d) see %s, input kept in %s\n' "$t" "$rc" "$log" "$crashes"
        grep -E 'ERROR: |runtime error|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/    /'
    fi
done
exit $status
