#!/usr/bin/env bash
# Resident memory per lead of the release daemon on its embedded default (config/leadwatch.toml:
# the in-memory broker, the `web` source, the shipped rules), fed by loadgen with realistic
# payloads (a ~40-field vendor snapshot with 1-2 KB of text, then a call, per lead).
#
#   scripts/bench-memory.sh [--leads N] [--events-per-lead K] [--ingest-only]
#                           [--concurrency C] [--batch B] [--port P]
#   scripts/bench-memory.sh --soak 10m [--leads 100000] …
#
# Default: N = 200000 leads, K = 2 (every lead updated, then called). The daemon's VmRSS is read
# from /proc once it answers /readyz, and again once the engine has consumed every accepted
# event (`leadwatch_engine_events_total`); it prints (after - before) / N.
# `--ingest-only` runs the same with `roles = ["ingest"]` (no engine, no dispatcher): what
# receiving and producing costs, for comparison.
# The embedded broker keeps its topics in the daemon's own memory, but bounded: librdkafka's mock
# cluster trims each partition to 5 MiB (src/bus/backlog.rs), so past the first few hundred MB
# the growth per lead is the daemon's own. (`leadwatch dev-broker` in its own process would
# not do: without the embedded backlog guard it trims records the engine has not read yet.)
# `--soak DURATION` instead posts at full speed for DURATION over the leads (default 100000),
# samples VmRSS every minute, and prints the first minute's against the end and their ratio.
set -euo pipefail
. "$(dirname "$0")/daemon-ready.sh"

leads="" per_lead=2 ingest_only=0 concurrency=32 batch=10 port=18088 soak=""
while [ $# -gt 0 ]; do
  case "$1" in
    --leads) leads="$2"; shift 2 ;;
    --events-per-lead) per_lead="$2"; shift 2 ;;
    --ingest-only) ingest_only=1; shift ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --soak) soak="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
done
[ -n "$leads" ] || { [ -n "$soak" ] && leads=100000 || leads=200000; }

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --quiet --bin leadwatch --bin loadgen
secret='whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' # the example config's public demo secret
dir="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# The example config, its rules named by absolute path, on its own port; ingest alone if asked.
{
  [ "$ingest_only" = 1 ] && echo 'roles = ["ingest"]'
  sed -e "s|^rules = .*|rules = \"$root/config/rules.toml\"|" \
      -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" config/leadwatch.toml
} >"$dir/leadwatch.toml"

target/release/leadwatch run --config "$dir/leadwatch.toml" >"$dir/alerts.jsonl" 2>"$dir/daemon.log" &
pid=$!
base="http://127.0.0.1:$port"
wait_ready "$pid" "$base" "$dir/daemon.log"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$pid/status"; }
metric() { # the sum of a metric's series
  curl -fs "$base/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d\n", s}'
}
before=$(rss_kb)
mode=$([ "$ingest_only" = 1 ] && echo "ingest only" || echo "ingest, engine, dispatch")

if [ -n "$soak" ]; then
  echo "soak: $soak at full speed over $leads leads ($mode); RSS before: $((before / 1024)) MB"
  target/release/loadgen --url "$base/webhooks/web" --secret "$secret" --payload realistic --retry \
    --leads "$leads" --duration "$soak" --concurrency "$concurrency" --batch "$batch" \
    >"$dir/loadgen.out" &
  load=$!
  minute=0 first=""
  while kill -0 "$load" 2>/dev/null; do
    for _ in $(seq 60); do kill -0 "$load" 2>/dev/null && sleep 1; done
    kill -0 "$load" 2>/dev/null || break
    minute=$((minute + 1)) now=$(rss_kb)
    [ -n "$first" ] || first=$now
    echo "minute $minute: RSS $((now / 1024)) MB, engine leads $(metric leadwatch_engine_leads)"
  done
  wait "$load"
  cat "$dir/loadgen.out"
  end=$(rss_kb)
  [ -n "$first" ] || first=$end
  awk -v f="$first" -v e="$end" 'BEGIN {
    printf "soak: RSS after the first minute %.0f MB, at the end %.0f MB: end / first = %.2f\n", f / 1024, e / 1024, e / f
  }'
  exit 0
fi

total=$((leads * per_lead))
echo "memory: $leads leads, $total events, realistic payloads ($mode)"
target/release/loadgen --url "$base/webhooks/web" --secret "$secret" --payload realistic --retry \
  --leads "$leads" --events "$total" --concurrency "$concurrency" --batch "$batch" | tee "$dir/loadgen.out"
accepted=$(awk -F= '/^accepted_events=/ {print $2}' "$dir/loadgen.out")
if [ "$ingest_only" = 0 ]; then
  # Until the engine has consumed every accepted event (at most 30 minutes).
  for _ in $(seq 1800); do
    consumed=$(metric leadwatch_engine_events_total)
    [ "$consumed" -ge "$accepted" ] && break
    sleep 1
  done
  echo "engine consumed $consumed of $accepted events; it holds $(metric leadwatch_engine_leads) leads"
fi
after=$(rss_kb)
awk -v b="$before" -v a="$after" -v n="$leads" -v peak="$(hwm_kb)" 'BEGIN {
  printf "memory: RSS %.0f MB before, %.0f MB after (peak %.0f MB): %.0f resident bytes per lead\n", b / 1024, a / 1024, peak / 1024, (a - b) * 1024 / n
}'
