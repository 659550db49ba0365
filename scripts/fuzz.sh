#!/usr/bin/env bash
# Coverage-guided fuzzing of the ingest parsers, the signature checks and the record decoders
# (the targets of fuzz/harness.rs). Opt-in: the suite only replays the corpora
# (tests/fuzz_corpora.rs); this finds new inputs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]
#
# Runs every target (or the ones named) for SECONDS_PER_TARGET (default 60), one at a time,
# from its corpus fuzz/corpus/<target>/; keeps what it learned there, minimised (cargo fuzz
# cmin); and says per target how many runs it made, the coverage it reached and what it found.
# An input that fails is left in fuzz/artifacts/<target>/ (minimise it with
# `cargo +nightly fuzz tmin -O -a <target> <file>`, keep it in fuzz/crashes/<target>/ until the
# code is fixed, then move it into the corpus). Exits 1 when anything was found.
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

# Release with debug assertions and overflow checks (an overflow is a finding), AddressSanitizer.
flags=(-O -a)

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
    mkdir -p "$corpus" "artifacts/$target"
    before=$(find "artifacts/$target" -type f | wc -l)
    log=$(mktemp)
    echo "== $target: ${seconds}s"
    # -timeout: an input taking 5 s is a finding too (a body that burns CPU before a 401);
    # one process, one job: the machine is shared.
    status=0
    cargo +nightly fuzz run "${flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
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
    # Keep the corpus small: only inputs that add coverage.
    cargo +nightly fuzz cmin "${flags[@]}" "$target" "$corpus" >/dev/null 2>&1 || true
    files=$(find "$corpus" -type f | wc -l)
    size=$(du -sh "$corpus" | cut -f1)
    summary+=("$(printf '%-26s runs %-10s %-22s corpus %4s files %6s  %s' \
        "$target" "${runs:-?}" "${cov:-cov: ?}" "$files" "$size" "$result")")
done

echo
echo "== ${seconds}s per target"
printf '%s\n' "${summary[@]}"
exit "$found"
