#!/usr/bin/env bash
# The README's first command: install what is missing, build, run the demo pipeline.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
build/host/llmopt-host --plugins build/plugins run configs/demo.yaml "$@"
