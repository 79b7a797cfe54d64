#!/usr/bin/env bash
# Writes data/kjv.txt: the King James Bible from Debian's bible-kjv, one verse per line, without
# the verse references (the training text of our own small model, configs/pretrain-kjv.yaml).
set -eu
cd "$(dirname "$0")/.."
if ! command -v bible >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bible-kjv >/dev/null
fi
mkdir -p data
bible -f Gen1:1-Rev22:21 | sed 's/^[1-3A-Za-z]*[0-9]*:[0-9]* *//' > data/kjv.txt.tmp
mv data/kjv.txt.tmp data/kjv.txt
echo "data/kjv.txt: $(wc -l < data/kjv.txt) verses, $(wc -c < data/kjv.txt) bytes"
