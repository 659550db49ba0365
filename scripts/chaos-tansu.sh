#!/usr/bin/env bash
# Chaos run (opt-in, not in .ci/run): several daemons (every role) in one group on tansu
# (scripts/tansu-broker.sh), load posted steadily with `loadgen` (every event makes a lead of its
# own sales-ready, so each acknowledged event owes exactly one first-touch alert), a local
# receiver counting the alerts, and every few minutes one member killed with SIGKILL and started
# again. At the end, once the alerts stopped arriving: alerts delivered once, doubled (an alert
# id received more than once), lost (an acknowledged lead never alerted), and extra (a lead
# alerted whose request was not answered 202: it landed although the daemon could not say so).
# Exits 1 when any alert was lost or doubled.
#
#   scripts/chaos-tansu.sh [--duration 30m] [--kill-every 3m] [--down 5s] [--members 3]
#       [--events-per-tick 200] [--tick 5] [--within 20s] [--static] [--profile release]
#       [--port 18190] [--broker-port 19490] [--receiver-port 18290] [--settle 300] [--keep DIR]
#       [--broker tansu|dev]
#
# --broker dev runs the same on `leadwatch dev-broker` (librdkafka's mock cluster, in memory; it
# keeps at most 100,000 records or 5 MiB per partition, so keep such runs short or light): a
# second group coordinator to compare tansu's rebalances with.
#
# --keep DIR runs in DIR (created; it must not hold an earlier run) and leaves it there: the
# members' logs (JSON lines: every "alert delivered" with its alert id), the kills and the
# members' pids (kills.txt, members.txt), every request the receiver took (requests.jsonl: alert
# id, lead, arrival, `webhook-timestamp`, and the member whose connection sent it, found from
# the connection's socket) and the accepted leads. `scripts/chaos-trace.py DIR` (run at the end
# when an alert came twice) says, per doubled alert, who sent each copy and when against the
# kills.
#
# --static sets `kafka.instance_id` (static membership) on each member; --profile debug uses the
# debug build (no release build needed). Durations are sleep(1)'s (`90s`, `3m`).
# Tansu keeps everything in memory and is known to lose acknowledged writes under load: a lost
# alert here is first a question for the broker (compare with the same run on a real cluster).
set -euo pipefail
. "$(dirname "$0")/daemon-ready.sh"

duration=30m kill_every=3m down=5s members=3 per_tick=200 tick=5 within=20s static=""
profile=release port=18190 bport=19490 rport=18290 settle=300 keep="" broker_kind=tansu
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --kill-every) kill_every="$2"; shift 2 ;;
    --down) down="$2"; shift 2 ;;
    --members) members="$2"; shift 2 ;;
    --events-per-tick) per_tick="$2"; shift 2 ;;
    --tick) tick="$2"; shift 2 ;;
    --within) within="$2"; shift 2 ;;
    --static) static=1; shift ;;
    --profile) profile="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --broker-port) bport="$2"; shift 2 ;;
    --receiver-port) rport="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    --broker) broker_kind="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
done

# `30m`, `90s`, `2h` or plain seconds, in seconds.
seconds() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --profile "$profile" --quiet --bin leadwatch --bin loadgen
dir_name=$profile
[ "$profile" = dev ] && dir_name=debug
bin="target/$dir_name"
secret='whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
sink_secret='whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD'
if [ -n "$keep" ]; then
  [ -e "$keep" ] && [ -n "$(ls -A "$keep")" ] && { echo "--keep $keep: not empty" >&2; exit 64; }
  mkdir -p "$keep"
  dir="$(cd "$keep" && pwd)"
else
  dir="$(mktemp -d)"
fi
broker="" receiver="" loader=""
declare -a pids
cleanup() {
  for p in "$loader" "${pids[@]}" "$receiver" "$broker"; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  if [ -n "$keep" ]; then echo "kept: $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

case "$broker_kind" in
  tansu) start_tansu "$bport" "$dir/broker.log" ;;
  dev)
    # The mock cluster binds a port of its own: its first line says which.
    "$bin/leadwatch" dev-broker --partitions 6 --topic-prefix chaos >"$dir/broker.out" \
      2>"$dir/broker.log" &
    broker=$!
    for _ in $(seq 300); do
      grep -q '^bootstrap=' "$dir/broker.out" 2>/dev/null && break
      kill -0 "$broker" 2>/dev/null || { cat "$dir/broker.log" >&2; exit 1; }
      sleep 0.1
    done
    bport=$(sed -n 's/^bootstrap=.*:\([0-9]*\)$/\1/p' "$dir/broker.out")
    [ -n "$bport" ] || { echo "dev-broker said no bootstrap address" >&2; exit 1; }
    ;;
  *) echo "--broker: tansu or dev, not $broker_kind" >&2; exit 64 ;;
