//! Memory per in-flight saga instance, measured with a counting global allocator.
//!
//! Holds N instances of a checkout-like saga in flight in a [`SagaRunner`] on the in-memory store:
//! each instance has handled two events (an order placed, its stock reserved: two steps recorded,
//! two inbox marks, two commands dispatched) and waits for the payment, either on a durable deadline
//! (`--wait deadline`, the default: a row in the store's deadline table) or on an in-process timer
//! (`--wait delay`: a detached `Effect::delay`, a tokio task sleeping), or on nothing (`--wait
//! none`: the step records and inbox marks alone). The events fed to the saga
//! are not stored (they are the aggregates' data); what is counted is what the saga adds.
//!
//! ```sh
//! cargo run --release -p composable-rust-runtime --example saga_instance_memory -- --instances 100000
//! cargo run --release -p composable-rust-runtime --example saga_instance_memory -- --instances 100000 --wait delay
//! ```
//!
//! Prints one JSON line: live heap bytes (allocated and not freed) per instance, the same for the
//! store's share, and the resident set's growth per instance (`/proc/self/status`, Linux only).

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::{
    CodecError, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, Effect, Effects, Reducer, Saga, SagaInput, SerializedEvent, smallvec,
};
use composable_rust_memory::InMemoryEventStore;
use composable_rust_runtime::{CommandRouter, Executor, InMemoryDeadLetters, SagaRunner};
use serde::{Deserialize, Serialize};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// The system allocator, counting (`stats_alloc`: the workspace forbids `unsafe` of its own).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes and blocks live (allocated and not freed yet).
fn live() -> (i64, i64) {
    let s = ALLOCATOR.stats();
    let signed = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let reallocated = i64::try_from(s.bytes_reallocated).unwrap_or(i64::MAX);
    (signed(s.bytes_allocated) - signed(s.bytes_deallocated) + reallocated, signed(s.allocations) - signed(s.deallocations))
}

/// `VmRSS` in KiB, where `/proc` exists.
fn rss_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Commands the saga dispatches, answered at once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Reserve { order: String, sku: String, quantity: u32 },
    Capture { order: String, cents: u64 },
}

struct Accept;

#[async_trait]
impl CommandHandler for Accept {
    fn name(&self) -> &'static str {
        "accept"
    }

    async fn handle(&self, _: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        Ok(CommandOutcome::HANDLED)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Action {
    Placed { order: String, sku: String, quantity: u32, cents: u64 },
    Reserved { order: String },
    PaymentTimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Deadline,
    Delay,
    /// No timer at all: the two step records and inbox marks alone.
    Nothing,
}

#[derive(Debug, Clone, Default)]
struct Checkout {
    order: String,
    sku: String,
    cents: u64,
    paying: bool,
}

struct CheckoutLike {
    wait: Wait,
}

impl Reducer for CheckoutLike {
    type State = Checkout;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut Checkout, action: Action, (): &()) -> Effects<Action> {
        match action {
            Action::Placed { order, sku, quantity, cents } => {
                state.order.clone_from(&order);
                state.sku.clone_from(&sku);
                state.cents = cents;
                smallvec![Effect::dispatch(Command::Reserve { order, sku, quantity })]
            }
            Action::Reserved { order } => {
                state.paying = true;
                let capture = Effect::dispatch(Command::Capture { order, cents: state.cents });
                let timeout = Duration::from_secs(3600);
                match self.wait {
                    Wait::Deadline => smallvec![capture, Effect::deadline_after("payment", timeout, Action::PaymentTimedOut)],
                    Wait::Delay => smallvec![capture, Effect::delay(timeout, Action::PaymentTimedOut)],
                    Wait::Nothing => smallvec![capture],
                }
            }
            Action::PaymentTimedOut => {
                state.paying = false;
                smallvec![]
            }
        }
    }
}

impl Saga for CheckoutLike {
    const NAME: &'static str = "checkout";

    fn topics(&self) -> Vec<String> {
        vec!["order".into()]
    }

