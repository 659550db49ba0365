#!/usr/bin/env bash
# Runs tansu in memory on 127.0.0.1:${1:-9092} until stopped.
set -euo pipefail
port="${1:-9092}"
bin="$(dirname "$0")/install-tansu.sh"
tansu="$("$bin")"
exec "$tansu" broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/
