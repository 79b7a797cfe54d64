#!/usr/bin/env bash
# The finetune stages' throughput metrics mean what they say, on models/kjv-tiny with the real
# plugins (tests/CMakeLists.txt runs this beside the demo):
#   text: tokens_per_s x train_s = batch x seq_len x steps = train_tokens, and every input
#         position of a packed text window is a target, so target_tokens_per_s = tokens_per_s;
#   jsonl-sft: the same token count, while the masked prompts make target_tokens_per_s smaller.
# Usage: finetune_metrics.sh HOST PLUGINS_DIR (run from the source root)
set -u
host="$1" plugins="$2"
d="$(mktemp -d)"
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cat >"$d/ft.yaml" <<EOF
name: ft-metrics
model: models/kjv-tiny
seed: 3
data:
  text: configs/data/kjv-eval.txt
  sft: configs/data/kjv-sft.jsonl
stages:
  - {id: text, uses: finetune.full, with: {data: text, batch: 2, seq_len: 32, steps: 4, shuffle: false}}
  - {id: sft, uses: finetune.lora, with: {data: sft, format: jsonl-sft, batch: 2, seq_len: 64, steps: 4}}
EOF
"$host" -q --plugins "$plugins" --threads 2 run "$d/ft.yaml" --out "$d/run" --jobs 1 >"$d/out.txt" 2>&1 ||
    { cat "$d/out.txt" >&2; fail "the run failed"; }
python3 - "$d/run/report.json" <<'PY' || exit 1
import json, sys
r = json.load(open(sys.argv[1]))
st = {s["id"]: s for s in r["stages"]}
def m(sid):
    return {x["name"]: x["value"] for x in st[sid]["metrics"]}
bad = []
def check(ok, what):
    if not ok:
        bad.append(what)
for sid in ("text", "sft"):
    x = m(sid)
    n = 2 * (32 if sid == "text" else 64) * 4
    check(x["train_tokens"] == n, f"{sid}: train_tokens {x['train_tokens']} != batch x seq x steps = {n}")
    check(abs(x["tokens_per_s"] * x["train_s"] - n) < 1e-6 * n,
          f"{sid}: tokens_per_s {x['tokens_per_s']} x train_s {x['train_s']} != {n}")
    check(0 < x["train_s"] <= st[sid]["wall_s"], f"{sid}: train_s {x['train_s']} outside (0, stage wall {st[sid]['wall_s']}]")
    check(x["steady_tokens_per_s"] > 0, f"{sid}: steady_tokens_per_s {x['steady_tokens_per_s']}")
    check(0 < x["train_cpu_s"] and x["steady_tokens_per_cpu_s"] > 0,
          f"{sid}: train_cpu_s {x['train_cpu_s']}, steady_tokens_per_cpu_s {x['steady_tokens_per_cpu_s']}")
t, s = m("text"), m("sft")
check(t["target_tokens_per_s"] == t["tokens_per_s"],
      f"text: target_tokens_per_s {t['target_tokens_per_s']} != tokens_per_s {t['tokens_per_s']}")
check(0 < s["target_tokens_per_s"] < 0.9 * s["tokens_per_s"],
      f"sft: target_tokens_per_s {s['target_tokens_per_s']} not below tokens_per_s {s['tokens_per_s']}")
for b in bad:
    print("FAIL:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
echo ok
