//! One small scenario over every URL the facade connects: an aggregate's decisions stored in the
//! store named by one URL and published through the bus named by another, under a namespace and
//! counted by the runtime's decorators, then received by a consumer group and read back.
//!
//! Servers: PostgreSQL, NATS and Kafka run when `DATABASE_URL`, `NATS_URL` and `KAFKA_BROKERS` are
//! set (scripts/test.sh sets them); under `CI=true` a missing one is a failure, not a skip. Tests of
//! a backend whose feature is off are ignored (scripts/test.sh runs them with `--features all`).

use std::sync::Arc;
use std::time::Duration;

use composable_rust::runtime::{AggregateHandler, CountingBus, Executor, NamespacedBus};
use composable_rust::{Aggregate, ConnectError, DomainEvent, EventBus, StreamId, SubscribeOptions, Target, Version, bus, store};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
struct Deposit {
    account: String,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    cents: u64,
}

impl DomainEvent for Deposited {
    fn event_type(&self) -> &'static str {
        "Deposited.v1"
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("never")]
struct Never;

struct Account;

impl Aggregate for Account {
    const AGGREGATE_TYPE: &'static str = "account";
    type State = u64;
    type Command = Deposit;
    type Event = Deposited;
    type Error = Never;
    type Environment = ();

    fn aggregate_id(command: &Deposit) -> &str {
        &command.account
    }

    fn initial_state(_id: &str) -> u64 {
        0
    }

    fn handle(&self, _balance: &u64, command: Deposit, (): &()) -> Result<Vec<Deposited>, Never> {
        Ok(vec![Deposited { cents: command.cents }])
    }

    fn apply(balance: &mut u64, event: &Deposited) {
        *balance += event.cents;
    }

    fn topic() -> Option<composable_rust::Topic> {
        composable_rust::Topic::new("account.events").ok()
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Three deposits through the store at `store_url` and the bus at `bus_url`: stored with
/// consecutive versions, published once each, received in order by a consumer group.
async fn scenario(store_url: &str, bus_url: &str) {
    let store = store::connect(store_url).await.unwrap_or_else(|e| panic!("store {store_url}: {e}"));
    let broker = bus::connect(bus_url).await.unwrap_or_else(|e| panic!("bus {bus_url}: {e}"));
    // Runs sharing a broker (or a database) stay apart: their own namespace and account.
    let namespaced = NamespacedBus::new(broker, &unique("t")).expect("a valid namespace");
    let bus = Arc::new(CountingBus::counting(Arc::new(namespaced)));
    let mut audit = bus.subscribe_with(&["account.events"], SubscribeOptions::group("audit")).await.unwrap_or_else(|e| panic!("{bus_url}: {e}"));

    let executor = Executor::builder().store(Arc::clone(&store)).bus(Arc::clone(&bus) as Arc<dyn EventBus>).build();
    let accounts = AggregateHandler::new(Account, (), executor);
    let account = unique("acct-");
    for cents in [10, 20, 30] {
        accounts.send(Deposit { account: account.clone(), cents }).await.unwrap_or_else(|e| panic!("{store_url} / {bus_url}: {e}"));
    }

    let stream = StreamId::new(format!("account-{account}")).unwrap();
    let mut versions = Vec::new();
    while versions.len() < 3 {
        let item = tokio::time::timeout(Duration::from_secs(30), audit.next()).await.unwrap_or_else(|_| panic!("{bus_url}: got {versions:?} only"));
        let delivery = match item.expect("the subscription goes on") {
            Ok(delivery) => delivery,
            Err(e) => {
                eprintln!("{bus_url}: stream error item: {e}");
                continue;
            }
        };
        assert_eq!(delivery.topic().as_str(), "account.events", "the namespace is not visible to consumers");
        assert_eq!(delivery.event().event_type, "Deposited.v1");
        assert_eq!(delivery.event().stream_id.as_ref(), Some(&stream));
        versions.push(delivery.event().stream_version.expect("a stored event").0);
        delivery.ack().await.unwrap();
    }
    assert_eq!(versions, [1, 2, 3], "{bus_url}: one stream's events in order, each once");
    assert_eq!(bus.counters().published(), 3, "{bus_url}");
    assert_eq!(bus.counters().publish_failures(), 0, "{bus_url}");

    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(3), "{store_url}");
    assert_eq!(accounts.load(&account, None).await.unwrap().state, 60, "{store_url}");
    assert!(store.pending_publications(100).await.unwrap().iter().all(|p| p.event.stream_id.as_ref() != Some(&stream)), "{store_url}: outbox drained");
}

/// The server URL in `var`, or `None` (a failure under `CI=true`).
fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {var} is not set (scripts/test.sh starts the server and sets it)");
            eprintln!("skipping: {var} not set");
            None
        }
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{}", unique("cr-facade-"), name))
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test]
async fn memory_store_and_memory_bus() {
    scenario("memory:", "memory:").await;
    scenario("memory", "memory:?capacity=64").await;
}

