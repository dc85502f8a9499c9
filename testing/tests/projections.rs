//! Projections on the in-memory store: read-your-writes under 32 concurrent writers, a rebuild while
//! the live copy serves and writers write, a worker group, and lag reporting.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{Account, AccountCommand, AccountEvent};
use composable_rust_core::{CommandOutcome, DomainEvent, EventFilter, EventStore, GlobalPosition, ReadModelStore, RecordedEvent};
use composable_rust_runtime::{AggregateHandler, Executor, Projection, ProjectionError, ProjectionRunner, SystemClock, View};
use composable_rust_testing::InMemoryEventStore;

/// Balance per account, from the account streams.
struct Balances;

#[async_trait]
impl Projection for Balances {
    const NAME: &'static str = "balances";

    fn filter(&self) -> EventFilter {
        EventFilter::all().category("account")
    }

    async fn apply(&self, event: &RecordedEvent, view: &mut View<'_>) -> Result<(), ProjectionError> {
        let account = event.event.stream_id.as_ref().map(|s| s.as_str().trim_start_matches("account-").to_string()).unwrap_or_default();
        let delta: i64 = match AccountEvent::from_serialized(&event.event).map_err(|e| ProjectionError::event(Self::NAME, event, e))? {
            AccountEvent::Deposited { amount } | AccountEvent::Credited { amount, .. } => i64::try_from(amount).unwrap(),
            AccountEvent::Withdrawn { amount } => -i64::try_from(amount).unwrap(),
        };
        view.update::<i64>(&format!("balance/{account}"), |b| *b += delta).await?;
        view.update::<u64>("events", |n| *n += 1).await
    }
}

fn setup() -> (Arc<InMemoryEventStore>, AggregateHandler<Account>) {
    let store = Arc::new(InMemoryEventStore::new());
    let executor = Executor::builder().store(store.clone()).build();
    (store.clone(), AggregateHandler::new(Account, (), executor))
}

fn runner(store: &Arc<InMemoryEventStore>) -> ProjectionRunner<Balances> {
    ProjectionRunner::new(Balances, store.clone() as Arc<dyn EventStore>, store.clone() as Arc<dyn ReadModelStore>)
        .with_poll(Duration::from_millis(1), Arc::new(SystemClock))
}

fn position(outcome: &CommandOutcome) -> GlobalPosition {
    match outcome {
        CommandOutcome::Handled { position: Some(p) } => *p,
        other => panic!("the command stored an event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_32_concurrent_writers_reads_its_own_write() {
    let (store, accounts) = setup();
    let accounts = Arc::new(accounts);
    let handle = runner(&store).spawn();
    let reader = handle.reader().clone();
    let mut writers = Vec::new();
    for w in 0..32u64 {
        let (accounts, reader) = (Arc::clone(&accounts), reader.clone());
        writers.push(tokio::spawn(async move {
            let account = format!("acc-{w}");
            for round in 1..=5u64 {
                let outcome = accounts.send(AccountCommand::Deposit { account: account.clone(), amount: w + 1 }).await.expect("deposit");
                reader.wait_for(position(&outcome), Duration::from_secs(30)).await.expect("the projection reaches the write");
                let balance = reader.get(&format!("balance/{account}")).await.unwrap();
                assert_eq!(balance, Some(serde_json::json!((w + 1) * round)), "writer {w} round {round} sees its own write");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let status = reader.status().await.unwrap();
    assert_eq!(status.checkpoint.position, status.head, "caught up");
    assert_eq!((status.lag_events, status.lag), (0, Duration::ZERO));
    handle.shutdown().await;
}

#[tokio::test]
async fn waiting_for_a_position_never_reached_is_a_typed_timeout() {
    let (store, accounts) = setup();
    let outcome = accounts.send(AccountCommand::Deposit { account: "a".into(), amount: 1 }).await.unwrap();
    let r = runner(&store);
    let err = r.reader::<i64>().wait_for(position(&outcome), Duration::from_millis(30)).await.expect_err("nobody runs the projection");
    assert!(matches!(err, composable_rust_runtime::WaitError::TimedOut { reached: GlobalPosition(0), .. }), "{err}");
    let status = r.reader::<i64>().status().await.unwrap();
    assert_eq!(status.lag_events, 1, "one event behind");
    r.catch_up().await.unwrap();
    r.reader::<i64>().wait_for(position(&outcome), Duration::from_millis(30)).await.expect("reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_while_the_live_copy_serves_and_writers_write() {
    let (store, accounts) = setup();
    for i in 0..300u64 {
        accounts.send(AccountCommand::Deposit { account: format!("acc-{}", i % 10), amount: 1 }).await.unwrap();
    }
    let live = runner(&store).with_batch(16).spawn();
    let reader = live.reader().clone();
    reader.wait_for(store.head().await.unwrap(), Duration::from_secs(30)).await.unwrap();
    // Readers keep reading while writers write and the rebuild runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (reader, stop) = (reader.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let b = reader.get("balance/acc-0").await.unwrap();
                assert!(b.is_some(), "the live copy kept serving during the rebuild");
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    let writer = {
        let accounts = Arc::new(accounts);
        tokio::spawn(async move {
            for i in 0..300u64 {
                accounts.send(AccountCommand::Deposit { account: format!("acc-{}", i % 10), amount: 1 }).await.unwrap();
            }
        })
    };
    let batches = std::sync::atomic::AtomicU64::new(0);
    let rebuilder = runner(&store).with_batch(8);
    let report = rebuilder
        .rebuild(|_, _| {
            batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .expect("rebuild");
    assert!(report.applied >= 300, "{report:?}");
    assert!(batches.into_inner() > 10, "progress was reported per batch");
    writer.await.unwrap();
    reader.wait_for(store.head().await.unwrap(), Duration::from_secs(30)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    for a in 0..10 {
        assert_eq!(reader.get(&format!("balance/acc-{a}")).await.unwrap(), Some(serde_json::json!(60)), "acc-{a}: every deposit once");
    }
    assert_eq!(reader.get("events").await.unwrap(), Some(serde_json::json!(600)));
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_group_applies_each_event_once() {
    let (store, accounts) = setup();
    let workers: Vec<_> = (0..3).map(|_| runner(&store).with_batch(5).with_lease(Duration::from_millis(50)).spawn()).collect();
    for i in 0..200u64 {
        accounts.send(AccountCommand::Deposit { account: format!("acc-{}", i % 4), amount: 2 }).await.unwrap();
    }
    let reader = workers[0].reader().clone();
    reader.wait_for(store.head().await.unwrap(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(reader.get("events").await.unwrap(), Some(serde_json::json!(200)));
    for a in 0..4 {
        assert_eq!(reader.get(&format!("balance/acc-{a}")).await.unwrap(), Some(serde_json::json!(100)));
    }
    for w in workers {
        w.shutdown().await;
    }
}