esac

# The receiver: answers 200 to every alert, counts requests per alert id and the lead of each;
# GET /stats gives {"requests": N, "ids": {alert_id: [lead, count, [arrival, …]]}}. Each request
# is also a line of requests.jsonl: the alert id, the lead, the arrival (epoch seconds), the
# `webhook-timestamp` it was signed with, and the member that sent it: the process holding the
# connection's other end (looked up once per connection in /proc, among members.txt's pids).
cat >"$dir/receiver.py" <<'EOF'
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ids, lock, total = {}, threading.Lock(), [0]
port, run_dir = int(sys.argv[1]), sys.argv[2]
log = open(os.path.join(run_dir, "requests.jsonl"), "a", buffering=1)

def sender(peer_port):
    """(pid, member index) of the member whose socket is 127.0.0.1:peer_port, if any."""
    local, remote = ":%04X" % peer_port, ":%04X" % port
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in open(table).readlines()[1:]:
                f = line.split()
                if f[1].endswith(local) and f[2].endswith(remote):
                    inodes.add("socket:[%s]" % f[9])
        except OSError:
            pass
    try:
        members = [l.split()[:2] for l in open(os.path.join(run_dir, "members.txt"))]
    except OSError:
        members = []
    for pid, index in reversed(members):
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) in inodes:
                    return int(pid), int(index)
            except OSError:
                pass
    return None, None

