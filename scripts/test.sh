#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script):
#   formatting, clippy (pedantic, warnings are errors), documentation (warnings are errors),
#   the facade's feature hygiene (no feature, each feature alone; default builds compile no C
#   library), every crate's unit, integration, conformance and doc tests (with every backend feature
#   of the composable-rust facade and of checkout-saga on), and the checkout-saga acceptance runs.
#
# Servers: nats-server (JetStream) and PostgreSQL 15 (Debian packages) and tansu, a Kafka-protocol
# broker (`cargo install tansu`, about 10 minutes the first time on 2 cores), are installed if missing
# and started on free loopback ports in temporary directories, unless NATS_URL / DATABASE_URL /
# KAFKA_BROKERS point at your own. They are stopped on exit. Zenoh needs no server. The Python
# clients used by the interop tests (eclipse-zenoh, confluent-kafka, nats-py) come from PyPI; the
# dashboard test drives Debian's chromium headless (installed if missing, or set CHROMIUM).
# Tests never skip a backend under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Debian installs servers under /usr/sbin, which is not on every user's PATH; tests spawn them too.
export PATH="$PATH:/usr/sbin:/sbin"
log_dir="$(mktemp -d)"
pg_dir=""
source scripts/services/nats.sh
source scripts/services/postgres.sh
source scripts/services/kafka.sh
cleanup() {
  nats_stop "$log_dir/nats"
  kafka_stop "$log_dir/kafka"
  if [ -n "$pg_dir" ]; then
    pg_stop "$pg_dir"
    rm -rf "$pg_dir"
  fi
  rm -rf "$log_dir"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "stock clients for the interop tests (PyPI, installed if missing)"
# pip_ensure MODULE ATTRIBUTE PACKAGE: installs PACKAGE unless MODULE imports and has ATTRIBUTE.
# The check runs from / : from the repository root, `import nats` would find the `nats/` crate
# directory as a namespace package and succeed with no client installed; the attribute check
# catches any such empty namespace package too.
pip_has() { # module attribute
  (cd / && python3 -c "import $1, sys; sys.exit(0 if hasattr($1, '$2') else 1)") >/dev/null 2>&1
}
pip_ensure() { # module attribute package
  if ! pip_has "$1" "$2"; then
    echo "installing $3"
    python3 -m pip install -q --disable-pip-version-check "$3"
    pip_has "$1" "$2" || { echo "python3 still cannot import $1.$2 after installing $3" >&2; exit 1; }
  fi
}
pip_ensure zenoh open eclipse-zenoh
pip_ensure confluent_kafka Producer confluent-kafka
pip_ensure nats connect nats-py

step "a headless browser for the dashboard test (Debian's chromium, installed if missing)"
if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
  echo "installing chromium (Debian package)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
"${CHROMIUM:-chromium}" --version

step "servers (Zenoh needs none: its tests run embedded sessions and peers on loopback)"
if [ -n "${KAFKA_BROKERS:-}" ]; then
  echo "using KAFKA_BROKERS=$KAFKA_BROKERS"
else
  kafka_install
  KAFKA_BROKERS="$(kafka_start "$log_dir/kafka")"
  export KAFKA_BROKERS
  # tansu 0.6 answers a fetch that starts inside a multi-record batch with the next batch, so a
  # group resuming mid-batch would silently skip messages (see docs/event-bus.md). One record per
  # producer batch avoids it; the Kafka tests and the example pass these client properties on.
  export KAFKA_CLIENT_PROPERTIES="${KAFKA_CLIENT_PROPERTIES:-batch.num.messages=1}"
  echo "$(tansu --version 2>/dev/null || echo tansu) at $KAFKA_BROKERS"
fi
if [ -n "${NATS_URL:-}" ]; then
  echo "using NATS_URL=$NATS_URL"
else
  nats_install
  NATS_URL="$(nats_start "$log_dir/nats")"
  export NATS_URL
  echo "nats-server $(nats-server --version | awk '{print $2}') at $NATS_URL"
fi
if [ -n "${DATABASE_URL:-}" ]; then
  echo "using DATABASE_URL (host part: ${DATABASE_URL##*@})"
else
  pg_install
  # Its own directory: the server may run as the postgres user, which cannot enter $log_dir.
  pg_dir="$(mktemp -d /tmp/cr-pg.XXXXXX)"
  DATABASE_URL="$(pg_start "$pg_dir")"
  export DATABASE_URL
  echo "PostgreSQL $("$(pg_bin)/postgres" --version | awk '{print $3}') at ${DATABASE_URL##*@}"
fi

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

# The composable-rust facade and checkout-saga build their embedded backends only by default; every
# other backend is a cargo feature. Lints, tests and docs run with all of them, so that no backend's
# code or tests silently drop out.
all_features="composable-rust/all,checkout-saga/all"

step "lints (cargo clippy, pedantic, -D warnings)"
cargo clippy --workspace --all-targets --locked --features "$all_features" -- -D warnings

step "lints of the optional testcontainers helpers (they need Docker to run, so only compiled here)"
cargo clippy -p composable-rust-postgres -p composable-rust-redpanda --features testcontainers --all-targets --locked -- -D warnings

step "feature hygiene: the composable-rust facade with no feature, then each feature alone (cargo check)"
for feature in "" memory testing sqlite postgres nats redpanda zenoh otel web; do
  echo "composable-rust --no-default-features ${feature:+--features $feature}"
  cargo check --quiet --locked -p composable-rust --no-default-features ${feature:+--features "$feature"}
done
# Default builds are embedded and pure Rust: no C compiler, no -sys crate (bundled SQLite, librdkafka).
for package in composable-rust checkout-saga; do
  if cargo tree --locked -p "$package" -e normal,build --prefix none | grep -E '^(cc|cmake|[A-Za-z0-9_-]+-sys) '; then
    echo "the default build of $package compiles C (crates above): keep C backends behind their features" >&2
    exit 1
  fi
done

step "tests (unit, integration, conformance, doc tests)"
cargo test --workspace --locked --no-fail-fast --features "$all_features" 2>&1 | tee "$log_dir/test.log"
# The facade with no backend at all: connect refuses each left-out backend, naming its feature.
cargo test --locked --no-fail-fast -p composable-rust --no-default-features --lib 2>&1 | tee -a "$log_dir/test.log"

step "documentation (missing docs and broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet --features "$all_features"

step "the small examples (examples/basics), each run as a user would"
for example in counter todos bank_account compensation outbox_after_crash; do
  cargo run --quiet --locked -p composable-rust-basics --example "$example"
done

# `cargo run -p checkout-saga` as a user types it: the default build, embedded backends only.
step "acceptance: checkout-saga --orders 1000 with declines and out-of-stock"
cargo run --quiet --locked -p checkout-saga -- --orders 1000 --decline-every 7 --out-of-stock-every 11 --json

step "acceptance: checkout-saga --orders 2000 under redeliveries and transient failures"
RUST_LOG=error cargo run --quiet --locked -p checkout-saga -- --orders 2000 --duplicate-deliveries 0.2 --transient-failures 0.05 --json

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log_dir/test.log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log_dir/test.log" | awk '{s += $2} END {print s + 0}')
step "summary"
echo "tests: ${passed} passed, ${failed} failed"
