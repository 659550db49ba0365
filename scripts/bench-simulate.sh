#!/usr/bin/env bash
# `leadwatch simulate` throughput on vendor-shaped events: writes LEADS leads' worth of events
# (enginebench's vendor shape: HubSpot property changes and ~40-field Salesforce snapshots, about
# 4.1 lines per lead) to a temporary file, runs
#   leadwatch simulate --rules config/rules.toml --events FILE --scorecard CARD
# on it once, and prints events/s of wall time (reading and parsing the file included) and the
# peak resident memory. Release build.
#
#   scripts/bench-simulate.sh [LEADS]        # default 100000 (about 410,000 lines)
set -euo pipefail
leads="${1:-100000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --quiet --bin leadwatch --bin enginebench
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
target/release/enginebench --leads "$leads" --write-events "$dir/events.jsonl"
lines=$(wc -l <"$dir/events.jsonl")
start=$(date +%s%N)
/usr/bin/time -f '%M' -o "$dir/peak_kb" \
  target/release/leadwatch simulate --rules config/rules.toml --events "$dir/events.jsonl" \
  --scorecard "$dir/card.json" >"$dir/alerts.jsonl"
end=$(date +%s%N)
alerts=$(wc -l <"$dir/alerts.jsonl")
awk -v n="$lines" -v ns="$((end - start))" -v alerts="$alerts" -v peak="$(cat "$dir/peak_kb")" 'BEGIN {
  s = ns / 1e9
  printf "simulate: %d events in %.2f s wall: %.0f events/s (%d alerts; peak RSS %.0f MB)\n", n, s, n / s, alerts, peak / 1024
}'
