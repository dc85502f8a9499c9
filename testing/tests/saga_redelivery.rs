//! What a saga step does when its event is delivered again (a crash before the acknowledgement, a
//! failed effect): recorded follow-ups get their effects run, every id is derived (from the step and
//! the effect's path), so every effect lands once whatever order things finished in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{
    CodecError, CommandEnvelope, CommandHandler, CommandOutcome, Dispatch, DispatchError, Effect, EventBus, EventStore, ExpectedVersion, Reducer, Saga,
    SagaInput, SerializedEvent, StreamId, SubscribeOptions, Topic, Version, smallvec,
};
use composable_rust_runtime::{CommandRouter, Executor, RetryPolicy, SagaRunner, StepOutcome};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the delivered event asks the saga to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Kind {
    /// Charge; on failure, release the stock (a compensation).
    Checkout,
    /// Ship four parcels, in parallel (one branch a sequence of two).
    Fanout,
    /// Two probes in parallel that fail after `ms` each; each failure is fed back.
    Race { first_ms: u64, second_ms: u64 },
    /// Two delays in parallel; each feeds back when due.
    DelayRace { first_ms: u64, second_ms: u64 },
    /// Append an audit event (published through the outbox) and publish a notification.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Requested {
    order: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Action {
    Start(Kind),
    ChargeFailed,
    BranchFailed(u8),
    Fired(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Charge(String);
#[derive(Debug, Clone, PartialEq, Eq)]
struct Release(String);
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ship(String, u8);
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe(u64);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Order {
    id: String,
    log: Vec<Action>,
}

struct Orders;

impl Reducer for Orders {
    type State = Order;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut Order, action: Action, (): &()) -> composable_rust_core::Effects<Action> {
        state.log.push(action.clone());
        let order = state.id.clone();
        match action {
            Action::Start(Kind::Checkout) => smallvec![Dispatch::new(Charge(order)).on_error(|_| Action::ChargeFailed).into()],
            Action::ChargeFailed => smallvec![Effect::dispatch(Release(order))],
            Action::Start(Kind::Fanout) => smallvec![Effect::Parallel(vec![
                Effect::dispatch(Ship(order.clone(), 1)),
                Effect::dispatch(Ship(order.clone(), 2)),
                Effect::Sequential(vec![Effect::dispatch(Ship(order.clone(), 3)), Effect::dispatch(Ship(order, 4))]),
            ])],
            Action::Start(Kind::Race { first_ms, second_ms }) => smallvec![Effect::Parallel(vec![
                Dispatch::new(Probe(first_ms)).on_error(|_| Action::BranchFailed(0)).into(),
                Dispatch::new(Probe(second_ms)).on_error(|_| Action::BranchFailed(1)).into(),
            ])],
            Action::Start(Kind::DelayRace { first_ms, second_ms }) => smallvec![Effect::Parallel(vec![
                Effect::delay(Duration::from_millis(first_ms), Action::Fired(0)),
                Effect::delay(Duration::from_millis(second_ms), Action::Fired(1)),
            ])],
            Action::Start(Kind::Audit) => smallvec![
                Effect::append(
                    StreamId::new(format!("audit-{order}")).unwrap(),
                    ExpectedVersion::Any,
                    vec![SerializedEvent::new("Audited.v1", order.clone().into_bytes(), None)]
                )
                .publish_to(Topic::new("audit.events").unwrap())
                .into(),
                Effect::publish(Topic::new("notify.events").unwrap(), SerializedEvent::new("Notified.v1", order.into_bytes(), None)),
            ],
            Action::BranchFailed(_) | Action::Fired(_) => smallvec![],
        }
    }
}

impl Saga for Orders {
    const NAME: &'static str = "orders";

    fn topics(&self) -> Vec<String> {
        vec!["orders".into()]
    }

    fn initial_state(&self, instance_id: &str) -> Order {
        Order { id: instance_id.to_string(), log: Vec::new() }
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Action>>, CodecError> {
        let r: Requested = event.decode_data()?;
        Ok(Some(SagaInput { instance_id: r.order, action: Action::Start(r.kind) }))
    }
}

fn requested(order: &str, kind: Kind) -> SerializedEvent {
    SerializedEvent::from_payload("Requested.v1", &Requested { order: order.into(), kind }, None).unwrap()
}

/// Fails its first `fail_first` calls (retryably or not), then handles each command id once.
struct Scripted {
    fail_first: u32,
    retryable: bool,
    calls: Mutex<Vec<Uuid>>,
    landed: Mutex<Vec<(Uuid, String)>>,
}

impl Scripted {
    fn new(fail_first: u32, retryable: bool) -> Arc<Self> {
        Arc::new(Self { fail_first, retryable, calls: Mutex::default(), landed: Mutex::default() })
    }

    fn landed(&self) -> Vec<String> {
        self.landed.lock().iter().map(|(_, c)| c.clone()).collect()
    }

    fn call_ids(&self) -> Vec<Uuid> {
        self.calls.lock().clone()
    }
}

#[async_trait::async_trait]
impl CommandHandler for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let call = {
            let mut calls = self.calls.lock();
            calls.push(envelope.command_id);
            calls.len()
        };
        if u32::try_from(call).unwrap_or(u32::MAX) <= self.fail_first {
            return Err(DispatchError::Failed { target: "scripted".into(), reason: format!("call {call} fails (test)"), retryable: self.retryable });
        }
        let mut landed = self.landed.lock();
        if landed.iter().any(|(id, _)| *id == envelope.command_id) {
            return Ok(CommandOutcome::Duplicate);
        }
        landed.push((envelope.command_id, format!("{:?}", envelope.command)));
        Ok(CommandOutcome::HANDLED)
    }
}

/// Fails every probe after sleeping the probe's milliseconds.
struct Prober;

#[async_trait::async_trait]
impl CommandHandler for Prober {
    fn name(&self) -> &'static str {
        "prober"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let ms = envelope.command.downcast_ref::<Probe>().map_or(0, |p| p.0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Err(DispatchError::Failed { target: "prober".into(), reason: "probe failed (test)".into(), retryable: false })
    }
}

struct World {
    store: Arc<InMemoryEventStore>,
    bus: Arc<InMemoryEventBus>,
    router: CommandRouter,
    runner: SagaRunner<Orders>,
}

impl World {
    fn new() -> Self {
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let router = CommandRouter::new();
        let executor = Executor::builder().store(store.clone()).bus(bus.clone()).commands(router.clone()).retry(RetryPolicy::NONE).build();
        Self { store, bus, router, runner: SagaRunner::new(Orders, (), executor) }
    }

    /// The instance's recorded steps: (record id, action).
    async fn steps(&self, order: &str) -> Vec<(Uuid, Action)> {
        let stream = SagaRunner::<Orders>::instance_stream(order).unwrap();
        let records = self.store.read_stream(&stream, Version(1), 100).await.unwrap();
        records.iter().map(|r| (r.event_id, composable_rust_core::decode_payload(&r.data).unwrap())).collect()
    }
}

/// Delivers `event` again until a delivery succeeds (as the worker's redelivery would); returns how
/// many deliveries failed.
async fn deliver_until_ok(runner: &SagaRunner<Orders>, event: &SerializedEvent) -> usize {
    for failed in 0..6 {
        match runner.handle_event(event).await {
            Ok(_) => return failed,
            Err(e) => assert!(e.is_retryable(), "a retryable failure (the worker redelivers): {e}"),
        }
    }
    panic!("the delivery never succeeded");
}

#[tokio::test]
async fn a_recorded_compensation_lands_exactly_once_when_its_first_dispatch_failed() {
    // Charge is always refused; the compensation (Release) fails retryably on its first call, after
    // its follow-up step was recorded. The redelivery must run the recorded follow-up's dispatch.
    let world = World::new();
    let (charge, release) = (Scripted::new(u32::MAX, false), Scripted::new(1, true));
    world.router.register::<Charge>(charge.clone()).unwrap();
    world.router.register::<Release>(release.clone()).unwrap();
    let event = requested("o-1", Kind::Checkout);

    assert_eq!(deliver_until_ok(&world.runner, &event).await, 1, "the first delivery fails with the compensation");
    assert_eq!(release.landed(), vec![r#"Release("o-1")"#.to_string()]);
    assert_eq!(world.runner.handle_event(&event).await.unwrap(), StepOutcome::Duplicate);
    assert_eq!(release.landed().len(), 1, "a further redelivery does not land it again");
    assert_eq!(release.call_ids().iter().collect::<BTreeSet<_>>().len(), 1, "every attempt carried the same command id");
    let steps: Vec<Action> = world.steps("o-1").await.into_iter().map(|(_, a)| a).collect();
    assert_eq!(steps, vec![Action::Start(Kind::Checkout), Action::ChargeFailed], "the follow-up is recorded once");
}

#[tokio::test]
async fn a_recorded_compensation_runs_on_redelivery_even_if_the_failed_dispatch_now_succeeds() {
    // Charge fails once (a gateway hiccup) and succeeds when the event is delivered again: it no
    // longer feeds `ChargeFailed` back, but that decision was recorded, and its compensation must
    // still land.
    let world = World::new();
    let (charge, release) = (Scripted::new(1, false), Scripted::new(1, true));
    world.router.register::<Charge>(charge.clone()).unwrap();
    world.router.register::<Release>(release.clone()).unwrap();
    let event = requested("o-2", Kind::Checkout);

    assert_eq!(deliver_until_ok(&world.runner, &event).await, 1);
    assert_eq!(release.landed(), vec![r#"Release("o-2")"#.to_string()], "the recorded compensation landed");
    world.runner.handle_event(&event).await.unwrap();
    assert_eq!(release.landed().len(), 1, "exactly once");
    assert_eq!(release.call_ids().iter().collect::<BTreeSet<_>>().len(), 1);
}

#[tokio::test]
async fn commands_dispatched_in_parallel_get_the_same_ids_on_redelivery() {
    let world = World::new();
    let ship = Scripted::new(0, false);
    world.router.register::<Ship>(ship.clone()).unwrap();
    let event = requested("o-3", Kind::Fanout);

    assert_eq!(world.runner.handle_event(&event).await.unwrap(), StepOutcome::Applied);
    let first: BTreeSet<Uuid> = ship.call_ids().into_iter().collect();
    assert_eq!(world.runner.handle_event(&event).await.unwrap(), StepOutcome::Duplicate);
    let calls = ship.call_ids();
    assert_eq!(calls.len(), 8, "both deliveries dispatched all four");
    let second: BTreeSet<Uuid> = calls[4..].iter().copied().collect();
    assert_eq!(first.len(), 4, "four distinct ids");
    assert_eq!(first, second, "the same ids both times");
    assert_eq!(ship.landed().len(), 4, "so each parcel is shipped once");
}

async fn race_follow_ups(kind: Kind) -> Vec<(Uuid, Action)> {
    let world = World::new();
    world.router.register::<Probe>(Arc::new(Prober)).unwrap();
    // The same event (same id) in every world.
    let mut event = requested("o-4", kind);
    event.event_id = Uuid::from_u128(42);
    world.runner.handle_event(&event).await.unwrap();
    world.runner.detached_settled().await;
    world.steps("o-4").await.into_iter().skip(1).collect()
}

#[tokio::test]
async fn follow_up_ids_do_not_depend_on_which_parallel_branch_finishes_first() {
    // Failures fed back while the step runs.
    let first_wins = race_follow_ups(Kind::Race { first_ms: 0, second_ms: 30 }).await;
    let second_wins = race_follow_ups(Kind::Race { first_ms: 30, second_ms: 0 }).await;
    assert_eq!(first_wins.len(), 2);
    // The events differ in their payload (the delays), so compare the ids each action got.
    let ids = |steps: &[(Uuid, Action)]| steps.iter().map(|(id, a)| (a.clone(), *id)).collect::<std::collections::BTreeMap<_, _>>();
    let (a, b) = (ids(&first_wins), ids(&second_wins));
    assert_eq!(a.get(&Action::BranchFailed(0)), b.get(&Action::BranchFailed(0)), "branch 0's follow-up id does not depend on timing");
    assert_eq!(a.get(&Action::BranchFailed(1)), b.get(&Action::BranchFailed(1)));
    assert_ne!(a.get(&Action::BranchFailed(0)), a.get(&Action::BranchFailed(1)));

    // Delays coming due after the step (detached follow-ups).
    let first_due = race_follow_ups(Kind::DelayRace { first_ms: 5, second_ms: 40 }).await;
    let second_due = race_follow_ups(Kind::DelayRace { first_ms: 40, second_ms: 5 }).await;
    assert_eq!(first_due.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), vec![Action::Fired(0), Action::Fired(1)], "recorded as they came due");
    assert_eq!(second_due.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), vec![Action::Fired(1), Action::Fired(0)]);
    let (a, b) = (ids(&first_due), ids(&second_due));
    assert_eq!(a, b, "each delay's follow-up has the same id whichever came due first");
}

#[tokio::test]
async fn a_sagas_own_append_and_publish_land_once_across_redeliveries() {
    let world = World::new();
    let mut audit = world.bus.subscribe_with(&["audit.events"], SubscribeOptions::exclusive()).await.unwrap();
    let mut notify = world.bus.subscribe_with(&["notify.events"], SubscribeOptions::exclusive()).await.unwrap();
    let event = requested("o-5", Kind::Audit);

    world.runner.handle_event(&event).await.unwrap();
    world.runner.handle_event(&event).await.unwrap();
    world.runner.handle_event(&event).await.unwrap();

    let stored = world.store.read_stream(&StreamId::new("audit-o-5").unwrap(), Version(1), 10).await.unwrap();
    assert_eq!(stored.len(), 1, "the append is stored once (its event id is derived, a retry is idempotent)");
    assert_eq!(world.store.pending_outbox_len(), 0);
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        ids.insert(tokio::time::timeout(Duration::from_secs(1), audit.next()).await.unwrap().unwrap().unwrap().event().event_id);
    }
    assert_eq!(ids, BTreeSet::from([stored[0].event_id]), "published at least once, always as the stored event (consumers de-duplicate)");
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        ids.insert(tokio::time::timeout(Duration::from_secs(1), notify.next()).await.unwrap().unwrap().unwrap().event().event_id);
    }
    assert_eq!(ids.len(), 1, "the notification carries the same id on every redelivery");
}
