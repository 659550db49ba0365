# Sourced by the benchmark scripts: waits until the daemon started as $1 (its pid) answers
# /readyz at $2 (its base URL); if it exits first, prints its log ($3) and fails.
wait_ready() {
  local pid=$1 base=$2 log=$3
  for _ in $(seq 600); do
    curl -fs "$base/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "the daemon never became ready" >&2
  exit 1
}
