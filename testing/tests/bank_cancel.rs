//! The bank cancel idiom: a transfer saga credits the payee and starts a 30 s timeout, cancellable as
//! `"timeout"`; the `Credited` event cancels it; the timeout, if it ever fires, refunds the payer.
//!
//! Each test runs twice: with the in-memory idiom (`Effect::delay(..).cancellable("timeout")`,
//! `Effect::cancel("timeout")`) and with a durable deadline (`Effect::deadline_after("timeout", ..)`,
//! `Effect::cancel_deadline("timeout")`), under the `TestStore` and under the saga runner: all four
//! must agree.
//!
//! Regression: the old saga runner awaited the `Delay` inline before taking the next delivery, so the
//! `Credited` delivery (and its cancel) came only after the timeout had fired, and every transfer was
//! refunded. The timeout's refund is unconditional here on purpose: only the cancel stops it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ACCOUNT_EVENTS, Account, AccountCommand, AccountEvent, Recording};
use composable_rust_core::{
    CodecError, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, DomainEvent, Effect, EventBus, EventStore, Reducer, Saga, SagaInput,
    SerializedEvent, smallvec,
};
use composable_rust_runtime::{AggregateHandler, CommandRouter, Executor, RetryPolicy, SagaRunner};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore, TestClock, TestStore};
use serde::{Deserialize, Serialize};

const TRANSFERS: &str = "bank.transfers";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Gives the payer's money back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refund {
    account: String,
    transfer: String,
    amount: u64,
}

/// What the bus carries to request a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TransferRequested {
    transfer: String,
    from: String,
    to: String,
    amount: u64,
}

