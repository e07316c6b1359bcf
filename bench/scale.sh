#!/usr/bin/env bash
# Issue 13's figures at several sizes, and their plot.
#
#   bench/scale.sh [N,N,...]        (default 10000,100000; a run of 1000000 takes about 4 minutes)
#
# Builds the release binary, runs `kmeta bench scale` once per N (real processes on
# 127.0.0.1; each run removes its data), appends each run's figures to
# target/bench-scale.jsonl and plots them to docs/bench-scale.png with matplotlib from a
# venv of its own (target/plotenv).
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${1:-10000,100000}
cargo build --release --locked
out=target/bench-scale.jsonl
rm -f "$out"
/usr/bin/time -v ./target/release/kmeta bench scale --partitions "$NS" --json "$out"
if ! target/plotenv/bin/python -c 'import matplotlib' >/dev/null 2>&1; then
  python3 -m venv target/plotenv
  target/plotenv/bin/pip install -q matplotlib
fi
target/plotenv/bin/python bench/plot-scale.py "$out" docs/bench-scale.png
echo "figures: $out; plot: docs/bench-scale.png"
