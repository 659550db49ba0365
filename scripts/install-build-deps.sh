#!/usr/bin/env bash
# Installs what building leadwatch needs beyond Rust: a C toolchain and make for librdkafka,
# OpenSSL headers and pkg-config for TLS/SASL to managed Kafka clusters. No-op when present.
set -euo pipefail
needed=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
done
if [ ${#needed[@]} -gt 0 ]; then
  echo "installing: ${needed[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${needed[@]}"
fi