    fn initial_state(&self, instance_id: &str) -> Checkout {
        Checkout { order: instance_id.to_string(), ..Checkout::default() }
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Action>>, CodecError> {
        let action: Action = event.decode_data()?;
        let instance_id = match &action {
            Action::Placed { order, .. } | Action::Reserved { order } => order.clone(),
            Action::PaymentTimedOut => return Ok(None),
        };
        Ok(Some(SagaInput { instance_id, action }))
    }
}

fn order_id(run: u32, n: usize) -> String {
    format!("order-{run:08x}-{n:07}")
}

/// Feeds instances `from..to` their two events, `concurrency` at a time.
async fn feed(runner: &Arc<SagaRunner<CheckoutLike>>, run: u32, from: usize, to: usize, concurrency: usize) {
    let mut n = from;
    while n < to {
        let end = (n + concurrency).min(to);
        let tasks: Vec<_> = (n..end)
            .map(|k| {
                let runner = Arc::clone(runner);
                tokio::spawn(async move {
                    let order = order_id(run, k);
                    let placed =
                        Action::Placed { order: order.clone(), sku: format!("sku-{}", k % 8), quantity: 1 + u32::try_from(k % 3).unwrap_or(0), cents: 1999 };
                    for action in [placed, Action::Reserved { order }] {
                        let event = SerializedEvent::from_payload("Order.v1", &action, None).expect("encodes");
                        runner.handle_event(&event).await.expect("step handled");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        n = end;
    }
}

#[derive(Debug, Serialize)]
struct Output {
    wait: &'static str,
    instances: usize,
    /// Live heap bytes per instance (everything the process keeps for it).
    bytes_per_instance: f64,
    /// Live heap blocks per instance.
    blocks_per_instance: f64,
    /// Resident set growth per instance, in bytes (includes allocator slack and freed-but-kept pages).
    rss_bytes_per_instance: Option<f64>,
    /// Events in the store (two step records per instance).
    events_in_store: usize,
    /// Detached effects still running (one timer per instance with `--wait delay`).
    detached_in_flight: usize,
}

#[allow(clippy::cast_precision_loss)]
fn per(total: i64, n: usize) -> f64 {
    total as f64 / n as f64
}

fn main() {
    let mut instances = 10_000_usize;
    let mut wait = Wait::Deadline;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--instances", Some(n)) => instances = n.parse().expect("--instances N"),
            ("--wait", Some(w)) if w == "deadline" => wait = Wait::Deadline,
            ("--wait", Some(w)) if w == "delay" => wait = Wait::Delay,
            ("--wait", Some(w)) if w == "none" => wait = Wait::Nothing,
            _ => {
                eprintln!("usage: saga_instance_memory [--instances N] [--wait deadline|delay|none]");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let output = runtime.block_on(async {
        let store = Arc::new(InMemoryEventStore::new());
        let router = CommandRouter::new();
        router.register::<Command>(Arc::new(Accept)).expect("register");
        let executor = Executor::builder().store(Arc::clone(&store) as _).dead_letters(Arc::new(InMemoryDeadLetters::default())).commands(router).build();
        let runner = Arc::new(SagaRunner::new(CheckoutLike { wait }, (), executor));
        let run = rand_run();
        // Warm-up: lazily built statics (metrics keys, tracing callsites, tokio's pools) and the
        // first growth of every map, so that the measured window holds the instances only.
        feed(&runner, run, 0, 1_000, 64).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (bytes_before, blocks_before) = live();
        let rss_before = rss_kib();
        feed(&runner, run, 1_000, 1_000 + instances, 64).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (bytes_after, blocks_after) = live();
        let rss_after = rss_kib();
        let detached = runner.detached_in_flight();
        assert_eq!(store.event_count(), 2 * (1_000 + instances), "two steps recorded per instance");
        Output {
            wait: match wait {
                Wait::Deadline => "deadline",
                Wait::Delay => "delay",
                Wait::Nothing => "none",
            },
            instances,
            bytes_per_instance: per(bytes_after - bytes_before, instances),
            blocks_per_instance: per(blocks_after - blocks_before, instances),
            rss_bytes_per_instance: rss_before.zip(rss_after).map(|(b, a)| per((a - b) * 1024, instances)),
            events_in_store: store.event_count(),
            detached_in_flight: detached,
        }
    });
    println!("{}", serde_json::to_string(&output).expect("encodes"));
    // The runtime (and its sleeping timers) is dropped without waiting for them.
    runtime.shutdown_background();
}

/// A per-run prefix for the order ids (so runs do not share ids by accident).
fn rand_run() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id()
}
