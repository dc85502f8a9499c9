#!/usr/bin/env bash
# nats-server for the test suite: `install` (idempotent: Debian's nats-server package, nats-py for the
# interop test) and `start DIR` (JetStream on a free loopback port, storage in DIR; prints the URL and
# writes the pid to DIR/pid). Sourced or run by scripts/test.sh.
set -euo pipefail
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
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/store" >"$dir/nats.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "nats://127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "nats-server did not start; its log:" >&2
  cat "$dir/nats.log" >&2
  return 1
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
