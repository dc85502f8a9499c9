//! Memory of one kept aggregate instance: the live heap bytes, counted by `stats_alloc` (the
//! workspace forbids `unsafe`). The count is global to the process, so this file holds one test
//! (a test binary of its own, nothing else allocating beside it); the growth was ~80 bytes per
//! command, the bound is 8.

use std::sync::Arc;

use composable_rust_core::{Aggregate, DomainEvent};
use composable_rust_runtime::{AggregateHandler, Executor};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
struct Add {
    id: String,
    n: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Added {
    n: i64,
}

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added.v1"
    }
}

/// A counter without snapshots (the default).
struct Counter;

impl Aggregate for Counter {
    const AGGREGATE_TYPE: &'static str = "counter";
    type State = i64;
    type Command = Add;
    type Event = Added;
    type Error = std::convert::Infallible;
    type Environment = ();

    fn aggregate_id(command: &Add) -> &str {
        &command.id
    }

    fn initial_state(_id: &str) -> i64 {
        0
    }

    fn handle(&self, _sum: &i64, command: Add, (): &()) -> Result<Vec<Added>, Self::Error> {
        Ok(vec![Added { n: command.n }])
    }

    fn apply(sum: &mut i64, event: &Added) {
        *sum += event.n;
    }
}

fn add(n: i64) -> Add {
    Add { id: "c".into(), n }
}

fn process(store: &Arc<InMemoryEventStore>) -> AggregateHandler<Counter> {
    AggregateHandler::new(Counter, (), Executor::builder().store(store.clone()).bus(Arc::new(InMemoryEventBus::new())).build())
}

#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live() -> i64 {
    let s = ALLOCATOR.stats();
    let signed = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    signed(s.bytes_allocated) - signed(s.bytes_deallocated) + i64::try_from(s.bytes_reallocated).unwrap_or(i64::MAX)
}

/// Heap bytes a handler holds after `commands` additions to one instance: what dropping it frees
/// (the store, which holds the events, is dropped after).
async fn held_by_handler(commands: usize) -> i64 {
    let store = Arc::new(InMemoryEventStore::new());
    let handler = process(&store);
    for _ in 0..commands {
        handler.send(add(0)).await.expect("handled");
    }
    assert_eq!(handler.cached_instances(), 1);
    let before = live();
    drop(handler);
    let held = before - live();
    drop(store);
    held
}

/// Failed before the fix of the review of the kept instances (tests/review_kept.rs).
///
/// An aggregate without snapshots (the default: `encode_state` is `None`) keeps, in its one kept
/// instance, the command id of every command it ever handled: the instance's memory grows with its
/// history, without bound, and 10,000 such instances are kept by default. docs/memory.md counts
/// the kept instances as bounded by `with_cache_capacity`. One kept instance of an `i64` state
/// should cost about the same after 5,000 commands as after 500.
#[tokio::test]
async fn one_kept_instance_does_not_grow_with_its_history() {
    const SHORT: usize = 500;
    const LONG: usize = 5_000;
    let (short, long) = (held_by_handler(SHORT).await, held_by_handler(LONG).await);
    let bound = 8 * i64::try_from(LONG - SHORT).unwrap_or(i64::MAX);
    assert!(long - short < bound, "the handler holds {short} bytes after {SHORT} commands and {long} after {LONG}");
}
