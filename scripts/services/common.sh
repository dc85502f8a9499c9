#!/usr/bin/env bash
# Helpers shared by the service scripts (sourced, not run).

# A TCP port on loopback that is free right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_port NAME PORT LOG: waits up to 10 s for PORT to accept connections; on failure prints
# NAME's log to stderr and returns 1.
wait_for_port() {
  local name="$1" port="$2" log="$3"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2
  cat "$log" >&2
  return 1
}
