#!/usr/bin/env bash
# Installs tansu, an Apache Kafka-compatible broker written in Rust, for benchmarks and the
# crash tests that want a broker in its own process. Takes ~12 minutes to build the first time;
# the binary is cached under $LEADWATCH_TOOLS (default ~/.cache/leadwatch) and reused.
# Prints the path of the binary.
set -euo pipefail
root="${LEADWATCH_TOOLS:-$HOME/.cache/leadwatch}/tansu"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  echo "building tansu into $root (about 12 minutes) …" >&2
  cargo install tansu --version 0.6.0 --features dynostore --locked --root "$root" >&2
fi
echo "$bin"
