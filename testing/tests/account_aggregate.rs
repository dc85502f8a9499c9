//! A typed aggregate through the `AggregateHandler`: rejections reach the caller typed (directly
//! and through a saga's dispatch), and the state is only ever what `apply` folds from the stored
//! events.

mod common;

use std::sync::Arc;

use common::{Account, AccountCommand, AccountError, AccountEvent, AccountState};
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{Aggregate, CodecError, Dispatch, DomainEvent, Reducer, Saga, SagaInput, SerializedEvent, Version, smallvec};
use composable_rust_runtime::{AggregateError, AggregateHandler, CommandRouter, Executor, RetryPolicy, SagaRunner};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn executor(store: &Arc<InMemoryEventStore>, router: &CommandRouter) -> Executor {
    Executor::builder().store(store.clone()).bus(Arc::new(InMemoryEventBus::new())).commands(router.clone()).retry(RetryPolicy::NONE).build()
}

fn deposit(account: &str, amount: u64) -> AccountCommand {
    AccountCommand::Deposit { account: account.into(), amount }
}

fn withdraw(account: &str, amount: u64) -> AccountCommand {
    AccountCommand::Withdraw { account: account.into(), amount }
}

#[tokio::test]
async fn send_returns_the_aggregates_typed_rejection() {
    let store = Arc::new(InMemoryEventStore::new());
    let handler = AggregateHandler::new(Account, (), executor(&store, &CommandRouter::new()));
    handler.send(deposit("acc-1", 5)).await.unwrap();

    let err = handler.send(withdraw("acc-1", 10)).await.unwrap_err();
    assert!(matches!(err, AggregateError::Rejected(AccountError::Overdraft { balance: 5, requested: 10 })), "{err:?}");
    assert_eq!(store.event_count(), 1, "a rejected command stores nothing");
    assert_eq!(handler.load("acc-1", None).await.unwrap().state.balance, 5);
}

/// A saga that pays out; an overdraft comes back to it, typed, through the dispatch's `on_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Payout {
    Requested {
        account: String,
        amount: u64,
    },
    /// The withdrawal was refused; `overdraft` is the typed rejection read back, if it was one.
    Refused {
        overdraft: Option<(u64, u64)>,
        message: String,
    },
}

struct PayoutSaga;

impl Reducer for PayoutSaga {
    type State = Vec<Payout>;
    type Action = Payout;
    type Environment = ();

    fn reduce(&self, log: &mut Vec<Payout>, action: Payout, (): &()) -> composable_rust_core::Effects<Payout> {
        log.push(action.clone());
        match action {
            Payout::Requested { account, amount } => smallvec![
                Dispatch::new(withdraw(&account, amount))
                    .on_error(|e| Payout::Refused {
                        overdraft: e.rejection::<AccountError>().map(|AccountError::Overdraft { balance, requested }| (*balance, *requested)),
                        message: e.to_string(),
                    })
                    .into()
            ],
            Payout::Refused { .. } => smallvec![],
        }
    }
}

impl Saga for PayoutSaga {
    const NAME: &'static str = "payout";

    fn topics(&self) -> Vec<String> {
        vec!["payouts".into()]
    }

    fn initial_state(&self, _instance_id: &str) -> Vec<Payout> {
        Vec::new()
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Payout>>, CodecError> {
        let action: Payout = event.decode_data()?;
        let Payout::Requested { account, .. } = &action else { return Ok(None) };
        Ok(Some(SagaInput { instance_id: account.clone(), action }))
    }
}

#[tokio::test]
async fn a_sagas_dispatch_gets_the_typed_rejection_in_on_error() {
    let store = Arc::new(InMemoryEventStore::new());
    let router = CommandRouter::new();
    let executor = executor(&store, &router);
    let accounts = AggregateHandler::new(Account, (), executor.clone()).register().unwrap();
    accounts.send(deposit("acc-2", 3)).await.unwrap();
    let runner = SagaRunner::new(PayoutSaga, (), executor);

    let request = Payout::Requested { account: "acc-2".into(), amount: 7 };
    runner.handle_event(&SerializedEvent::from_payload("PayoutRequested.v1", &request, None).unwrap()).await.unwrap();

    let log = runner.load_instance("acc-2").await.unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    let Payout::Refused { overdraft, message } = &log[1] else { panic!("expected the refusal to be fed back: {log:?}") };
    assert_eq!(*overdraft, Some((3, 7)), "DispatchError::rejection::<AccountError>() is Some");
    assert!(message.contains("overdraft: the balance is 3, 7 requested"), "{message}");
}

fn command() -> impl Strategy<Value = AccountCommand> {
    let account = prop_oneof![Just("a"), Just("b")];
    prop_oneof![
        (account.clone(), 0u64..20).prop_map(|(a, n)| deposit(a, n)),
        (account.clone(), 0u64..30).prop_map(|(a, n)| withdraw(a, n)),
        (account, 0u8..4, 1u64..10).prop_map(|(a, t, n)| AccountCommand::Credit { account: a.into(), transfer: format!("t-{t}"), amount: n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The state commands were decided on (folded with `apply` from each decision's events) is the
    /// state the handler loads (snapshot + events) and the state a plain replay of the stored
    /// events gives: nothing but `apply` changes it.
    #[test]
    fn handled_state_equals_the_replay_of_the_stored_events(commands in proptest::collection::vec(command(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Arc::new(InMemoryEventStore::new());
            let handler = AggregateHandler::new(Account, (), executor(&store, &CommandRouter::new()));
            let mut model = [Account::initial_state("a"), Account::initial_state("b")];
            for command in commands {
                let state = &mut model[usize::from(Account::aggregate_id(&command) == "b")];
                let decided = Account.handle(state, command.clone(), &());
                let sent = handler.send(command.clone()).await;
                match (decided, sent) {
                    (Ok(events), Ok(_)) => events.iter().for_each(|e| Account::apply(state, e)),
                    (Err(expected), Err(AggregateError::Rejected(got))) => prop_assert_eq!(expected, got),
                    (decided, sent) => prop_assert!(false, "{:?}: the model decided {:?}, the handler answered {:?}", command, decided, sent),
                }
            }
            for (id, expected) in ["a", "b"].into_iter().zip(&model) {
                let loaded = handler.load(id, None).await.unwrap();
                prop_assert_eq!(&loaded.state, expected, "loaded (snapshot + events) state of {}", id);
                prop_assert_eq!(loaded.version, Version(expected.events));
                let stream = AggregateHandler::<Account>::stream_id(id).unwrap();
                let mut replayed: AccountState = Account::initial_state(id);
                for stored in read_stream_to_end(&*store, &stream, Version(1)).await.unwrap() {
                    Account::apply(&mut replayed, &AccountEvent::from_serialized(&stored).unwrap());
                }
                prop_assert_eq!(&replayed, expected, "replayed state of {}", id);
            }
            Ok(())
        })?;
    }
}
