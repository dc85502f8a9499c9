//! Review of durable saga deadlines (issue 13) in a spawned saga worker: lanes, leases and claims.
//! Virtual time (a `TestClock` drives the worker's polls, leases and the slow handlers); real time
//! only in bounded waits for the worker's task to catch up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use composable_rust_core::{
    Clock, CodecError, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, Effect, Effects, EventBus, Reducer, Saga, SagaInput, SerializedEvent,
    smallvec,
};
use composable_rust_runtime::{CommandRouter, Executor, InMemoryDeadLetters, RetryPolicy, SagaRunner, SagaRunnerHandle};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore, TestClock};
use serde::{Deserialize, Serialize};

/// Takes `secs` seconds of the test clock to handle (a slow payment service).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slow(u64);

/// Counts how often the deadline's effect ran.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark;

struct SlowHandler(TestClock);

#[async_trait::async_trait]
impl CommandHandler for SlowHandler {
    fn name(&self) -> &'static str {
        "slow"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let secs = envelope.command.downcast_ref::<Slow>().map_or(0, |s| s.0);
        self.0.sleep(Duration::from_secs(secs)).await;
        Ok(CommandOutcome::HANDLED)
    }
}

struct MarkHandler(Arc<AtomicU32>);

#[async_trait::async_trait]
impl CommandHandler for MarkHandler {
    fn name(&self) -> &'static str {
        "mark"
    }

    async fn handle(&self, _: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(CommandOutcome::HANDLED)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Action {
    /// Schedules `timeout` in 1 s.
    Arm,
    /// A step that dispatches `Slow(secs)` (holds the instance's lane that long).
    Work(u64),
    /// The deadline: dispatches `Mark`.
    TimedOut,
    /// Counted in the state.
    Ping,
    /// Schedules `slow-timeout` in 1 s, whose step takes 1 s of the clock.
    ArmSlow,
    SlowTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct State {
    pings: u32,
    timeouts: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Msg {
    instance: String,
    action: Action,
}

struct Lanes;

impl Reducer for Lanes {
    type State = State;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut State, action: Action, (): &()) -> Effects<Action> {
        match action {
            Action::Arm => smallvec![Effect::deadline_after("timeout", Duration::from_secs(1), Action::TimedOut)],
            Action::Work(secs) => smallvec![Effect::dispatch(Slow(secs))],
            Action::TimedOut => {
                state.timeouts += 1;
                smallvec![Effect::dispatch(Mark)]
            }
            Action::Ping => {
                state.pings += 1;
                smallvec![]
            }
            Action::ArmSlow => smallvec![Effect::deadline_after("slow-timeout", Duration::from_secs(1), Action::SlowTimeout)],
            Action::SlowTimeout => {
                state.timeouts += 1;
                smallvec![Effect::dispatch(Slow(1))]
            }
        }
    }
}

impl Saga for Lanes {
    const NAME: &'static str = "lanes";

    fn topics(&self) -> Vec<String> {
        vec!["lanes".into()]
    }

    fn initial_state(&self, _: &str) -> State {
        State::default()
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Action>>, CodecError> {
        let m: Msg = event.decode_data()?;
        Ok(Some(SagaInput { instance_id: m.instance, action: m.action }))
    }
}

struct World {
    clock: TestClock,
    bus: Arc<InMemoryEventBus>,
    executor: Executor,
    marks: Arc<AtomicU32>,
}

impl World {
    fn new() -> Self {
        let clock = TestClock::new();
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let marks = Arc::new(AtomicU32::new(0));
        let router = CommandRouter::new();
        router.register::<Slow>(Arc::new(SlowHandler(clock.clone()))).unwrap();
        router.register::<Mark>(Arc::new(MarkHandler(Arc::clone(&marks)))).unwrap();
        let executor = Executor::builder()
            .store(store)
            .bus(bus.clone())
            .clock(Arc::new(clock.clone()))
            .retry(RetryPolicy::NONE)
            .dead_letters(Arc::new(InMemoryDeadLetters::default()))
            .commands(router)
            .build();
        Self { clock, bus, executor, marks }
    }

    fn runner(&self) -> SagaRunner<Lanes> {
        SagaRunner::new(Lanes, (), self.executor.clone())
    }

    async fn send(&self, instance: &str, action: Action) {
        let event = SerializedEvent::from_payload("Lanes.v1", &Msg { instance: instance.into(), action }, None).unwrap();
        self.bus.publish("lanes", &event).await.unwrap();
    }

    /// Moves the test clock forward in 100 ms steps (the worker's poll interval).
    async fn advance(&self, by: Duration) {
        let steps = by.as_millis() / 100;
        for _ in 0..steps {
            self.clock.advance(Duration::from_millis(100)).await;
        }
    }
}

/// Lets the worker's task catch up (bounded real-time wait) until `done`; returns whether it did.
async fn eventually(handle: &SagaRunnerHandle, done: impl Fn(&composable_rust_runtime::saga_runner::SagaStatsSnapshot) -> bool) -> bool {
    for _ in 0..200 {
        if done(&handle.stats()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// DEFECT: a deadline's lease runs from its claim, also while it waits in its instance's lane, and
/// a worker claims again deadlines it already holds. Here every step takes 4 s, less than the 5 s
/// lease (as the docs ask), but the deadline waits ~11 s behind three steps of its instance: the
/// same worker claims it twice more and queues the copies in the same lane, so the deadline's step
/// runs three times (`deadlines_fired` 3, its command dispatched three times) with no crash and no
/// second worker.
#[tokio::test]
async fn a_deadline_waiting_in_a_busy_lane_is_not_claimed_again_by_its_own_worker() {
    let world = World::new();
    let handle = world.runner().with_deadline_lease(Duration::from_secs(5)).spawn().await.unwrap();
    world.send("a", Action::Arm).await;
    assert!(eventually(&handle, |s| s.applied == 1).await, "{:?}", handle.stats());
    for _ in 0..3 {
        world.send("a", Action::Work(4)).await;
    }
    tokio::task::yield_now().await;
    world.advance(Duration::from_secs(25)).await;
    assert!(eventually(&handle, |s| s.applied == 4 && s.deadlines_fired >= 1).await, "{:?}", handle.stats());
    world.advance(Duration::from_secs(25)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = handle.stats();
    let marks = world.marks.load(Ordering::SeqCst);
    assert_eq!(world.runner().load_instance("a").await.unwrap().timeouts, 1, "the instance saw the deadline once (de-duplicated)");
    assert_eq!(
        (stats.deadlines_fired, marks),
        (1, 1),
        "the deadline was claimed again while it waited in its own worker's lane: its step ran {} times, its command was dispatched {marks} times",
        stats.deadlines_fired
    );
    handle.shutdown().await;
}

/// DEFECT: a worker keeps re-claiming a deadline of an instance whose lane is stuck (a dependency
/// that never answers, a step far slower than the lease) and queues every copy in that lane; each
/// copy holds one of the `max_in_hand` slots until the lane moves, so after `max_in_hand` leases
/// (64 x 30 s by default) the slots are full of copies of one deadline and the worker stops taking
/// deliveries: every other instance waits for the stuck one, which is what lanes exist to prevent.
/// (`run_loop` then blocks in `Lanes::push`, deaf to shutdown as well.) The control test below
/// shows the same stuck instance without a due deadline holds back nobody.
#[tokio::test]
async fn reclaimed_copies_of_a_deadline_of_a_stuck_instance_do_not_starve_other_instances() {
    let world = World::new();
    let handle = world.runner().with_max_in_hand(4).spawn().await.unwrap();
    world.send("a", Action::Arm).await;
    assert!(eventually(&handle, |s| s.applied == 1).await, "{:?}", handle.stats());
    // Instance a's lane is held by a step whose dependency does not answer for hours.
    world.send("a", Action::Work(10_000)).await;
    tokio::task::yield_now().await;
    world.advance(Duration::from_secs(200)).await;
    world.send("b", Action::Ping).await;
    world.advance(Duration::from_secs(1)).await;
    let b_handled = eventually(&handle, |s| s.applied >= 2).await;
    assert!(b_handled, "instance b's delivery was never taken while instance a is stuck: {:?}", handle.stats());
    assert_eq!(world.runner().load_instance("b").await.unwrap().pings, 1);
    // No shutdown: a's step does not end within this test.
    drop(handle);
}

/// Guard (control of the test above): the same stuck instance with no due deadline holds back only
/// itself.
#[tokio::test]
async fn a_stuck_instance_without_a_due_deadline_holds_back_nobody() {
    let world = World::new();
    let handle = world.runner().with_max_in_hand(4).spawn().await.unwrap();
    world.send("a", Action::Work(10_000)).await;
    tokio::task::yield_now().await;
    world.advance(Duration::from_secs(200)).await;
    world.send("b", Action::Ping).await;
    world.advance(Duration::from_secs(1)).await;
    assert!(eventually(&handle, |s| s.applied >= 1).await, "{:?}", handle.stats());
    assert_eq!(world.runner().load_instance("b").await.unwrap().pings, 1);
    drop(handle);
}

/// DEFECT (in-memory store): `claim_due_deadlines` computes the claim's end as `now + lease`, which
/// panics for a lease beyond chrono's range; SQLite and PostgreSQL saturate ("a huge lease holds
/// forever"). A worker built `with_deadline_lease(Duration::MAX)` on the in-memory store dies at its
/// first poll (the panic is not caught in `run_loop`) and never takes a delivery.
#[tokio::test]
async fn a_worker_with_a_very_long_deadline_lease_keeps_working_on_the_in_memory_store() {
    let world = World::new();
    let handle = world.runner().with_deadline_lease(Duration::MAX).spawn().await.unwrap();
    world.send("a", Action::Ping).await;
    let handled = eventually(&handle, |s| s.applied == 1).await;
    assert!(handled, "the worker never handled the delivery (its task died): {:?}", handle.stats());
    handle.shutdown().await;
}

/// DEFECT: while at least `max_in_hand` deadlines are due (a backlog after downtime, the case
/// deadlines are built for), the worker's loop polls for deadlines again at once (`full` -> a zero
/// sleep) and its `biased` select takes that poll before the bus: no delivery is taken until the
/// whole backlog is down to less than `max_in_hand`. Here 12 due deadlines of 12 instances, each
/// step 1 s, two in hand: a delivery for an unrelated instance waits for all of them (~6 s) instead
/// of getting the next free slot.
#[tokio::test]
async fn a_backlog_of_due_deadlines_does_not_hold_back_deliveries() {
    let world = World::new();
    let first = world.runner().spawn().await.unwrap();
    for k in 0..12 {
        world.send(&format!("c{k}"), Action::ArmSlow).await;
    }
    assert!(eventually(&first, |s| s.applied == 12).await, "{:?}", first.stats());
    first.shutdown().await;
    // Downtime: all twelve come due while no worker runs.
    world.clock.advance(Duration::from_secs(10)).await;
    let handle = world.runner().with_max_in_hand(2).spawn().await.unwrap();
    tokio::task::yield_now().await;
    world.send("b", Action::Ping).await;
    let mut fired_when_b_handled = None;
    for _ in 0..200 {
        world.advance(Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let stats = handle.stats();
        if stats.applied >= 1 {
            fired_when_b_handled = Some(stats.deadlines_fired);
            break;
        }
    }
    let fired = fired_when_b_handled.expect("b's delivery was handled at all");
    assert!(fired <= 4, "b's delivery waited until {fired} of the 12 due deadlines had fired (two slots, 1 s each)");
    handle.shutdown().await;
}