#[tokio::test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
async fn sqlite_file_store() {
    let path = temp_path("events.db");
    let url = format!("sqlite:{}", path.display());
    scenario(&url, "memory:").await;
    scenario(&url, "memory:").await; // again, on the same file: it keeps the first run's events
    let store = store::connect(&url).await.unwrap();
    assert_eq!(store.read_all(composable_rust::GlobalPosition(0), 100).await.unwrap().len(), 6);
    remove_sqlite(&path);
}

#[tokio::test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
async fn sqlite_in_memory_store() {
    scenario("sqlite::memory:", "memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
async fn embedded_zenoh_bus() {
    scenario("memory:", "zenoh:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
async fn zenoh_peer_bus() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    scenario("memory:", &format!("zenoh:peer?listen=tcp/127.0.0.1:{port}&capacity=1024")).await;
}

#[tokio::test]
async fn dual_bus_over_two_in_memory_buses() {
    scenario("memory:", "dual:memory|memory").await;
    scenario("memory:", "dual:memory:|memory:|dual-read-secondary:required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
async fn dual_bus_from_memory_to_zenoh() {
    scenario("memory:", "dual:memory:|zenoh:|dual-read-secondary").await;
}

#[tokio::test]
#[cfg_attr(not(feature = "postgres"), ignore = "needs --features postgres")]
async fn postgres_store() {
    let Some(url) = server("DATABASE_URL") else { return };
    scenario(&url, "memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "nats"), ignore = "needs --features nats")]
async fn nats_bus() {
    let Some(url) = server("NATS_URL") else { return };
    scenario("memory:", &url).await;
}

/// `kafka://KAFKA_BROKERS`, with `KAFKA_CLIENT_PROPERTIES` (`k=v,k=v`; the tansu workaround
/// scripts/test.sh sets) as the query.
fn kafka_url(scheme: &str) -> Option<String> {
    let brokers = server("KAFKA_BROKERS")?;
    let properties = std::env::var("KAFKA_CLIENT_PROPERTIES").unwrap_or_default().replace(',', "&");
    Some(if properties.is_empty() { format!("{scheme}://{brokers}") } else { format!("{scheme}://{brokers}?{properties}") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "redpanda"), ignore = "needs --features redpanda")]
async fn kafka_bus() {
    let Some(url) = kafka_url("kafka") else { return };
    scenario("memory:", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(all(feature = "redpanda", feature = "postgres")), ignore = "needs --features redpanda,postgres")]
async fn redpanda_bus_and_postgres_store() {
    let (Some(bus), Some(store)) = (kafka_url("redpanda"), server("DATABASE_URL")) else { return };
    scenario(&store, &bus).await;
}

#[tokio::test]
async fn an_unknown_scheme_lists_the_known_ones() {
    let err = bus::connect("mqtt://broker:1883").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::UnknownScheme { scheme, target: Target::Bus, .. } if scheme == "mqtt"), "{err:?}");
    assert!(err.to_string().contains("use one of memory:, nats:, redpanda:, kafka:, zenoh:, dual:"), "{err}");
    let err = store::connect("mysql://localhost/db").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::UnknownScheme { known, target: Target::Store, .. } if *known == store::SCHEMES), "{err:?}");
    assert!(err.to_string().contains("use one of memory:, sqlite:, postgres:, postgresql:"), "{err}");
}

#[tokio::test]
async fn a_malformed_url_points_at_the_bad_part() {
    let err = bus::connect("memory:?capacity=none").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::Malformed { part, .. } if part == "capacity=none"), "{err:?}");
    let err = bus::connect("dual:memory").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::Malformed { part, .. } if part == "memory"), "{err:?}");
    let err = store::connect("memory:/tmp/x").await.err().expect("refused");
    assert_eq!(err.to_string(), "malformed event store URL \"memory:/tmp/x\": \"/tmp/x\": memory: takes no path and no options");
}

#[tokio::test]
#[cfg_attr(not(feature = "redpanda"), ignore = "needs --features redpanda")]
async fn a_malformed_kafka_query_pair_is_named() {
    let err = bus::connect("redpanda://127.0.0.1:9092?batch.num.messages").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::Malformed { part, .. } if part == "batch.num.messages"), "{err:?}");
    let err = bus::connect("kafka://:9092").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::Malformed { part, reason, .. } if part == ":9092" && reason.contains("host is empty")), "{err:?}");
    // The shape of each broker is the bus's to check; its explanation comes back as malformed too.
    let err = bus::connect("kafka://localhost").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::Malformed { part, reason, .. } if part == "localhost" && reason.contains("no :PORT")), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
async fn a_malformed_zenoh_endpoint_is_named() {
    let err = bus::connect("zenoh:peer?connect=127.0.0.1:7447").await.err().expect("refused");
    assert!(matches!(&err, ConnectError::Malformed { part, reason, .. } if part == "127.0.0.1:7447" && reason.contains("missing the protocol")), "{err:?}");
}

