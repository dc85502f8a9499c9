#!/usr/bin/env bash
# PostgreSQL 15 for the test suite: `install` (idempotent: Debian's postgresql package) and
# `start DIR` (initdb + pg_ctl into DIR, trust auth, loopback only, a free port; prints the URL).
# The server runs as the `postgres` system user when started by root (initdb refuses root).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export PATH="$PATH:/usr/sbin:/sbin"

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}

pg_install() {
  if [ -z "$(pg_bin)" ]; then
    echo "installing postgresql (Debian package)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  fi
}

pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  local dir="$1" bin port
  bin="$(pg_bin)"
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  port=$(free_port)
  pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
    -o "-p $port -k $dir/data -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2 || { cat "$dir/data/server.log" >&2; return 1; }
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

pg_stop() {
  local dir="$1"
  [ -d "$dir/data" ] && pg_as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    install) pg_install ;;
    start) pg_start "${2:?usage: postgres.sh start DIR}" ;;
    stop) pg_stop "${2:?usage: postgres.sh stop DIR}" ;;
    *) echo "usage: postgres.sh install | start DIR | stop DIR" >&2; exit 2 ;;
  esac
fi
