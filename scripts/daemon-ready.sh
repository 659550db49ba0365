# Sourced by the benchmark scripts. wait_ready waits until the daemon started as $1 (its pid) answers
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

# Starts tansu in memory on 127.0.0.1:$1 (its log: $2), sets $broker to its pid, and waits
# until it listens; if it exits first, prints its log and fails.
start_tansu() {
  local port=$1 log=$2 here
  here="$(dirname "${BASH_SOURCE[0]}")"
  "$here/install-tansu.sh" >/dev/null
  "$here/tansu-broker.sh" "$port" >"$log" 2>&1 &
  broker=$!
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$broker" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "tansu never listened on 127.0.0.1:$port" >&2
  exit 1
}