fn requested(transfer: &str, to: &str) -> SerializedEvent {
    let payload = TransferRequested { transfer: transfer.into(), from: "alice".into(), to: to.into(), amount: 10 };
    SerializedEvent::from_payload("TransferRequested.v1", &payload, None).unwrap()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TransferAction {
    Requested(TransferRequested),
    Credited,
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Status {
    #[default]
    New,
    Pending,
    Credited,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Transfer {
    request: Option<TransferRequested>,
    status: Status,
}

/// How the saga times a transfer out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// A cancellable in-memory delay.
    Delay,
    /// A durable deadline.
    Deadline,
}

const TIMERS: [Timer; 2] = [Timer::Delay, Timer::Deadline];

struct TransferSaga(Timer);

impl Reducer for TransferSaga {
    type State = Transfer;
    type Action = TransferAction;
    type Environment = ();

    fn reduce(&self, state: &mut Transfer, action: TransferAction, (): &()) -> composable_rust_core::Effects<TransferAction> {
        match action {
            TransferAction::Requested(r) => {
                state.status = Status::Pending;
                state.request = Some(r.clone());
                let timeout = match self.0 {
                    Timer::Delay => Effect::delay(TIMEOUT, TransferAction::Timeout).cancellable("timeout"),
                    Timer::Deadline => Effect::deadline_after("timeout", TIMEOUT, TransferAction::Timeout),
                };
                smallvec![Effect::dispatch(AccountCommand::Credit { account: r.to, transfer: r.transfer, amount: r.amount }), timeout]
            }
            TransferAction::Credited => {
                state.status = Status::Credited;
                match self.0 {
                    Timer::Delay => smallvec![Effect::cancel("timeout")],
                    Timer::Deadline => smallvec![Effect::cancel_deadline("timeout")],
                }
            }
            TransferAction::Timeout => {
                // Unconditional on purpose: the cancel is what must stop it.
                state.status = Status::Refunded;
                let r = state.request.clone().expect("a timeout follows a request");
                smallvec![Effect::dispatch(Refund { account: r.from, transfer: r.transfer, amount: r.amount })]
            }
        }
    }
}

impl Saga for TransferSaga {
    const NAME: &'static str = "transfer";

    fn topics(&self) -> Vec<String> {
        vec![TRANSFERS.into(), ACCOUNT_EVENTS.into()]
    }

    fn initial_state(&self, _instance_id: &str) -> Transfer {
        Transfer::default()
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<TransferAction>>, CodecError> {
        match event.type_name() {
            "TransferRequested" => {
                let r: TransferRequested = event.decode_data()?;
                Ok(Some(SagaInput { instance_id: r.transfer.clone(), action: TransferAction::Requested(r) }))
            }
            "Credited" => match AccountEvent::from_serialized(event)? {
                AccountEvent::Credited { transfer, .. } => Ok(Some(SagaInput { instance_id: transfer, action: TransferAction::Credited })),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

/// Credits through the `Account` aggregate (which appends `Credited` and publishes it through the
/// outbox), except to `blackhole`, whose bank acknowledges the credit and never books it.
struct CreditGateway {
    accounts: AggregateHandler<Account>,
}

#[async_trait::async_trait]
impl CommandHandler for CreditGateway {
    fn name(&self) -> &'static str {
        "credit-gateway"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        if matches!(envelope.command.downcast_ref::<AccountCommand>(), Some(AccountCommand::Credit { account, .. }) if account == "blackhole") {
            return Ok(CommandOutcome::HANDLED);
        }
        self.accounts.handle(envelope).await
    }
}

fn request(transfer: &str, to: &str) -> TransferRequested {
    TransferRequested { transfer: transfer.into(), from: "alice".into(), to: to.into(), amount: 10 }
}

#[tokio::test]
async fn test_store_a_credited_transfer_cancels_its_timeout_and_is_never_refunded() {
    for (i, timer) in (0..50).flat_map(|i| TIMERS.map(|t| (i, t))) {
        let r = request(&format!("t-{i}"), "bob");
        let mut s = TestStore::new(Transfer::default(), TransferSaga(timer), ());
        s.send(TransferAction::Requested(r.clone()), |st| {
            st.status = Status::Pending;
            st.request = Some(r.clone());
        });
        s.settle().await;
        assert_eq!(s.clock().pending_sleepers(), 1, "{timer:?}: the timeout is running");
        s.send(TransferAction::Credited, |st| st.status = Status::Credited);
        s.settle().await;
        assert_eq!(s.clock().pending_sleepers(), 0, "{timer:?}: the cancelled timeout left the clock");
        s.advance(TIMEOUT + Duration::from_secs(1)).await;
        let dispatched = s.dispatched();
        assert_eq!(dispatched.len(), 1, "only the credit, no refund: {dispatched:?}");
        assert!(dispatched[0].starts_with("Credit {"), "{dispatched:?}");
        s.finish().await;
    }
}

#[tokio::test]
async fn test_store_a_transfer_whose_credit_never_lands_is_refunded_after_30_s() {
    for timer in TIMERS {
        test_store_lost_credit(timer).await;
    }
}

async fn test_store_lost_credit(timer: Timer) {
    let r = request("t-lost", "blackhole");
    let mut s = TestStore::new(Transfer::default(), TransferSaga(timer), ());
    s.send(TransferAction::Requested(r.clone()), |st| {
        st.status = Status::Pending;
        st.request = Some(r.clone());
    });
    s.advance(Duration::from_secs(29)).await;
    assert_eq!(s.dispatched().len(), 1, "not refunded before 30 s");
    s.advance(Duration::from_secs(2)).await;
    s.receive(TransferAction::Timeout, |st| st.status = Status::Refunded).await;
    s.settle().await;
    assert_eq!(s.dispatched().last().map(String::as_str), Some(r#"Refund { account: "alice", transfer: "t-lost", amount: 10 }"#));
    s.finish().await;
}

/// Waits (in real time, bounded) until `value()` equals `expected`.
async fn eventually<T: PartialEq + std::fmt::Debug>(what: &str, expected: T, mut value: impl FnMut() -> T) {
    for _ in 0..1000 {
        if value() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting until {what}: expected {expected:?}, still {:?}", value());
}

#[tokio::test]
async fn saga_runner_a_credited_transfer_cancels_its_timeout_and_only_the_lost_credit_is_refunded() {
    for timer in TIMERS {
        saga_runner_bank(timer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_runner_on_a_multi_thread_runtime_refunds_only_the_lost_credit() {
    for timer in TIMERS {
        saga_runner_bank(timer).await;
    }
}

async fn saga_runner_bank(timer: Timer) {
    const N: usize = 50;
    let clock = TestClock::new();
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(InMemoryEventBus::new());
    let router = CommandRouter::new();
    let executor =
        Executor::builder().store(store.clone()).bus(bus.clone()).commands(router.clone()).clock(Arc::new(clock.clone())).retry(RetryPolicy::NONE).build();
    router.register::<AccountCommand>(Arc::new(CreditGateway { accounts: AggregateHandler::new(Account, (), executor.clone()) })).unwrap();
    let refunds = Arc::new(Recording::named("refunds"));
    router.register::<Refund>(refunds.clone()).unwrap();
    let worker = SagaRunner::new(TransferSaga(timer), (), executor.clone()).spawn().await.unwrap();

    for i in 0..N {
        bus.publish(TRANSFERS, &requested(&format!("t-{i}"), "bob")).await.unwrap();
    }
    bus.publish(TRANSFERS, &requested("t-lost", "blackhole")).await.unwrap();

    // Every request and every credit handled (each credit delivery cancels its timeout).
    eventually("every transfer and credit is applied", (2 * N + 1) as u64, || worker.stats().applied).await;
    match timer {
        // The worker's deadline poll sleeps on the clock too.
        Timer::Delay => eventually("only the lost credit's timeout (and the deadline poll) is left on the clock", 2, || clock.pending_sleepers()).await,
        Timer::Deadline => {
            let left = store.deadlines(&SagaRunner::<TransferSaga>::consumer(), None, 100).await.unwrap();
            assert_eq!(left.iter().map(|d| d.owner.instance.as_str()).collect::<Vec<_>>(), vec!["t-lost"], "only the lost credit's deadline is stored");
        }
    }
    assert!(refunds.commands().is_empty(), "nothing refunded before 30 s");

    clock.advance(TIMEOUT + Duration::from_secs(1)).await;
    eventually("the lost credit is refunded", 1, || refunds.commands().len()).await;
    // Let any (wrong) timeout follow-up run before counting.
    clock.advance(TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(refunds.commands(), vec![r#"Refund { account: "alice", transfer: "t-lost", amount: 10 }"#.to_string()], "zero refunds of credited transfers");

    let stats = worker.shutdown().await;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let checker = SagaRunner::new(TransferSaga(timer), (), executor.clone());
    for i in 0..N {
        let t = format!("t-{i}");
        assert_eq!(checker.load_instance(&t).await.unwrap().status, Status::Credited, "{t}");
        let steps = store.read_stream(&SagaRunner::<TransferSaga>::instance_stream(&t).unwrap(), composable_rust_core::Version(1), 10).await.unwrap();
        assert_eq!(steps.len(), 2, "{t}: requested and credited, no timeout step");
    }
    assert_eq!(checker.load_instance("t-lost").await.unwrap().status, Status::Refunded);
    assert!(store.deadlines(&SagaRunner::<TransferSaga>::consumer(), None, 100).await.unwrap().is_empty(), "the fired deadline is completed");
    if timer == Timer::Deadline {
        assert_eq!(stats.deadlines_fired, 1, "{stats:?}");
    }
    let bob = AggregateHandler::new(Account, (), executor).load("bob", None).await.unwrap().state;
    assert_eq!((bob.balance, bob.credited.len()), (10 * N as u64, N), "every credit booked once");
}

/// A deadline pending when every worker stops fires after they come back, once, although two
/// workers (fresh executors, as after a restart) look for it at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_pending_while_no_worker_runs_fires_once_after_restart() {
    let clock = TestClock::new();
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(InMemoryEventBus::new());
    let refunds = Arc::new(Recording::named("refunds"));
    let start = |with_worker: bool| {
        let (store, bus, clock, refunds) = (store.clone(), bus.clone(), clock.clone(), refunds.clone());
        async move {
            let router = CommandRouter::new();
            let executor = Executor::builder().store(store).bus(bus).commands(router.clone()).clock(Arc::new(clock)).retry(RetryPolicy::NONE).build();
            router.register::<AccountCommand>(Arc::new(CreditGateway { accounts: AggregateHandler::new(Account, (), executor.clone()) })).unwrap();
            router.register::<Refund>(refunds).unwrap();
            let runner = SagaRunner::new(TransferSaga(Timer::Deadline), (), executor.clone());
            if with_worker { (Some(runner.spawn().await.unwrap()), None) } else { (None, Some(runner)) }
        }
    };
    let (first, _) = start(true).await;
    let first = first.unwrap();
    bus.publish(TRANSFERS, &requested("t-lost", "blackhole")).await.unwrap();
    eventually("the request is applied", 1, || first.stats().applied).await;
    first.shutdown().await;
    assert_eq!(store.deadlines(&SagaRunner::<TransferSaga>::consumer(), None, 10).await.unwrap().len(), 1, "stored, not in a timer");

    // Due while nobody runs.
    clock.advance(TIMEOUT * 2).await;
    assert!(refunds.commands().is_empty());
    let (a, _) = start(true).await;
    let (b, _) = start(true).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    eventually("the late deadline fires", 1, || a.stats().deadlines_fired + b.stats().deadlines_fired).await;
    clock.advance(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (sa, sb) = (a.shutdown().await, b.shutdown().await);
    assert_eq!(sa.deadlines_fired + sb.deadlines_fired, 1, "{sa:?} {sb:?}");
    assert_eq!(refunds.commands().len(), 1, "refunded once: {:?}", refunds.commands());
    let steps = store.read_stream(&SagaRunner::<TransferSaga>::instance_stream("t-lost").unwrap(), composable_rust_core::Version(1), 10).await.unwrap();
    assert_eq!(steps.len(), 2, "requested, then the deadline's step, once");
    assert!(store.deadlines(&SagaRunner::<TransferSaga>::consumer(), None, 10).await.unwrap().is_empty());
}

/// The step that scheduled a deadline, delivered again, schedules nothing more; fired by hand
/// (`fire_due_deadlines`) twice, the deadline reaches the instance once.
#[tokio::test]
async fn redelivery_schedules_no_second_deadline_and_a_deadline_fires_once() {
    let clock = TestClock::new();
    let store = Arc::new(InMemoryEventStore::new());
    let router = CommandRouter::new();
    let executor = Executor::builder().store(store.clone()).commands(router.clone()).clock(Arc::new(clock.clone())).retry(RetryPolicy::NONE).build();
    router.register::<AccountCommand>(Arc::new(Recording::named("credits"))).unwrap();
    let refunds = Arc::new(Recording::named("refunds"));
    router.register::<Refund>(refunds.clone()).unwrap();
    let runner = SagaRunner::new(TransferSaga(Timer::Deadline), (), executor);
    let event = requested("t-1", "bob");
    runner.handle_event(&event).await.unwrap();
    let first = store.deadlines(&SagaRunner::<TransferSaga>::consumer(), None, 10).await.unwrap();
    runner.handle_event(&event).await.unwrap();
    assert_eq!(store.deadlines(&SagaRunner::<TransferSaga>::consumer(), None, 10).await.unwrap(), first, "the redelivery changed no deadline");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].due_at, composable_rust_core::Clock::now(&clock) + chrono::Duration::from_std(TIMEOUT).unwrap(), "due on the executor's clock");

    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 0, "not due yet");
    clock.advance(TIMEOUT).await;
    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 1);
    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 0, "completed");
    assert_eq!(runner.load_instance("t-1").await.unwrap().status, Status::Refunded);
    assert_eq!(refunds.commands().len(), 1);
}

/// The saga scenario's virtual clock fires deadlines the `given` steps scheduled, and never a
/// cancelled one.
#[test]
fn scenario_time_fires_due_deadlines_and_never_a_cancelled_one() {
    use composable_rust_core::Due;
    use composable_rust_testing::SagaScenario;
    let r = request("t-1", "bob");
    let refund = Refund { account: "alice".into(), transfer: "t-1".into(), amount: 10 };

    SagaScenario::new(TransferSaga(Timer::Deadline), (), "t-1").when(TransferAction::Requested(r.clone())).expect_deadline(
        "timeout",
        Due::After(TIMEOUT),
        &TransferAction::Timeout,
    );

    let early = SagaScenario::new(TransferSaga(Timer::Deadline), (), "t-1").given([TransferAction::Requested(r.clone())]);
    assert_eq!(early.pending_deadlines(), vec![("timeout", TIMEOUT)]);
    early.when_time_passes(Duration::from_secs(29)).expect_no_commands().check_state(|s| assert_eq!(s.status, Status::Pending));

    SagaScenario::new(TransferSaga(Timer::Deadline), (), "t-1")
        .given([TransferAction::Requested(r.clone())])
        .when_time_passes(TIMEOUT)
        .expect_commands(&[refund])
        .check_state(|s| assert_eq!(s.status, Status::Refunded));

    let credited = SagaScenario::new(TransferSaga(Timer::Deadline), (), "t-1").given([TransferAction::Requested(r), TransferAction::Credited]);
    assert!(credited.pending_deadlines().is_empty(), "the credit cancelled the timeout");
    credited.when_time_passes(TIMEOUT * 10).expect_no_commands().check_state(|s| assert_eq!(s.status, Status::Credited));
}
