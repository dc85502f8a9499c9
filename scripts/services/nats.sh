#!/usr/bin/env bash
# nats-server for the test suite: `install` (idempotent: Debian's nats-server package, nats-py for the
# interop test) and `start DIR` (JetStream on a free loopback port, storage in DIR; prints the URL and
# writes the pid to DIR/pid). Sourced or run by scripts/test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export PATH="$PATH:/usr/sbin:/sbin"

nats_install() {
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "installing nats-server (Debian package)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >&2
  fi
  if ! python3 -c "import nats" >/dev/null 2>&1; then
    echo "installing nats-py (PyPI) for the interop test" >&2
    python3 -m pip install -q --disable-pip-version-check nats-py >&2
  fi
}

nats_start() {
  local dir="$1" port
  mkdir -p "$dir"
  port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/store" >"$dir/nats.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_for_port nats-server "$port" "$dir/nats.log" || return 1
  echo "nats://127.0.0.1:$port"
}

nats_stop() {
  local dir="$1"
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    install) nats_install ;;
    start) nats_start "${2:?usage: nats.sh start DIR}" ;;
    stop) nats_stop "${2:?usage: nats.sh stop DIR}" ;;
    *) echo "usage: nats.sh install | start DIR | stop DIR" >&2; exit 2 ;;
  esac
fi
