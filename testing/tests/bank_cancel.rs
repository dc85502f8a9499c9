//! The bank cancel idiom: a transfer saga credits the payee and starts a 30 s timeout, cancellable as
//! `"timeout"`; the `Credited` event cancels it; the timeout, if it ever fires, refunds the payer.
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

struct TransferSaga;

impl Reducer for TransferSaga {
    type State = Transfer;
    type Action = TransferAction;
    type Environment = ();

    fn reduce(&self, state: &mut Transfer, action: TransferAction, (): &()) -> composable_rust_core::Effects<TransferAction> {
        match action {
            TransferAction::Requested(r) => {
                state.status = Status::Pending;
                state.request = Some(r.clone());
                smallvec![
                    Effect::dispatch(AccountCommand::Credit { account: r.to, transfer: r.transfer, amount: r.amount }),
                    Effect::delay(TIMEOUT, TransferAction::Timeout).cancellable("timeout"),
                ]
            }
            TransferAction::Credited => {
                state.status = Status::Credited;
                smallvec![Effect::cancel("timeout")]
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
    for i in 0..50 {
        let r = request(&format!("t-{i}"), "bob");
        let mut s = TestStore::new(Transfer::default(), TransferSaga, ());
        s.send(TransferAction::Requested(r.clone()), |st| {
            st.status = Status::Pending;
            st.request = Some(r.clone());
        });
        s.settle().await;
        assert_eq!(s.clock().pending_sleepers(), 1, "the timeout is running");
        s.send(TransferAction::Credited, |st| st.status = Status::Credited);
        s.settle().await;
        assert_eq!(s.clock().pending_sleepers(), 0, "the cancelled timeout left the clock");
        s.advance(TIMEOUT + Duration::from_secs(1)).await;
        let dispatched = s.dispatched();
        assert_eq!(dispatched.len(), 1, "only the credit, no refund: {dispatched:?}");
        assert!(dispatched[0].starts_with("Credit {"), "{dispatched:?}");
        s.finish().await;
    }
}

#[tokio::test]
async fn test_store_a_transfer_whose_credit_never_lands_is_refunded_after_30_s() {
    let r = request("t-lost", "blackhole");
    let mut s = TestStore::new(Transfer::default(), TransferSaga, ());
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
    saga_runner_bank().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_runner_on_a_multi_thread_runtime_refunds_only_the_lost_credit() {
    saga_runner_bank().await;
}

async fn saga_runner_bank() {
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
    let worker = SagaRunner::new(TransferSaga, (), executor.clone()).spawn().await.unwrap();

    for i in 0..N {
        bus.publish(TRANSFERS, &requested(&format!("t-{i}"), "bob")).await.unwrap();
    }
    bus.publish(TRANSFERS, &requested("t-lost", "blackhole")).await.unwrap();

    // Every request and every credit handled (each credit delivery cancels its timeout).
    eventually("every transfer and credit is applied", (2 * N + 1) as u64, || worker.stats().applied).await;
    eventually("only the lost credit's timeout is left on the clock", 1, || clock.pending_sleepers()).await;
    assert!(refunds.commands().is_empty(), "nothing refunded before 30 s");

    clock.advance(TIMEOUT + Duration::from_secs(1)).await;
    eventually("the lost credit is refunded", 1, || refunds.commands().len()).await;
    // Let any (wrong) timeout follow-up run before counting.
    clock.advance(TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(refunds.commands(), vec![r#"Refund { account: "alice", transfer: "t-lost", amount: 10 }"#.to_string()], "zero refunds of credited transfers");

    let stats = worker.shutdown().await;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let checker = SagaRunner::new(TransferSaga, (), executor.clone());
    for i in 0..N {
        let t = format!("t-{i}");
        assert_eq!(checker.load_instance(&t).await.unwrap().status, Status::Credited, "{t}");
        let steps = store.read_stream(&SagaRunner::<TransferSaga>::instance_stream(&t).unwrap(), composable_rust_core::Version(1), 10).await.unwrap();
        assert_eq!(steps.len(), 2, "{t}: requested and credited, no timeout step");
    }
    assert_eq!(checker.load_instance("t-lost").await.unwrap().status, Status::Refunded);
    let bob = AggregateHandler::new(Account, (), executor).load("bob", None).await.unwrap().state;
    assert_eq!((bob.balance, bob.credited.len()), (10 * N as u64, N), "every credit booked once");
}
