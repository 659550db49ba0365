#!/usr/bin/env python3
"""Traces the doubled alerts of a chaos run kept with `scripts/chaos-tansu.sh --keep DIR`.

    scripts/chaos-trace.py DIR [--partitions 6] [--around 60]

For each alert the receiver took more than once: every copy's arrival, the member (and process)
that sent it, the member logs' "alert delivered" lines for it, and where that stands against
the nearest kill before it. Each doubled alert is classed:

- kill window: the first copy came from a process killed within 10 s after sending it (it may
  not have recorded the delivery): the documented crash window. A kill's time is noted just
  before the signal, and what the process had written to its socket still arrives after it
  died: a copy read up to 1 s after that time counts as sent before the kill.
- one process twice: every copy came from the same process.
- two owners at once: the copies came from different live processes, and by their own logs
  both held the alert's partition (dispatcher) when they sent it: the group gave one partition
  to two members at once.
- two live members: the copies came from different live processes, not both owners by their
  logs: a ledger that missed a delivery.
- timed out, landed late: a copy reached the receiver after the sender's request timeout
  (`dispatch.request_timeout`, 10 s) had passed since it was signed: the sender saw its attempt
  time out and retried (under the same `webhook-id`), and the receiver took the first one late
  (a stalled receiver or host). At-least-once at a sink, as documented, not an ownership matter.
- kill window, sender gone: the first copy's sender could not be named (its process was
  gone) and it arrived from 2 s before a kill to 1 s after, every later copy from a live
  member.
- unknown sender: the receiver could not tell who sent a copy.

Then the times a partition had two owners at once by the members' own logs (per group), and,
per kill, the dispatcher's rebalance lines of every member from 5 s before the kill to
`--around` seconds after it (assignments, revocations, restores, late records, revocation waits),
with the doubled alerts' partitions marked.
"""
import argparse
import collections
import datetime
import json
import os
import sys


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as src/partitioner.rs)."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    n = len(data) // 4
    for i in range(n):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = data[4 * n :]
    if rest:
        for i in reversed(range(len(rest))):
            h ^= rest[i] << (8 * i)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def parse_ts(s: str) -> float:
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


