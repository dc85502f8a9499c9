//! Regressions found by a hostile review of the runtime: each test failed on the code as reviewed
//! (detached failures lost, a retried step overtaken by a later one of its instance, an inner
//! cancellable left registered after its outer one was cancelled, a panicking step wedging its lane,
//! cancellation scopes colliding) and passes since the fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use composable_rust_core::{
    CodecError, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, Effect, EffectPath, Effects, EventBus, EventMetadata, Reducer, Saga, SagaInput,
    SerializedEvent, smallvec,
};
use composable_rust_runtime::{CommandRouter, ExecutionScope, Executor, Feedback, InMemoryDeadLetters, RetryPolicy, SagaRunner, StepOutcome, Store};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Shared saga scaffolding: a saga whose action is `Step { instance, n }`; what it does per `n` is
// chosen by the test through a function pointer in the environment.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Step {
    instance: String,
    n: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Cmd {
    n: u32,
}

type Plan = fn(&Step) -> Vec<Effect<Step>>;

struct TestSaga;

impl Reducer for TestSaga {
    type State = Vec<u32>;
    type Action = Step;
    type Environment = Plan;

    fn reduce(&self, seen: &mut Vec<u32>, action: Step, plan: &Plan) -> Effects<Step> {
        seen.push(action.n);
        plan(&action).into_iter().collect()
    }
}

impl Saga for TestSaga {
    const NAME: &'static str = "review";

    fn topics(&self) -> Vec<String> {
        vec!["review.in".into()]
    }

    fn initial_state(&self, instance_id: &str) -> Vec<u32> {
        // Stands for any saga callback that can panic on outside input (the instance id comes from
        // the event): e.g. `instance_id.parse::<u64>().unwrap()`.
        assert!(instance_id != "poison", "initial_state panicked on instance {instance_id}");
        Vec::new()
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Step>>, CodecError> {
        if event.event_type != "Step.v1" {
            return Ok(None);
        }
        let s: Step = event.decode_data()?;
        Ok(Some(SagaInput { instance_id: s.instance.clone(), action: s }))
    }
}

fn step(instance: &str, n: u32) -> SerializedEvent {
    SerializedEvent::from_payload("Step.v1", &Step { instance: instance.into(), n }, Some(EventMetadata::now())).unwrap()
}

/// A command handler that records the commands it accepted and can fail some attempts.
struct Recorder {
    /// `n` of every command accepted, in order.
    accepted: Mutex<Vec<u32>>,
    calls: AtomicU32,
    /// Decides whether the `call`-th call (1-based, over all commands) with this `n` fails retryably,
    /// and how long it takes before answering.
    behaviour: fn(n: u32, call_of_n: u32) -> (bool, Duration),
    calls_of: Mutex<std::collections::HashMap<u32, u32>>,
}

impl Recorder {
    fn new(behaviour: fn(u32, u32) -> (bool, Duration)) -> Arc<Self> {
        Arc::new(Self { accepted: Mutex::default(), calls: AtomicU32::new(0), behaviour, calls_of: Mutex::default() })
    }
}

#[async_trait::async_trait]
impl CommandHandler for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = envelope.command.downcast_ref::<Cmd>().expect("a Cmd").n;
        let call_of_n = {
            let mut m = self.calls_of.lock();
            let c = m.entry(n).or_insert(0);
            *c += 1;
            *c
        };
        let (fail, delay) = (self.behaviour)(n, call_of_n);
        tokio::time::sleep(delay).await;
        if fail {
            return Err(DispatchError::Failed { target: "recorder".into(), reason: "temporarily unavailable".into(), retryable: true });
        }
        self.accepted.lock().push(n);
        Ok(CommandOutcome::Handled { position: None })
    }
}

struct World {
    bus: Arc<InMemoryEventBus>,
    dead_letters: Arc<InMemoryDeadLetters>,
    recorder: Arc<Recorder>,
    executor: Executor,
}

fn world(behaviour: fn(u32, u32) -> (bool, Duration)) -> World {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(InMemoryEventBus::new());
    let router = CommandRouter::new();
    let recorder = Recorder::new(behaviour);
    router.register::<Cmd>(recorder.clone()).unwrap();
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let executor = Executor::builder().store(store).bus(bus.clone()).commands(router).dead_letters(dead_letters.clone()).retry(RetryPolicy::NONE).build();
    World { bus, dead_letters, recorder, executor }
}

// ---------------------------------------------------------------------------------------------
// 1. A retryable failure of an effect after a waiting effect (run detached in a saga step) is lost
//    silently: not retried, not dead-lettered, not nacked.
// ---------------------------------------------------------------------------------------------

