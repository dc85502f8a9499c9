#!/usr/bin/env bash
# Every benchmark of the performance issue in one run, then the report (tables and charts).
#
#   scripts/bench-all.sh [--rounds N] [--original DIR] [--no-readme]
#
# Starts its own servers on loopback (PostgreSQL, nats-server, tansu; installed if missing, as the
# test command does) unless DATABASE_URL, NATS_URL or KAFKA_BROKERS point at yours. Each round runs,
# one at a time: the in-memory bus and Store::send criterion benchmarks, PostgreSQL appends against
# pgbench, SQLite appends against raw sqlx, NATS, Kafka and Zenoh against their raw clients, and the
# checkout saga end to end on memory (10,000 and 100,000 orders, with the resident set), SQLite,
# PostgreSQL, PostgreSQL + Kafka and PostgreSQL + NATS (counting PostgreSQL's WAL fsyncs per order). With --original DIR (a checkout of
# jonathanbelolo/composable-rust) it also runs scripts/bench-vs-original.sh. Then
# scripts/bench-report.py writes the SVG charts into docs/bench/ and, unless --no-readme, the
# README's section between the `bench-all` markers, all from this run's results.
#
# Results: target/bench-all/<UTC time>/ (BENCH_OUT overrides): results-<round>.jsonl, one JSON
# object per measured line, and the logs. Traffic goes to loopback only; every line is bounded in
# time. About 12 minutes per round on the project's 2-core machine, plus the first build.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
rounds=3
original=""
readme=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --original) original="$2"; shift 2 ;;
    --no-readme) readme=0; shift ;;
    *) echo "usage: $0 [--rounds N] [--original DIR] [--no-readme]" >&2; exit 2 ;;
  esac
done

out="${BENCH_OUT:-$repo/target/bench-all/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target="${CARGO_TARGET_DIR:-$repo/target}"
log() { echo "[bench-all $(date -u +%H:%M:%S)] $*" >&2; }

source scripts/services/nats.sh
source scripts/services/postgres.sh
source scripts/services/kafka.sh
pg_dir=""
cleanup() {
  nats_stop "$out/nats"
  kafka_stop "$out/kafka"
  if [[ -n "$pg_dir" ]]; then pg_stop "$pg_dir"; rm -rf "$pg_dir"; fi
}
trap cleanup EXIT

if [[ -z "${DATABASE_URL:-}" ]]; then
  pg_install
  pg_dir="$(mktemp -d /tmp/cr-bench-pg.XXXXXX)"
  DATABASE_URL="$(pg_start "$pg_dir")"
fi
if [[ -z "${NATS_URL:-}" ]]; then nats_install; NATS_URL="$(nats_start "$out/nats")"; fi
if [[ -z "${KAFKA_BROKERS:-}" ]]; then kafka_install; KAFKA_BROKERS="$(kafka_start "$out/kafka")"; fi
export DATABASE_URL NATS_URL KAFKA_BROKERS
# See docs/event-bus.md: tansu 0.6 needs one record per producer batch.
kafka_props="${KAFKA_CLIENT_PROPERTIES:-batch.num.messages=1}"
psql_admin() { psql "$DATABASE_URL" -qAtc "$1"; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs/bench' ':!README.md' || echo ' (with uncommitted changes)')"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "rustc: $(rustc --version)"
  echo "postgres: $(psql_admin 'show server_version')"
  echo "rounds: $rounds"
} >"$out/run.txt"
cat "$out/run.txt" >&2

log "building (release: the example and every benchmark)"
cargo build --release -p checkout-saga --features all >"$out/build.log" 2>&1
cargo bench --no-run -p composable-rust-runtime -p composable-rust-postgres -p composable-rust-sqlite \
  -p composable-rust-nats -p composable-rust-redpanda -p composable-rust-zenoh >>"$out/build.log" 2>&1
saga="$target/release/checkout-saga"

# Criterion's latest estimates of GROUP, as JSON lines (bench, id, param, ns, elements).
criterion_lines() {
  python3 scripts/bench-report.py criterion "$target/criterion" "$@"
}

