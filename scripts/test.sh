#!/usr/bin/env bash
# The README's second command: install what is missing, then build and run the whole suite
# twice: warnings as errors, then under AddressSanitizer + UndefinedBehaviorSanitizer; then the
# interop tests (tests/interop: our outputs against transformers/tokenizers in a pinned venv);
# then 15 s of each libFuzzer target (scripts/fuzz.sh, clang).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
status=0
for cfg in "build-test:-DLLMOPT_WERROR=ON" "build-asan:-DLLMOPT_WERROR=ON -DLLMOPT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"; do
    dir=${cfg%%:*} flags=${cfg#*:}
    echo "== $dir ($flags)"
    cmake -S . -B "$dir" $flags >/dev/null
    cmake --build "$dir" -j"$jobs" >/dev/null
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir "$dir" -j"$jobs" --output-on-failure || status=1
done
echo "== interop (tests/interop, against build-test)"
tests/interop/run.sh build-test || status=1
echo "== fuzz (tests/fuzz, 15 s per target)"
scripts/fuzz.sh 15 || status=1
exit $status