/// Breaks: "Retryable failures are negatively acknowledged (redelivered) up to a bound, then
/// dead-lettered" / executor "Failures other than conflicts ... are dead-lettered". The detached
/// part keeps the step's `caller_retries` scope, so the executor does not dead-letter the retryable
/// failure (it expects the caller to retry), but the caller (the saga step) was already acknowledged
/// and the detached task only logs it at debug level. The command is gone without a trace.
#[tokio::test]
async fn a_detached_retryable_failure_is_dead_lettered() {
    fn plan(s: &Step) -> Vec<Effect<Step>> {
        // "Wait for something, then dispatch": the dispatch runs detached, after the Run.
        vec![Effect::run(async { None }), Effect::dispatch(Cmd { n: s.n })]
    }
    fn always_down(_: u32, _: u32) -> (bool, Duration) {
        (true, Duration::ZERO)
    }
    let w = world(always_down);
    let runner = SagaRunner::new(TestSaga, plan as Plan, w.executor.clone());
    assert_eq!(runner.handle_event(&step("i", 1)).await.unwrap(), StepOutcome::Applied);
    runner.detached_settled().await;

    assert_eq!(w.recorder.calls.load(Ordering::SeqCst), 1, "the detached dispatch ran once and failed");
    assert!(
        w.dead_letters.total() > 0,
        "a retryable failure nobody will retry must at least be dead-lettered; got no letter (calls: {})",
        w.recorder.calls.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Lanes + nack: the redelivery of a failed step is queued behind later steps of its instance.
// ---------------------------------------------------------------------------------------------

/// Breaks: "steps of one instance strictly in delivery order ... A slow step holds back only its own
/// instance", and the in-memory bus's own promise that a nacked event is delivered before new ones.
/// Step 1 of instance `i` fails retryably and is nacked; step 2 of `i` was already taken by the
/// worker (it sits in the lane behind step 1, or in the run loop waiting for a slot), so the
/// redelivered step 1 lands *behind* step 2: step 2's command is accepted before step 1's. With a
/// Reserve/Cancel pair this is a cancel overtaking the reservation it cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_step_is_not_overtaken_by_a_later_step_of_the_same_instance() {
    fn plan(s: &Step) -> Vec<Effect<Step>> {
        vec![Effect::dispatch(Cmd { n: s.n })]
    }
    // Command 1 fails (slowly) on its first call, then succeeds.
    fn first_call_of_1_fails(n: u32, call: u32) -> (bool, Duration) {
        if n == 1 && call == 1 { (true, Duration::from_millis(50)) } else { (false, Duration::ZERO) }
    }
    let w = world(first_call_of_1_fails);
    let handle = SagaRunner::new(TestSaga, plan as Plan, w.executor.clone()).spawn().await.unwrap();
    w.bus.publish("review.in", &step("i", 1)).await.unwrap();
    w.bus.publish("review.in", &step("i", 2)).await.unwrap();
    for _ in 0..400 {
        if w.recorder.accepted.lock().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = handle.shutdown().await;
    assert_eq!(stats.redelivery_requests, 1, "{stats:?}");
    assert_eq!(*w.recorder.accepted.lock(), vec![1, 2], "one instance's commands must land in delivery order");
}

// ---------------------------------------------------------------------------------------------
// 3. A panic inside a lane's handler leaves the lane in the map with no drainer: that instance is
//    wedged for good, and each later delivery for it pins one of the `max_in_hand` slots until the
//    whole worker stops taking deliveries.
// ---------------------------------------------------------------------------------------------

/// Breaks: "a panicking reducer never wedges ... the saga worker" / "panicking reducers are
/// dead-lettered and acknowledged". The runner catches panics of `reduce` only; anything else in
/// the step that panics (here `Saga::initial_state` while replaying the instance) unwinds through
/// `Lanes::drain`, which has no unwind guard: the lane's (now empty) queue stays in the map, later
/// deliveries for that key are queued behind a drainer that no longer exists and hold their slot
/// forever, and once `max_in_hand` of them are stuck an unrelated instance is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_step_is_dead_lettered_and_wedges_neither_its_lane_nor_the_worker() {
    fn plan(s: &Step) -> Vec<Effect<Step>> {
        vec![Effect::dispatch(Cmd { n: s.n })]
    }
    fn ok(_: u32, _: u32) -> (bool, Duration) {
        (false, Duration::ZERO)
    }
    let w = world(ok);
    let handle = SagaRunner::new(TestSaga, plan as Plan, w.executor.clone()).with_max_in_hand(2).spawn().await.unwrap();
    for n in 1..=3 {
        w.bus.publish("review.in", &step("poison", n)).await.unwrap();
    }
    w.bus.publish("review.in", &step("healthy", 100)).await.unwrap();
    for _ in 0..200 {
        if w.recorder.accepted.lock().contains(&100) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accepted = w.recorder.accepted.lock().clone();
    let stats = handle.stats();
    assert!(accepted.contains(&100), "the healthy instance was never served: the worker is wedged ({stats:?})");
    assert_eq!(stats.dead_lettered, 3, "each poisoned delivery should be dead-lettered and acknowledged: {stats:?}");
    // Shutdown returns even so: the stuck deliveries hold no tracker guard, and are never acked.
    handle.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. A cancellable nested in a cancellable that is cancelled never leaves the registry: a stale
//    registration (unbounded growth; with `throttle` a permanent block).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tap {
    Start,
    Stop,
    Fired,
}

struct Throttled;

impl Reducer for Throttled {
    type State = u32;
    type Action = Tap;
    type Environment = ();

    fn reduce(&self, fired: &mut u32, action: Tap, (): &()) -> Effects<Tap> {
        match action {
            // A throttled tap, as part of a larger cancellable piece of work ("outer").
            Tap::Start => smallvec![Effect::throttle("tap", Duration::from_millis(20), Tap::Fired).cancellable("outer")],
            Tap::Stop => smallvec![Effect::cancel("outer")],
            Tap::Fired => {
                *fired += 1;
                smallvec![]
            }
        }
    }
}

/// Breaks: cancellation bookkeeping / "maps that never shrink". When `Cancellable("outer")` is
/// aborted, the future of the inner `Cancellable("tap")` is dropped mid-await, so
/// `CancellationRegistry::finished` (executor.rs, after `Abortable::new(..).await` in `run_one`) is
/// never called for it: its entry stays in the registry forever. With `CancelInFlight::Skip`
/// (throttle) that stale entry makes every later throttle with the id a no-op, long after its window
/// is over. (The same drop path leaks entries when `Store::shutdown` cancels effects.)
#[tokio::test]
async fn cancelling_an_outer_cancellable_unregisters_the_inner_one() {
    let store = Store::new(0u32, Throttled, ());
    store.send(Tap::Start).unwrap().finish().await; // fires once, window of 20 ms passes
    assert_eq!(store.state(), 1);

    let _ = store.send(Tap::Start).unwrap(); // fires, then sleeps in its window...
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.send(Tap::Stop).unwrap().finish().await; // ...and the outer work is cancelled
    store.settled().await;
    assert_eq!(store.state(), 2);

    tokio::time::sleep(Duration::from_millis(60)).await; // well past any window
    store.send(Tap::Start).unwrap().finish().await;
    assert_eq!(store.state(), 3, "the throttle window is long over, the tap must fire again");
}

// ---------------------------------------------------------------------------------------------
// 5. Cancellation scopes are joined with '/' and nothing escapes either side: scopes collide.
// ---------------------------------------------------------------------------------------------

/// Breaks: "Cancellation ids are scoped to the instance: `Effect::cancel(..)` in one instance never
/// touches another's". `EffectId::scoped` is `format!("{scope}/{id}")` (core/src/effect.rs), so
/// instance `a` (stream `saga.review-a`) with id `b/timeout` and instance `a/b` (stream
/// `saga.review-a/b`, a valid stream id, instance ids come from event payloads) with id `timeout`
/// are the same key: the second instance's cancel kills the first instance's timer.
#[tokio::test]
async fn cancel_scopes_never_collide_across_instances() {
    let executor = Executor::default();
    let fired: Arc<Mutex<Vec<u32>>> = Arc::default();
    let sink = Arc::clone(&fired);
    let feedback: Feedback<u32> = Arc::new(move |_: EffectPath, n| sink.lock().push(n));

    let scope_a = ExecutionScope::default().with_cancel_scope("saga.review-a");
    let timer = executor.start(vec![Effect::delay(Duration::from_millis(30), 1).cancellable("b/timeout")], Arc::clone(&feedback), scope_a);
    let timer = tokio::spawn(timer);

    let scope_ab = ExecutionScope::default().with_cancel_scope("saga.review-a/b");
    executor.run(vec![Effect::<u32>::cancel("timeout")], &feedback, &scope_ab).await.unwrap();

    timer.await.unwrap().unwrap();
    assert_eq!(*fired.lock(), vec![1], "instance a/b's cancel(\"timeout\") must not cancel instance a's \"b/timeout\"");
}
