//! A process killed (SIGKILL) between persisting events and publishing them loses nothing: the
//! publish intents were committed with the events, the outbox relay publishes them after the
//! "restart", and a saga consumer that sees them more than once applies each exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::{
    CodecError, Effect, EventBus, EventBusError, EventStore, EventStream, ExpectedVersion, Reducer, Saga, SagaInput, SerializedEvent, StreamId,
    SubscribeOptions, Topic, smallvec,
};
use composable_rust_runtime::outbox::relay_pending;
use composable_rust_runtime::{EffectObserver, EffectRecord, ExecutionScope, Executor, Feedback, SagaRunner};
use composable_rust_testing::InMemoryEventBus;

mod support;

use support::store;

const CHILD: &str = "CR_PG_CRASH_CHILD";
const EVENTS: u32 = 20;

/// A bus whose publishes never complete: the process will be killed while "publishing".
struct StalledBus;

#[async_trait]
impl EventBus for StalledBus {
    async fn publish(&self, _: &str, _: &SerializedEvent) -> Result<(), EventBusError> {
        futures::future::pending().await
    }
    async fn subscribe_with(&self, _: &[&str], _: SubscribeOptions) -> Result<EventStream, EventBusError> {
        Err(EventBusError::Closed)
    }
    fn backend(&self) -> &'static str {
        "stalled"
    }
}

fn topic(run: &str) -> String {
    format!("crash.r{run}")
}

/// Reports each committed append (the executor observes it before publishing the stored events).
struct ReportAppends;

impl EffectObserver for ReportAppends {
    fn observe(&self, record: EffectRecord) {
        if let EffectRecord::Append { stream_id, outcome: Ok(_), .. } = record {
            if let Some(n) = stream_id.as_str().rsplit('-').next() {
                println!("appended {n}");
                let _ = std::io::stdout().flush();
            }
        }
    }
}

/// The child: appends each event with its publish stored in the outbox (`publish_to`), reports each
/// committed append, and is killed while its publishes hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(run) = std::env::var(CHILD) else { return };
    let store: Arc<dyn EventStore> = Arc::new(store().await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(StalledBus);
    let executor = Executor::builder().store(store).bus(bus).observer(Arc::new(ReportAppends)).build();
    println!("ready");
    for n in 0..EVENTS {
        let (executor, run) = (executor.clone(), run.clone());
        tokio::spawn(async move {
            let event = SerializedEvent::new("Crash.v1", n.to_be_bytes().to_vec(), None);
            // The on_success action would come only after the (hanging) publish: appends are
            // reported by the observer instead.
            let effects: Vec<Effect<u32>> = vec![
                Effect::append(StreamId::new(format!("crash-{run}-{n}")).unwrap(), ExpectedVersion::NoStream, vec![event])
                    .publish_to(Topic::new(&topic(&run)).unwrap())
                    .into(),
            ];
            let feedback: Feedback<u32> = Arc::new(|_, _| {});
            let _ = executor.run(effects, &feedback, &ExecutionScope::default()).await;
        });
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// Counts the events of each instance; must end at exactly one per event.
struct Counting;

impl Reducer for Counting {
    type State = u32;
    type Action = u32;
    type Environment = ();
    fn reduce(&self, count: &mut u32, _: u32, (): &()) -> composable_rust_core::Effects<u32> {
        *count += 1;
        smallvec![]
    }
}

impl Saga for Counting {
    const NAME: &'static str = "crash-counter";
    fn topics(&self) -> Vec<String> {
        vec!["crash.>".into()]
    }
    fn initial_state(&self, _: &str) -> u32 {
        0
    }
    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<u32>>, CodecError> {
        let n = u32::from_be_bytes(event.data[..].try_into().map_err(|_| CodecError::Malformed { what: "crash event".into(), reason: "not 4 bytes".into() })?);
        let instance = event.stream_id.as_ref().map(ToString::to_string).unwrap_or_default();
        Ok(Some(SagaInput { instance_id: instance, action: n }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_persisted_before_a_crash_are_published_by_the_relay_and_applied_once() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(store) = store().await else { return };
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &run)
        .env("DATABASE_URL", support::database_url().expect("the parent has a database"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut appended = HashSet::new();
    while appended.len() < EVENTS as usize {
        let line = lines.next().expect("child output").unwrap();
        if let Some(n) = line.split("appended ").nth(1) {
            appended.insert(n.trim().parse::<u32>().unwrap());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let ours = |p: &composable_rust_core::PendingPublication| p.topic.as_str() == topic(&run);
    let pending: Vec<_> = store.pending_publications(100_000).await.unwrap().into_iter().filter(ours).collect();
    assert_eq!(pending.len(), EVENTS as usize, "every committed append left its publish intent");

    // "Restart": a consumer and the relay.
    let store = Arc::new(store);
    let bus = Arc::new(InMemoryEventBus::new());
    let executor = Executor::builder().store(store.clone()).bus(bus.clone()).build();
    let consumer = SagaRunner::new(Counting, (), executor.clone()).spawn().await.unwrap();
    let relayed = relay_pending(store.clone(), bus.clone()).await.unwrap();
    assert!(relayed.published >= EVENTS as usize);
    // At-least-once: a relay that died after publishing but before marking publishes again.
    for p in &pending {
        bus.publish(p.topic.as_str(), &p.event).await.unwrap();
    }
    for _ in 0..1000 {
        let s = consumer.stats();
        if s.applied >= u64::from(EVENTS) && s.duplicates >= u64::from(EVENTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = consumer.shutdown().await;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let checker = SagaRunner::new(Counting, (), executor);
    for n in 0..EVENTS {
        let applied = checker.load_instance(&format!("crash-{run}-{n}")).await.unwrap();
        assert_eq!(applied, 1, "event {n} must be applied exactly once");
    }
    assert!(store.pending_publications(100_000).await.unwrap().iter().all(|p| !ours(p)), "the relay marked everything published");
}
