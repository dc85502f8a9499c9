//! The saga runner applies each delivered event once, executes its effects at least once, and keeps
//! running through unknown and undecodable events.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{
    Aggregate, AppendRequest, CodecError, DomainEvent, EventBus, EventMetadata, EventStore, ExpectedVersion, Reducer, Saga, SagaInput, SerializedEvent,
    Version, encode_payload, smallvec,
};
use composable_rust_runtime::saga_runner::{SAGA_STEP_EVENT_TYPE, SagaStatsSnapshot};
use composable_rust_runtime::{AggregateHandler, CommandRouter, Executor, InMemoryDeadLetters, SagaRunner, StepOutcome};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use serde::{Deserialize, Serialize};

// A ledger aggregate: one stream per account, one `Recorded` event per deposit.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    account: String,
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum LedgerEvent {
    Recorded { amount: u64 },
}

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> &'static str {
        match self {
            LedgerEvent::Recorded { .. } => "Recorded.v1",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Ledger {
    total: u64,
}

struct LedgerAggregate;

impl Aggregate for LedgerAggregate {
    const AGGREGATE_TYPE: &'static str = "ledger";
    type State = Ledger;
    type Command = Record;
    type Event = LedgerEvent;
    type Error = std::convert::Infallible;
    type Environment = ();

    fn aggregate_id(command: &Record) -> &str {
        &command.account
    }

    fn initial_state(_id: &str) -> Ledger {
        Ledger::default()
    }

    fn handle(&self, _state: &Ledger, command: Record, (): &()) -> Result<Vec<LedgerEvent>, Self::Error> {
        Ok(vec![LedgerEvent::Recorded { amount: command.amount }])
    }

    fn apply(state: &mut Ledger, event: &LedgerEvent) {
        match event {
            LedgerEvent::Recorded { amount } => state.total += amount,
        }
    }
}

// A saga that books every `Deposited` event into the ledger and counts deposits per account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    account: String,
    amount: u64,
}

struct BookingSaga;

impl Reducer for BookingSaga {
    type State = u32;
    type Action = Deposited;
    type Environment = ();

    fn reduce(&self, deposits: &mut u32, action: Deposited, (): &()) -> composable_rust_core::Effects<Deposited> {
        *deposits += 1;
        smallvec![composable_rust_core::Dispatch::new(Record { account: action.account.clone(), amount: action.amount }).correlated(action.account).into()]
    }
}

impl Saga for BookingSaga {
    const NAME: &'static str = "booking";

    fn topics(&self) -> Vec<String> {
        vec!["bank.deposits".into()]
    }

    fn initial_state(&self, _instance_id: &str) -> u32 {
        0
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Deposited>>, CodecError> {
        if event.event_type != "Deposited.v1" {
            return Ok(None);
        }
        let d: Deposited = event.decode_data()?;
        Ok(Some(SagaInput { instance_id: d.account.clone(), action: d }))
    }
}

struct World {
    store: Arc<InMemoryEventStore>,
    bus: Arc<InMemoryEventBus>,
    router: CommandRouter,
    ledger: Arc<AggregateHandler<LedgerAggregate>>,
    executor: Executor,
}

impl World {
    fn new() -> Self {
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let router = CommandRouter::new();
        let executor = Executor::builder().store(store.clone()).bus(bus.clone()).commands(router.clone()).build();
        let ledger = AggregateHandler::new(LedgerAggregate, (), executor.clone()).register().unwrap();
        Self { store, bus, router, ledger, executor }
    }

    fn runner(&self) -> SagaRunner<BookingSaga> {
        SagaRunner::new(BookingSaga, (), self.executor.clone())
    }