# Dispatcher lines worth seeing around a rebalance (message prefixes).
REBALANCE = (
    "dispatcher assigned partitions",
    "dispatcher partitions revoked",
    "deliveries and retries restored",
    "late records",
    "merged deliveries a previous owner",
    "writing again the leads",
    "revocation waits",
    "revocation stopped waiting",
    "delivered as its partition was revoked",
    "revoked partitions' deliveries",
    "dispatcher started",
    "rebalance error",
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--around", type=float, default=60)
    ap.add_argument("--request-timeout", type=float, default=10, help="the members' dispatch.request_timeout, in seconds")
    ap.add_argument("--all-lines", action="store_true", help="print every rebalance line, not only the dispatcher's")
    args = ap.parse_args()
    d = args.dir

    requests = [json.loads(l) for l in open(os.path.join(d, "requests.jsonl")) if l.strip()]
    kills = []  # (time, member, pid)
    for l in open(os.path.join(d, "kills.txt")):
        t, member, pid = l.split()
        kills.append((float(t), int(member), int(pid)))
    starts = []  # (time, member, pid)
    for l in open(os.path.join(d, "members.txt")):
        f = l.split()
        starts.append((float(f[2]) if len(f) > 2 else 0.0, int(f[1]), int(f[0])))
    killed_at = {pid: t for t, _, pid in kills}

    def pid_of(member: int, t: float):
        """The process of `member` running at `t` (the last started before it)."""
        best = None
        for s, m, pid in sorted(starts):
            if m == member and s <= t + 1:
                best = pid
        return best

    def member_records(keep=lambda raw: True):
        """Each member's log records (JSON lines `keep` keeps), as (member, record)."""
        for name in sorted(os.listdir(d)):
            if not (name.startswith("member-") and name.endswith(".log")):
                continue
            member = int(name[len("member-") : -len(".log")])
            for raw in open(os.path.join(d, name), errors="replace"):
                if not keep(raw):
                    continue
                try:
                    yield member, json.loads(raw)
                except ValueError:
                    continue

    # Members' logs: deliveries per alert, and rebalance lines.
    delivered = collections.defaultdict(list)  # alert id -> [(time, member, pid, outcome)]
    lines = []  # (time, member, pid, message, fields)
    for member, rec in member_records():
        fields = rec.get("fields", {})
        msg = fields.get("message", "")
        t = parse_ts(rec["timestamp"])
        pid = pid_of(member, t)
        if msg == "alert delivered" or msg.startswith("delivered as its partition was revoked"):
            delivered[fields.get("alert_id")].append((t, member, pid, fields.get("outcome", msg)))
        target = rec.get("target", "")
        if msg.startswith(REBALANCE) and (args.all_lines or "dispatch" in target or "dispatcher" in msg):
            lines.append((t, member, pid, msg, fields, target))

    # Who held which partition when, by the members' own logs (assignments are incremental:
    # cooperative-sticky), per group; a killed process holds nothing after its kill.
    holds = {"dispatch": collections.defaultdict(list), "engine": collections.defaultdict(list)}
    for member, rec in member_records(lambda raw: "partitions" in raw or "stopping" in raw):
        fields = rec.get("fields", {})
        msg = fields.get("message", "")
        group = "dispatch" if msg.startswith("dispatcher ") else "engine" if msg.startswith("engine ") else None
        if group is None:
            continue
        t = parse_ts(rec["timestamp"])
        if msg.endswith(" stopping"):
            # Shutting down: it leaves the group without a revocation line.
            holds[group][pid_of(member, t)].append((t, "revoke", list(range(args.partitions))))
            continue
        if " partitions" not in msg:
            continue
        parts = json.loads(fields.get("partitions", "[]"))
        kind = "revoke" if "revoked" in msg else "assign"
        holds[group][pid_of(member, t)].append((t, kind, parts))

    def held(group, pid, partition, t):
        if pid in killed_at and t > killed_at[pid]:
            return False
        mine = set()
        for at, kind, parts in holds[group].get(pid, []):
            if at > t:
                break
            mine = mine | set(parts) if kind == "assign" else mine - set(parts)
        return partition in mine

    def overlaps(group):
        """(partition, start, end, pids) where two live processes held one partition."""
        times = sorted({at for evs in holds[group].values() for at, _, _ in evs} | set(killed_at.values()))
        out, open_ = [], {}
        for i, t in enumerate(times):
            for p in range(args.partitions):
                owners = tuple(sorted(pid for pid in holds[group] if held(group, pid, p, t)))
                key = (p, owners)
                if len(owners) > 1 and key not in open_:
                    open_[key] = t
                for k in [k for k in open_ if k[0] == p and k != key]:
                    out.append((p, open_.pop(k), t, k[1]))
        end = times[-1] if times else 0
        out += [(k[0], start, None, k[1]) for k, start in open_.items()]
        return sorted(out, key=lambda o: o[1])

    copies = collections.defaultdict(list)
    for r in requests:
        copies[r["id"]].append(r)
    doubled = {k: sorted(v, key=lambda r: r["at"]) for k, v in copies.items() if len(v) > 1}

    def kill_before(t: float):
        before = [k for k in kills if k[0] <= t]
        return before[-1] if before else None

    classes = collections.Counter()
    per_kill = collections.defaultdict(list)
    parts = collections.defaultdict(set)
    rows = []
    for alert_id, cs in sorted(doubled.items(), key=lambda kv: kv[1][0]["at"]):
        first = cs[0]
        pids = [c.get("pid") for c in cs]
        # Copies read up to 1 s after a kill's noted time were written before the signal landed.
        near_kill = any(-1 <= t - first["at"] <= 2 for t, _, _ in kills)
        late = [c for c in cs if c.get("signed") and c["at"] - int(c["signed"]) >= args.request_timeout - 1]
        if late:
            cls = "timed out, landed late"
        elif first.get("pid") is None and near_kill and all(p is not None for p in pids[1:]):
            cls = "kill window, sender gone"
        elif any(p is None for p in pids):
            cls = "unknown sender"
        elif len(set(pids)) == 1:
            cls = "one process twice"
        elif first["pid"] in killed_at and -1 <= killed_at[first["pid"]] - first["at"] <= 10:
            cls = "kill window"
        elif all(held("dispatch", c["pid"], partition_for(c["lead"], args.partitions), c["at"]) for c in cs):
            cls = "two owners at once"
        else:
            cls = "two live members"
        classes[cls] += 1
        k = kill_before(cs[-1]["at"])
        per_kill[k[0] if k else None].append(alert_id)
        p = partition_for(first["lead"], args.partitions)
        parts[k[0] if k else None].add(p)
        desc = []
        for c in cs:
            rel = f"+{c['at'] - k[0]:.1f}s" if k else "-"
            desc.append(f"{clock(c['at'])} ({rel}) member {c.get('member')} pid {c.get('pid')} signed {c.get('signed')}")
        logged = [f"{clock(t)} member {m} pid {pid} {o}" for t, m, pid, o in sorted(delivered.get(alert_id, []))]
        rows.append((cls, alert_id, first["lead"], p, desc, logged))

    print(f"doubled alerts: {len(doubled)}; by class: {dict(classes)}")
    for t, member, pid in kills:
        n = len(per_kill.get(t, []))
        print(f"kill {clock(t)} member {member} pid {pid}: {n} doubled after it; partitions {sorted(parts.get(t, []))}")
    print()
    shown = collections.Counter()
    for cls, alert_id, lead, p, desc, logged in rows:
        shown[cls] += 1
        if shown[cls] > 8:
            continue
        print(f"[{cls}] {alert_id} lead {lead} partition {p}")
        for x in desc:
            print(f"    received {x}")
        for x in logged:
            print(f"    logged   {x}")
    print()
    for group in ("dispatch", "engine"):
        for p, start, end, pids in overlaps(group):
            until = clock(end) if end else "the end"
            print(f"{group}: partition {p} held by processes {list(pids)} at once from {clock(start)} until {until}")
    print()
    for t, member, pid in kills:
        print(f"--- kill {clock(t)} member {member} pid {pid}; doubled partitions {sorted(parts.get(t, []))}")
        for lt, m, lpid, msg, fields, target in sorted(lines):
            if t - 5 <= lt <= t + args.around:
                extra = {k: v for k, v in fields.items() if k != "message"}
                print(f"  {clock(lt)} (+{lt - t:5.1f}s) member {m} pid {lpid}: {msg} {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
