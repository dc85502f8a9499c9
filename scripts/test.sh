#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script):
#   formatting, clippy (pedantic, warnings are errors), documentation (warnings are errors),
#   every crate's unit, integration, conformance and doc tests, and the checkout-saga acceptance run.
#
# The backends of this workspace so far are in-memory, so no server is needed. Backend crates that
# need one (PostgreSQL, a Kafka-protocol broker, nats-server) add an idempotent install-and-start step
# here; under CI=true a missing backend is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy, pedantic, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, integration, conformance, doc tests)"
cargo test --workspace --locked 2>&1 | tee "$log_dir/test.log"

step "documentation (missing docs and broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "acceptance: checkout-saga --orders 1000 with declines and out-of-stock"
cargo run --quiet --locked -p checkout-saga -- --orders 1000 --decline-every 7 --out-of-stock-every 11 --json

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log_dir/test.log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log_dir/test.log" | awk '{s += $2} END {print s + 0}')
step "summary"
echo "tests: ${passed} passed, ${failed} failed"