    /// The account's total and stream version.
    async fn ledger(&self, account: &str) -> (u64, Version) {
        let loaded = self.ledger.load(account, None).await.unwrap();
        (loaded.state.total, loaded.version)
    }
}

fn deposit(account: &str, amount: u64) -> SerializedEvent {
    SerializedEvent::from_payload("Deposited.v1", &Deposited { account: account.into(), amount }, Some(EventMetadata::now())).unwrap()
}

#[tokio::test]
async fn a_redelivered_event_is_not_applied_twice() {
    let world = World::new();
    let runner = world.runner();
    let event = deposit("acc-1", 50);

    assert_eq!(runner.handle_event(&event).await.unwrap(), StepOutcome::Applied);
    assert_eq!(runner.handle_event(&event).await.unwrap(), StepOutcome::Duplicate);

    assert_eq!(runner.load_instance("acc-1").await.unwrap(), 1, "saga state counts the deposit once");
    assert_eq!(world.ledger("acc-1").await, (50, Version(1)), "the dispatched command was applied once");

    runner.handle_event(&deposit("acc-1", 7)).await.unwrap();
    assert_eq!(runner.load_instance("acc-1").await.unwrap(), 2, "a different event id is a new step");
    assert_eq!(world.ledger("acc-1").await.0, 57);
}

#[tokio::test]
async fn effects_lost_in_a_crash_after_recording_run_on_redelivery() {
    let world = World::new();
    let runner = world.runner();
    let event = deposit("acc-2", 30);
    // Simulate a worker that recorded the step and died before dispatching its command.
    let step = SerializedEvent::new(SAGA_STEP_EVENT_TYPE, encode_payload(&Deposited { account: "acc-2".into(), amount: 30 }).unwrap(), None)
        .with_event_id(SagaRunner::<BookingSaga>::step_id(event.event_id));
    let stream = SagaRunner::<BookingSaga>::instance_stream("acc-2").unwrap();
    world.store.append(AppendRequest::new(stream, ExpectedVersion::NoStream, vec![step])).await.unwrap();
    assert_eq!(world.ledger("acc-2").await.0, 0);

    assert_eq!(runner.handle_event(&event).await.unwrap(), StepOutcome::Duplicate);
    assert_eq!(world.ledger("acc-2").await.0, 30, "the redelivery executed the lost command");
    assert_eq!(runner.handle_event(&event).await.unwrap(), StepOutcome::Duplicate);
    assert_eq!(world.ledger("acc-2").await.0, 30, "and a further redelivery does not apply it again");
    assert_eq!(runner.load_instance("acc-2").await.unwrap(), 1);
}

async fn wait_for(handle: &composable_rust_runtime::SagaRunnerHandle, done: impl Fn(&SagaStatsSnapshot) -> bool) -> SagaStatsSnapshot {
    for _ in 0..500 {
        let stats = handle.stats();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("saga worker did not get there: {:?}", handle.stats());
}

#[tokio::test]
async fn the_worker_skips_unknown_types_dead_letters_garbage_and_keeps_going() {
    let world = World::new();
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let executor =
        Executor::builder().store(world.store.clone()).bus(world.bus.clone()).commands(world.router.clone()).dead_letters(dead_letters.clone()).build();
    let runner = SagaRunner::new(BookingSaga, (), executor);
    let handle = runner.spawn().await.unwrap();

    let good = deposit("acc-3", 10);
    world.bus.publish("bank.deposits", &good).await.unwrap();
    world.bus.publish("bank.deposits", &good).await.unwrap();
    world.bus.publish("bank.deposits", &SerializedEvent::new("Withdrawn.v1", vec![1], None)).await.unwrap();
    world.bus.publish("bank.deposits", &SerializedEvent::new("Deposited.v1", vec![0xff; 3], None)).await.unwrap();
    world.bus.publish("bank.deposits", &deposit("acc-3", 5)).await.unwrap();

    let stats = wait_for(&handle, |s| s.applied == 2 && s.duplicates == 1 && s.skipped == 1 && s.dead_lettered == 1).await;
    assert_eq!(stats.lagged_events, 0);
    assert_eq!(world.ledger("acc-3").await.0, 15, "both distinct deposits booked, the duplicate not");
    let letters = dead_letters.letters();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].error.contains("cannot decode event Deposited.v1"), "{letters:?}");
    assert!(letters[0].event.is_some(), "the undecodable event is kept for inspection");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_in_one_group_share_the_events_and_apply_each_once() {
    let world = World::new();
    let w1 = world.runner().spawn().await.unwrap();
    let w2 = world.runner().spawn().await.unwrap();
    for i in 0..60u64 {
        world.bus.publish("bank.deposits", &deposit(&format!("acc-{}", i % 6), i)).await.unwrap();
    }
    for _ in 0..500 {
        if w1.stats().applied + w2.stats().applied == 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s1, s2) = (w1.shutdown().await, w2.shutdown().await);
    assert_eq!(s1.applied + s2.applied, 60, "{s1:?} {s2:?}");
    for a in 0..6u64 {
        let expected: u64 = (0..60u64).filter(|i| i % 6 == a).sum();
        assert_eq!(world.ledger(&format!("acc-{a}")).await, (expected, Version(10)), "account {a}");
    }
}

/// Two workers (as two processes) take turns on one instance, each keeping it between steps: the
/// one whose kept instance is stale finds out by its record's expected version and replays, so
/// every deposit is counted and booked once, with or without the cache.
#[tokio::test]
async fn workers_keeping_an_instance_between_steps_still_apply_each_step_once() {
    for capacity in [10_000, 0] {
        let world = World::new();
        let (one, other) = (world.runner().with_cache_capacity(capacity), world.runner().with_cache_capacity(capacity));
        let deposits: Vec<SerializedEvent> = (1..=6).map(|n| deposit("acc-k", n)).collect();
        for (k, event) in deposits.iter().enumerate() {
            let worker = if k % 3 == 2 { &other } else { &one };
            assert_eq!(worker.handle_event(event).await.unwrap(), StepOutcome::Applied, "deposit {k} (capacity {capacity})");
        }
        // Redeliveries to either worker are recognised, kept or not.
        for event in &deposits {
            assert_eq!(one.handle_event(event).await.unwrap(), StepOutcome::Duplicate);
            assert_eq!(other.handle_event(event).await.unwrap(), StepOutcome::Duplicate);
        }
        assert_eq!(one.load_instance("acc-k").await.unwrap(), 6, "capacity {capacity}");
        assert_eq!(world.ledger("acc-k").await, (21, Version(6)), "each deposit booked once (capacity {capacity})");
        one.handle_event(&deposit("acc-k", 100)).await.unwrap();
        assert_eq!(other.load_instance("acc-k").await.unwrap(), 7);
    }
}

/// Workers keeping the instance (two of them, taking turns, so one's kept instance goes stale)
/// end every step in the state `SagaScenario` (the unit-test harness) reaches for the same events,
/// and dispatch what it expects.
#[tokio::test]
async fn kept_saga_instances_step_as_the_saga_scenario_does() {
    use composable_rust_testing::SagaScenario;
    let world = World::new();
    let (one, other) = (world.runner(), world.runner());
    let deposits: Vec<SerializedEvent> = (1..=6).map(|n| deposit("acc-s", n * 10)).collect();
    for (k, event) in deposits.iter().enumerate() {
        let expected = SagaScenario::new(BookingSaga, (), "acc-s").given_events(&deposits[..k]).when_event(event);
        expected.expect_commands(&[Record { account: "acc-s".into(), amount: (k as u64 + 1) * 10 }]);
        let worker = if k % 3 == 2 { &other } else { &one };
        assert_eq!(worker.handle_event(event).await.unwrap(), StepOutcome::Applied);
        let state = one.load_instance("acc-s").await.unwrap();
        expected.expect_state(&state);
    }
    assert_eq!(world.ledger("acc-s").await.0, 210, "each dispatched command landed once");
}
