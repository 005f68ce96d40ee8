#!/usr/bin/env bash
# A/B comparison of `thex bench e2e` between two thex binaries, run alternately.
#
# Usage: scripts/bench_e2e_ab.sh OLD_BINARY NEW_BINARY [PAIRS] [-- BENCH_OPTIONS...]
#   PAIRS          how many old/new pairs to run (default 2)
#   BENCH_OPTIONS  passed to `thex bench e2e` (default: --tokens 16 --tiny-tokens 128 --repeats 3)
#
# Prints every run's total seconds per configuration, then per binary the median over its runs
# and the new/old ratio. Build both binaries with the same profile (for example
# `cargo build --release -p thex` in two checkouts).
set -euo pipefail

old=$1
new=$2
pairs=${3:-2}
shift $(($# < 3 ? $# : 3))
[[ "${1:-}" == "--" ]] && shift
opts=("$@")
[[ ${#opts[@]} -eq 0 ]] && opts=(--tokens 16 --tiny-tokens 128 --repeats 3)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; flags: $(grep -o -w -E 'avx512ifma|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for i in $(seq 1 "$pairs"); do
    for side in old new; do
        bin=$old
        [[ $side == new ]] && bin=$new
        "$bin" bench e2e "${opts[@]}" --json 2>"$out/$side.$i.log" >"$out/$side.$i.json"
        echo "pair $i $side: load $(cut -d' ' -f1 /proc/loadavg)"
    done
done

python3 - "$out" "$pairs" <<'PY'
import json, statistics, sys
from pathlib import Path

out, pairs = Path(sys.argv[1]), int(sys.argv[2])
runs = {}
for side in ("old", "new"):
    for i in range(1, pairs + 1):
        for r in json.loads((out / f"{side}.{i}.json").read_text())["runs"]:
            key = f"{r['model']} @ {r['tokens']}"
            runs.setdefault(key, {}).setdefault(side, []).append(r["total_s"])
for key, sides in runs.items():
    o, n = statistics.median(sides["old"]), statistics.median(sides["new"])
    print(f"{key}: old {sides['old']} median {o:.2f} s; new {sides['new']} median {n:.2f} s; new/old {n / o:.3f}")
PY
