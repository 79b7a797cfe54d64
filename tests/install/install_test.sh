#!/usr/bin/env bash
# Installs llmopt into a temporary prefix, builds the example plugin against the installed SDK
# alone (once with find_package(llmopt), once with pkg-config llmopt), and runs a pipeline with
# the installed host and each built plugin. Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null

# Only the installed tree from here on: copy the example out of the source tree.
cp -r "$src/examples/random-init" "$work/example"
cp "$src/examples/random-init/pipeline.yaml" "$work/demo.yaml"
[ -f "$prefix/include/llmopt/llmopt.h" ] || { echo "FAIL: SDK headers not installed"; exit 1; }
pc=$(find "$prefix" -name llmopt.pc | head -n1)
[ -n "$pc" ] || { echo "FAIL: llmopt.pc not installed"; exit 1; }

# 1. CMake package
cmake -S "$work/example" -B "$work/b-cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/b-cmake" >/dev/null
# 2. pkg-config, a plain Makefile
PKG_CONFIG_PATH=$(dirname "$pc") make -C "$work/example" >/dev/null
mkdir "$work/b-pc" && mv "$work/example/example_random_init.so" "$work/b-pc/"

# The example must export exactly one dynamic symbol of its own: the descriptor.
syms=$(nm -D --defined-only "$work/b-cmake/example_random_init.so" | awk '{print $3}' | grep -v '^_' || true)
[ "$syms" = "llmopt_plugin_v1" ] || { echo "FAIL: exported symbols: $syms"; exit 1; }

for b in b-cmake b-pc; do
    (cd "$work" && LLMOPT_PLUGIN_PATH= "$prefix/bin/llmopt-host" --plugins "$work/$b" run demo.yaml --out "run-$b" >/dev/null)
    grep -q '"status": "ok"' "$work/run-$b/report.json" || { echo "FAIL: pipeline with $b plugin"; exit 1; }
    [ -f "$work/run-$b/tiny/model/model.safetensors" ] || { echo "FAIL: no saved model with $b"; exit 1; }
done
echo "PASS: installed SDK builds the example both ways and the installed host runs it"
