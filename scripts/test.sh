#!/usr/bin/env bash
# The README's second command: install what is missing, then build and run the whole suite
# twice: warnings as errors, then under AddressSanitizer + UndefinedBehaviorSanitizer; then the
# interop tests (tests/interop: our outputs against transformers/tokenizers in a pinned venv);
# then 15 s of each libFuzzer target (scripts/fuzz.sh, clang).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
status=0 passed=0 failed=0
step() { # NAME COMMAND...: runs one step of the suite and counts it
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; echo "== step failed: $name"; fi
}
for cfg in "build-test:-DLLMOPT_WERROR=ON" "build-asan:-DLLMOPT_WERROR=ON -DLLMOPT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"; do
    dir=${cfg%%:*} flags=${cfg#*:}
    echo "== $dir ($flags)"
    cmake -S . -B "$dir" $flags >/dev/null
    cmake --build "$dir" -j"$jobs" >/dev/null
    step "ctest $dir" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --test-dir "$dir" -j"$jobs" --output-on-failure
done
echo "== interop (tests/interop, against build-test)"
step interop tests/interop/run.sh build-test
echo "== fuzz (tests/fuzz, 15 s per target)"
step fuzz scripts/fuzz.sh 15
# one closing line over the four steps (each step's own runner printed its test counts above)
echo "steps: $passed passed, $failed failed"
exit $status
