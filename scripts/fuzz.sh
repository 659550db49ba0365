#!/usr/bin/env bash
# Coverage-guided fuzzing of the ingest parsers, the signature checks and the record decoders
# (the targets of fuzz/harness.rs). Opt-in: the suite only replays the corpora
# (tests/fuzz_corpora.rs); this finds new inputs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]
#
# Runs every target (or the ones named) for SECONDS_PER_TARGET (default 60), one at a time, in
# one process on one core (cargo fuzz's default --jobs 1: the machine may be shared), from its
# corpus fuzz/corpus/<target>/. What the run finds goes to fuzz/found/<target>/ (not
# committed); of it, at most 20 inputs (keep) join the corpus: one by one, the input reaching the
# most code that the corpus and the inputs picked before it do not (the seeds already there stay
# as they are). It says per target how many runs it made, the coverage it reached, how many
# inputs it added and what failed.
# An input that fails is left in fuzz/artifacts/<target>/ (minimise it with
# `cargo +nightly fuzz tmin -O -a -s none <target> <file>`, keep it in fuzz/crashes/<target>/
# until the code is fixed, then move it into the corpus). Exits 1 when anything was found.
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]" >&2
    exit 64
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 69
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Release with debug assertions and overflow checks (an overflow is a finding). No sanitizer:
# leadwatch forbids unsafe code, and AddressSanitizer breaks the build of librdkafka (rdkafka-sys).
flags=(-O -a -s none)
# How many new inputs a run adds to a target's corpus at most: the suite replays them all.
keep=20

# Greedy set cover over a libFuzzer merge control file (the first corpus's inputs count as
# covered): the paths of at most `keep` other inputs, each adding the most edges not yet covered.
pick='
NR == 1 { n = $1; next }
NR == 2 { m = $1; next }
NR <= n + 2 { path[NR - 3] = $0; next }
$1 == "COV" {
    if ($2 < m) { for (k = 3; k <= NF; k++) covered[$k] = 1 } else cov[$2] = $0
}
END {
    for (p = 0; p < keep; p++) {
        best = -1; gain = 0
        for (i in cov) {
            nf = split(cov[i], e, " "); g = 0
            for (k = 3; k <= nf; k++) if (!(e[k] in covered)) g++
            if (g > gain) { gain = g; best = i }
        }
        if (best < 0) break
        nf = split(cov[best], e, " ")
        for (k = 3; k <= nf; k++) covered[e[k]] = 1
        delete cov[best]
        print path[best]
    }
}'

# Adds to fuzz/corpus/TARGET/ the few inputs of fuzz/found/TARGET/ that reach the most new code.
keep_new() {
    local target="$1" work
    work=$(mktemp -d)
    mkdir "$work/seeds"
    find "corpus/$target" -type f -exec cp -t "$work/seeds" {} +
    # Edges, not hit counts (-use_counters=0): an input joins for code it reaches.
    cargo +nightly fuzz run "${flags[@]}" "$target" "$work/seeds" "$PWD/found/$target" -- \
        -merge=1 -use_counters=0 -merge_control_file="$work/control" -timeout=5 \
        -rss_limit_mb=2048 >/dev/null 2>&1 || true
    if [ -f "$work/control" ]; then
        awk -v keep="$keep" "$pick" "$work/control" | while read -r input; do
            cp "$input" "corpus/$target/"
        done
    fi
    rm -rf "$work"
}

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build "${flags[@]}"

found=0
summary=()
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    scratch="found/$target"
    mkdir -p "$corpus" "$scratch" "artifacts/$target"
    before=$(find "artifacts/$target" -type f | wc -l)
    seeds=$(find "$corpus" -type f | wc -l)
    log=$(mktemp)
    echo "== $target: ${seconds}s"
    # New inputs go to the first folder (scratch), the corpus is read as seeds.
    # -timeout: an input taking 5 s is a finding too (a body that burns CPU before a 401).
    status=0
    cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch" "$corpus" -- \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(grep -Eo '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    after=$(find "artifacts/$target" -type f | wc -l)
    if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
        found=1
        echo "!! $target found something (exit $status):"
        grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -10 || true
        result="FOUND: see fuzz/artifacts/$target/ and $log"
    else
        rm -f "$log"
        result="nothing"
    fi
    # Keep the corpus small: the replay in the suite runs every input.
    keep_new "$target"
    files=$(find "$corpus" -type f | wc -l)
    size=$(du -sh "$corpus" | cut -f1)
    summary+=("$(printf '%-26s runs %-10s %-22s corpus %4s files (+%s) %6s  %s' \
        "$target" "${runs:-?}" "${cov:-cov: ?}" "$files" "$((files - seeds))" "$size" "$result")")
done

echo
echo "== ${seconds}s per target"
printf '%s\n' "${summary[@]}"
exit "$found"
