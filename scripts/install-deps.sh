#!/usr/bin/env bash
# Installs the Debian 12 packages llmopt builds and tests with (skips apt when all are present).
set -eu
pkgs="build-essential cmake pkg-config git python3 libyaml-dev libjansson-dev libuv1-dev libcmocka-dev libopenblas-dev
protobuf-c-compiler libprotobuf-c-dev libonnx-dev"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
