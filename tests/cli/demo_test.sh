#!/usr/bin/env bash
# The README's demo (configs/demo.yaml on models/kjv-tiny) runs, every stage succeeds, the
# samples are in the report, and, when LIMIT_S > 0, the run's own wall time (report.json's
# wall_s, the pipeline from config to last stage) is at most LIMIT_S seconds: the 5-minute goal.
# tests/CMakeLists.txt passes 300 for optimised builds and 0 (no limit) for Debug and sanitizer
# builds, whose speed the goal is not about. The process's CPU time and the load average are
# printed either way, so a failure on a busy machine can be told from a slow demo.
# Usage: demo_test.sh HOST PLUGINS_DIR LIMIT_S (run from the source root)
set -u
host="$1" plugins="$2" limit="$3"
d="$(mktemp -d)"
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

load0="$(cut -d' ' -f1-3 /proc/loadavg)"
"$host" --plugins "$plugins" -q run configs/demo.yaml --out "$d/run" >"$d/out.txt" 2>"$d/err.txt" ||
    { cat "$d/out.txt" "$d/err.txt" >&2; fail "the demo failed"; }
load1="$(cut -d' ' -f1-3 /proc/loadavg)"
# user + system CPU seconds of the finished child (bash's `times`, second line: children)
times >"$d/times" # in this shell: a pipe would run it in a subshell, which has no children
cpu="$(sed -n 2p "$d/times" | awk '{ split($1, u, "m"); split($2, s, "m"); printf "%.1f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')"
grep -q '4 ok, 0 failed' "$d/out.txt" || { cat "$d/out.txt" >&2; fail "not every stage succeeded"; }
grep -q '"texts"' "$d/run/report.json" || fail "report.json has no samples"
wall="$(python3 -c 'import json, sys; print("%.1f" % json.load(open(sys.argv[1]))["wall_s"])' "$d/run/report.json")"
echo "demo: wall ${wall} s (report.json), CPU ${cpu} s, load average ${load0} before, ${load1} after, limit ${limit} s"
if [ "$limit" != 0 ] && awk -v w="$wall" -v l="$limit" 'BEGIN { exit !(w > l) }'; then
    fail "the demo took ${wall} s, over its ${limit} s goal (CPU ${cpu} s; load average ${load0} before, ${load1} after)"
fi
echo ok