bench() { # NAME PACKAGE BENCH [ARGS...]: runs one benchmark binary, its table into NAME.log
  local name="$1" package="$2" which="$3"
  shift 3
  log "round $round: $name"
  cargo bench -q -p "$package" --bench "$which" -- "$@" >"$out/$name-$round.log" 2>&1 || { log "$name failed: see $out/$name-$round.log"; return 1; }
}

saga_run() { # CASE ORDERS STORE BUS: one checkout-saga run, its JSON report as a result line
  local case="$1" orders="$2" store="$3" bus="$4" before after json
  log "round $round: checkout saga, $case, $orders orders"
  before="$(psql_admin 'select wal_sync from pg_stat_wal')"
  json="$out/saga-$(echo "$case" | tr -c 'a-z0-9' '-')-$round.json"
  "$saga" --orders "$orders" --store "$store" --bus "$bus" --namespace "bench$round$RANDOM" --timeout-secs 600 --json \
    >"$json" 2>"$json.err" || log "checkout saga ($case) reported problems: see $json"
  after="$(psql_admin 'select wal_sync from pg_stat_wal')"
  python3 - "$case" "$orders" "$json" "$((after - before))" "$store" >>"$BENCH_RESULTS" <<'PY'
import json, sys
case, orders, path, wal_syncs, store = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
try:
    report = json.load(open(path))
except ValueError:
    report = {"problems": ["no JSON report"]}
line = {"bench": "saga", "case": case, "orders": orders, "ok": not report.get("problems"),
        **{k: report.get(k) for k in ("orders_per_sec", "p50_ms", "p99_ms", "events_persisted", "rss_kib", "peak_rss_kib")}}
if store.startswith("postgres"):
    line["wal_syncs_per_order"] = wal_syncs / orders
print(json.dumps(line))
PY
}

for round in $(seq 1 "$rounds"); do
  export BENCH_RESULTS="$out/results-$round.jsonl"
  : >"$BENCH_RESULTS"
  bench in-memory-bus composable-rust-runtime in_memory_bus --warm-up-time 1
  criterion_lines in_memory_bus_delivery >>"$BENCH_RESULTS"
  bench store-send composable-rust-runtime store_send --warm-up-time 1 --measurement-time 3
  criterion_lines store_send >>"$BENCH_RESULTS"
  CR_APPEND_ROUNDS=1 bench sqlite-append composable-rust-sqlite append_vs_raw || true
  bench postgres-append composable-rust-postgres append_vs_pgbench || true
  bench nats composable-rust-nats nats_bus --warm-up-time 1 && criterion_lines nats_publish_acked nats_consume_acked >>"$BENCH_RESULTS" || true
  bench kafka composable-rust-redpanda kafka_bus || true
  bench zenoh composable-rust-zenoh zenoh_bus || true

  saga_run "memory" 10000 memory memory
  saga_run "memory, 100,000 orders" 100000 memory memory
  saga_run "sqlite" 2000 "sqlite:$out/saga-$round.db" memory
  for bus in "postgres|memory" "postgres + kafka|redpanda://$KAFKA_BROKERS?$kafka_props" "postgres + nats|$NATS_URL"; do
    db="saga_${round}_$(echo "${bus%%|*}" | tr -c 'a-z' '_')"
    psql_admin "create database $db"
    saga_run "${bus%%|*}" 2000 "${DATABASE_URL%/*}/$db" "${bus#*|}"
    psql_admin "drop database $db"
  done
  rm -f "$out/saga-$round.db"*
done

if [[ -n "$original" ]]; then
  log "side by side with the original ($original)"
  ANCHOR_WORK_DIR="$out/anchor" scripts/bench-vs-original.sh "$original" "$rounds" >"$out/anchor.md" 2>"$out/anchor.log"
fi

log "report"
report_args=("$out" --charts docs/bench)
[[ "$readme" == 1 ]] && report_args+=(--readme README.md)
python3 scripts/bench-report.py report "${report_args[@]}"
log "done: $out"