#[tokio::test]
#[cfg_attr(not(feature = "sqlite"), ignore = "needs --features sqlite")]
async fn a_failed_connection_keeps_the_backends_error_as_source() {
    let url = "sqlite:/nonexistent-directory-of-composable-rust/events.db";
    let err = store::connect(url).await.err().expect("no such directory");
    assert!(matches!(err, ConnectError::Connect { backend: "sqlite", target: Target::Store, .. }), "{err:?}");
    assert!(err.is_retryable());
    #[cfg(feature = "sqlite")]
    {
        let source = std::error::Error::source(&err).expect("the backend's error");
        assert!(source.downcast_ref::<composable_rust::sqlite::SqliteError>().is_some(), "{source:?}");
        assert!(err.to_string().starts_with(&format!("cannot connect the event store at {url}: cannot open SQLite database")), "{err}");
    }
    let err = store::connect("sqlite:").await.err().expect("no path");
    assert!(matches!(&err, ConnectError::Malformed { reason, .. } if reason.contains("names no SQLite database file")), "{err:?}");
}

#[tokio::test]
#[cfg_attr(not(feature = "nats"), ignore = "needs --features nats")]
async fn an_unreachable_nats_server_is_a_connection_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again at once
    let err = bus::connect(&format!("nats://user:secret@127.0.0.1:{port}")).await.err().expect("nothing listens there");
    assert!(matches!(&err, ConnectError::Connect { backend: "nats", url, .. } if url.contains("user:***@") && !url.contains("secret")), "{err:?}");
    #[cfg(feature = "nats")]
    assert!(std::error::Error::source(&err).and_then(|s| s.downcast_ref::<composable_rust::nats::NatsError>()).is_some(), "{err:?}");
}

#[tokio::test]
#[cfg_attr(not(feature = "postgres"), ignore = "needs --features postgres")]
async fn an_unreachable_postgres_server_is_a_connection_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = store::connect(&format!("postgres://app:pw@127.0.0.1:{port}/db")).await.err().expect("nothing listens there");
    assert!(matches!(err, ConnectError::Connect { backend: "postgres", .. }), "{err:?}");
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

/// Run by [`the_environment_names_the_urls`] in a child process with the variables set (a test
/// cannot set them in its own process: `set_var` is unsafe while other threads run).
#[tokio::test]
#[ignore = "run by the_environment_names_the_urls in a child process"]
async fn from_env_in_a_child_process() {
    match std::env::var("CR_FACADE_ENV_CASE").as_deref() {
        Ok("set") => {
            let bus = bus::from_env().await.expect("COMPOSABLE_BUS_URL=memory:?capacity=8");
            assert_eq!(bus.backend(), "in-memory");
            store::from_env().await.expect("COMPOSABLE_STORE_URL=memory:");
        }
        Ok("unset") => {
            let err = bus::from_env().await.err().expect("unset");
            assert_eq!(err.to_string(), "COMPOSABLE_BUS_URL is not set: set it to an event bus URL, e.g. COMPOSABLE_BUS_URL=memory:");
            let err = store::from_env().await.err().expect("unset");
            assert!(matches!(err, ConnectError::NotSet { var: "COMPOSABLE_STORE_URL", target: Target::Store, .. }), "{err:?}");
            assert_eq!(bus::from_env_or("memory:").await.expect("the default").backend(), "in-memory");
            store::from_env_or("memory:").await.expect("the default");
        }
        Ok("bad") => {
            let err = bus::from_env().await.err().expect("a bad URL");
            assert!(matches!(err, ConnectError::UnknownScheme { .. }), "{err:?}");
        }
        _ => {}
    }
}

#[test]
fn the_environment_names_the_urls() {
    for (case, bus_url, store_url) in [("set", Some("memory:?capacity=8"), Some("memory:")), ("unset", None, None), ("bad", Some("carrier-pigeon:"), None)] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args(["from_env_in_a_child_process", "--exact", "--include-ignored", "--test-threads=1"]).env("CR_FACADE_ENV_CASE", case);
        for (var, value) in [(bus::ENV_VAR, bus_url), (store::ENV_VAR, store_url)] {
            match value {
                Some(v) => child.env(var, v),
                None => child.env_remove(var),
            };
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "case {case}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("1 passed"), "case {case}: the child ran the test: {stdout}");
    }
}

/// The sink given to `connect_with_dead_letters` is the one the bus records in: a foreign sample
/// put by a raw Zenoh peer is a dead letter there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "zenoh"), ignore = "needs --features zenoh")]
async fn a_bus_records_its_dead_letters_in_the_sink_it_was_given() {
    #[cfg(feature = "zenoh")]
    {
        use composable_rust::runtime::InMemoryDeadLetters;
        use composable_rust::zenoh::ZenohEventBus;

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dead_letters = Arc::new(InMemoryDeadLetters::default());
        let url = format!("zenoh:peer?listen=tcp/127.0.0.1:{port}");
        let bus = bus::connect_with_dead_letters(&url, dead_letters.clone()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut all = bus.subscribe_with(&["events/**"], SubscribeOptions::exclusive()).await.unwrap();
        let other = ZenohEventBus::connect(&format!("zenoh:peer?connect=tcp/127.0.0.1:{port}")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while dead_letters.total() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no dead letter recorded");
            other.raw_session().put("events/Order/x/1", "not an event").await.unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(200), all.next()).await;
        }
        assert_eq!(dead_letters.letters()[0].what, "zenoh sample on events/Order/x/1");
    }
}
