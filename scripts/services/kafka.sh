#!/usr/bin/env bash
# A Kafka-protocol broker for the test suite: tansu (Apache-2.0, written in Rust), in-memory storage.
# `install` (idempotent: `cargo install tansu --locked --features dynostore` when the binary is missing,
# about 10-12 minutes on 2 cores the first time, then kept in cargo's bin dir; confluent-kafka from PyPI
# for the interop test) and `start DIR` (a free loopback port; prints the bootstrap address HOST:PORT
# and writes the pid to DIR/pid). Sourced or run by scripts/test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"

kafka_install() {
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  if ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu $TANSU_VERSION (cargo install; about 10 minutes once)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore >&2
  fi
  if ! python3 -c "import confluent_kafka" >/dev/null 2>&1; then
    echo "installing confluent-kafka (PyPI) for the interop test" >&2
    python3 -m pip install -q --disable-pip-version-check confluent-kafka >&2
  fi
}

kafka_start() {
  local dir="$1" port
  mkdir -p "$dir"
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  port=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_for_port tansu "$port" "$dir/tansu.log" || return 1
  echo "127.0.0.1:$port"
}

kafka_stop() {
  local dir="$1"
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    install) kafka_install ;;
    start) kafka_start "${2:?usage: kafka.sh start DIR}" ;;
    stop) kafka_stop "${2:?usage: kafka.sh stop DIR}" ;;
    *) echo "usage: kafka.sh install | start DIR | stop DIR" >&2; exit 2 ;;
  esac
fi