class H(BaseHTTPRequestHandler):
    # Keep-alive, as a real receiver: the sender is looked up once per connection, as soon as
    # it is accepted (a member killed a moment later is still there to be named).
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.member = sender(self.client_address[1])
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        arrived = time.time()
        if self.member[0] is None:
            self.member = sender(self.client_address[1])
        try:
            lead = json.loads(body)["data"]["lead"]
        except Exception:
            lead = "?"
        alert_id = self.headers.get("webhook-id", "?")
        with lock:
            total[0] += 1
            entry = ids.setdefault(alert_id, [lead, 0, []])
            entry[1] += 1
            entry[2].append(time.strftime("%H:%M:%S", time.gmtime(arrived)))
            log.write(json.dumps({"id": alert_id, "lead": lead, "at": round(arrived, 3),
                "signed": self.headers.get("webhook-timestamp"), "pid": self.member[0],
                "member": self.member[1], "port": self.client_address[1]}) + "\n")
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def do_GET(self):
        with lock:
            body = json.dumps({"requests": total[0], "ids": ids}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class Server(ThreadingHTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address):
        # A killed member's connection: its alert was received and counted, the answer is lost.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)
Server(("127.0.0.1", port), H).serve_forever()
EOF
touch "$dir/members.txt" "$dir/kills.txt"
python3 "$dir/receiver.py" "$rport" "$dir" &
receiver=$!

cat >"$dir/rules.toml" <<EOF
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "$within"
EOF

config() { # member index
  local i=$1
  cat <<EOF
rules = "$dir/rules.toml"
shutdown_grace = "10s"
[server]
listen = "127.0.0.1:$((port + i))"
ack_timeout = "3s"
[kafka]
brokers = "127.0.0.1:$bport"
partitions = 6
replication_factor = 1
topic_prefix = "chaos"
group_id = "chaos"
session_timeout = "6s"
EOF
  [ -n "$static" ] && echo "instance_id = \"member-$i\""
  cat <<EOF
[sources.web]
kind = "generic"
secret = "$secret"
[sinks.receiver]
kind = "webhook"
url = "http://127.0.0.1:$rport/alerts"
secret = "$sink_secret"
[dispatch]
retry_schedule = ["1s", "5s", "30s", "1m", "5m"]
EOF
}

start_member() { # index
  local i=$1
  config "$i" >"$dir/member-$i.toml"
  # JSON lines: every delivery is logged with its alert id ("alert delivered").
  LEADWATCH_LOG_FORMAT=json "$bin/leadwatch" run --config "$dir/member-$i.toml" \
    >>"$dir/member-$i.log" 2>&1 &
  pids[i]=$!
  echo "${pids[i]} $i $(date +%s.%N)" >>"$dir/members.txt"
  wait_ready "${pids[i]}" "http://127.0.0.1:$((port + i))" "$dir/member-$i.log"
}

for i in $(seq 0 $((members - 1))); do start_member "$i"; done
echo "$members members ready on $broker_kind :$bport; receiver :$rport; $duration, a kill every $kill_every"

total=$(seconds "$duration")
end=$(( $(date +%s) + total ))
# The load: every tick, `per_tick` events to the next member that is up (a request cut off by a
# kill is simply not acknowledged).
(
  n=0
  while [ "$(date +%s)" -lt "$end" ]; do
    i=$(( n % members )); n=$((n + 1))
    "$bin/loadgen" --url "http://127.0.0.1:$((port + i))/webhooks/web" --secret "$secret" \
      --retry --concurrency 4 --batch 10 --leads 1000000000 --events "$per_tick" \
      --accepted-leads "$dir/accepted.txt" >>"$dir/loadgen.log" 2>&1 || true
    sleep "$tick"
  done
) &
loader=$!

kills=0 victim=0
every=$(seconds "$kill_every")
while [ $(( $(date +%s) + every )) -le "$end" ]; do
  sleep "$every"
  echo "$(date -u +%T) kill -9 member $victim"
  echo "$(date +%s.%N) $victim ${pids[victim]}" >>"$dir/kills.txt"
  kill -KILL "${pids[victim]}" 2>/dev/null || true
  wait "${pids[victim]}" 2>/dev/null || true
  kills=$((kills + 1))
  sleep "$(seconds "$down")"
  start_member "$victim"
  echo "$(date -u +%T) member $victim back"
  victim=$(( (victim + 1) % members ))
done
wait "$loader" || true
loader=""

stats() { curl -fs "http://127.0.0.1:$rport/stats"; }
acknowledged=$(sort -u "$dir/accepted.txt" 2>/dev/null | wc -l)
echo "load over: $acknowledged events acknowledged; waiting for the alerts (at most ${settle}s)"
# Settled: every acknowledged lead alerted and nothing new for 30 s, or the patience is over.
last="" still=0
for _ in $(seq "$settle"); do
  now=$(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; last=$now; fi
  [ "$now" -ge "$acknowledged" ] && [ "$still" -ge 30 ] && break
  sleep 1
done

stats >"$dir/stats.json"
# Offsets the broker no longer had when they were to be read (each member counts them since its
# last start): a loss there is the broker's, said loudly by the daemon, not skipped silently.
skipped=0
for i in $(seq 0 $((members - 1))); do
  n=$(curl -fs "http://127.0.0.1:$((port + i))/metrics" |
    awk '/^leadwatch_kafka_offsets_skipped_total/ {s += $2} END {print s + 0}')
  skipped=$((skipped + ${n%.*}))
done
echo "offsets skipped as deleted by the broker (members' current runs): $skipped"
status=0
python3 - "$dir/stats.json" "$dir/accepted.txt" "$kills" <<'EOF' || status=$?
import json, sys
stats = json.load(open(sys.argv[1]))
acked = set(l.strip() for l in open(sys.argv[2]) if l.strip())
per_lead = {}
arrivals = {}
for alert_id, (lead, count, at) in stats["ids"].items():
    per_lead.setdefault(lead, []).append(count)
    if count > 1:
        arrivals[at[-1]] = arrivals.get(at[-1], 0) + 1
once = sum(1 for c in (c for cs in per_lead.values() for c in cs) if c == 1)
doubled = {l: cs for l, cs in per_lead.items() if sum(cs) > 1}
lost = sorted(acked - per_lead.keys())
extra = sorted(per_lead.keys() - acked)
print(f"kills: {sys.argv[3]}")
print(f"events acknowledged (202): {len(acked)}; leads alerted (events applied): {len(per_lead)}")
print(f"alert requests received: {stats['requests']}")
print(f"alerts delivered once: {once}")
print(f"alerts doubled: {len(doubled)} {list(doubled.items())[:5]}")
print(f"repeats by the second they arrived (compare with the kills above): {sorted(arrivals.items())}")
examples = [(l, at) for l, (_, c, at) in ((v[0], v) for v in stats["ids"].values()) if c > 1][:5]
print(f"some repeated alerts' arrivals: {examples}")
print(f"acknowledged leads lost (never alerted): {len(lost)} {lost[:5]}")
print(f"leads alerted without a 202 (landed, unacknowledged): {len(extra)}")
sys.exit(1 if lost or doubled else 0)
EOF
# Who sent each copy of a doubled alert, and when against the kills.
if [ "$status" -ne 0 ] && [ -s "$dir/requests.jsonl" ]; then
  python3 "$root/scripts/chaos-trace.py" "$dir" || true
fi
exit "$status"
