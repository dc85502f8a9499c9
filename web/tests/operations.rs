//! The operations router over a real server: `/health/live`, `/health/ready` turning 503 with the
//! failing checks and their reasons when the store starts failing (and back), `/metrics`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use composable_rust_core::deadline::{ClaimedDeadline, StoredDeadline};
use composable_rust_core::{
    AppendRequest, AppendResult, EventFilter, EventStore, EventStoreError, FilteredPage, GlobalPosition, PendingPublication, PruneReport, RecordedEvent,
    SerializedEvent, Snapshot, StoreCause, StreamId, Topic, Version,
};
use composable_rust_memory::InMemoryEventStore;
use composable_rust_web::axum::Router;
use composable_rust_web::axum::http::StatusCode;
use composable_rust_web::{FeedConfig, Feeds, Health, StoreReachable, check_fn, operations_router};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{PATIENCE, get, serve};
use uuid::Uuid;

/// An in-memory store that fails every call while `down` is set, like a stopped database.
struct FlakyStore {
    inner: InMemoryEventStore,
    down: AtomicBool,
}

impl FlakyStore {
    fn check(&self) -> Result<(), EventStoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(EventStoreError::unavailable(StoreCause::msg("connection refused (test: database stopped)")));
        }
        Ok(())
    }
}

#[async_trait]
impl EventStore for FlakyStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        self.check()?;
        self.inner.append(request).await
    }
    async fn read_stream(&self, stream_id: &StreamId, from: Version, limit: usize) -> Result<Vec<SerializedEvent>, EventStoreError> {
        self.check()?;
        self.inner.read_stream(stream_id, from, limit).await
    }
    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version, EventStoreError> {
        self.check()?;
        self.inner.stream_version(stream_id).await
    }
    async fn read_all(&self, after: GlobalPosition, limit: usize) -> Result<Vec<RecordedEvent>, EventStoreError> {
        self.check()?;
        self.inner.read_all(after, limit).await
    }
    async fn read_all_filtered(&self, after: GlobalPosition, limit: usize, filter: &EventFilter) -> Result<FilteredPage, EventStoreError> {
        self.check()?;
        self.inner.read_all_filtered(after, limit, filter).await
    }
    async fn head(&self) -> Result<GlobalPosition, EventStoreError> {
        self.check()?;
        self.inner.head().await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), EventStoreError> {
        self.check()?;
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, EventStoreError> {
        self.check()?;
        self.inner.load_snapshot(stream_id).await
    }
    async fn pending_publications(&self, limit: usize) -> Result<Vec<PendingPublication>, EventStoreError> {
        self.check()?;
        self.inner.pending_publications(limit).await
    }
    async fn mark_published(&self, event_id: Uuid, topic: &Topic) -> Result<(), EventStoreError> {
        self.check()?;
        self.inner.mark_published(event_id, topic).await
    }
    async fn prune(&self, horizon: DateTime<Utc>) -> Result<PruneReport, EventStoreError> {
        self.check()?;
        self.inner.prune(horizon).await
    }
    async fn claim_due_deadlines(&self, consumer: &str, now: DateTime<Utc>, lease: Duration, limit: usize) -> Result<Vec<ClaimedDeadline>, EventStoreError> {
        self.check()?;
        self.inner.claim_due_deadlines(consumer, now, lease, limit).await
    }
    async fn complete_deadline(&self, id: Uuid) -> Result<(), EventStoreError> {
        self.check()?;
        self.inner.complete_deadline(id).await
    }
    async fn deadlines(&self, consumer: &str, instance: Option<&str>, limit: usize) -> Result<Vec<StoredDeadline>, EventStoreError> {
        self.check()?;
        self.inner.deadlines(consumer, instance, limit).await
    }
}

async fn ready(addr: std::net::SocketAddr) -> (StatusCode, serde_json::Value) {
    let (status, headers, body) = get(addr, "/health/ready", &[]).await;
    assert_eq!(headers["content-type"], "application/json");
    (status, serde_json::from_str(&body).expect("JSON body"))
}

/// Polls `/health/ready` until `done` accepts it (at most [`PATIENCE`]).
async fn ready_until(addr: std::net::SocketAddr, what: &str, done: impl Fn(StatusCode, &serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = ready(addr).await;
        if done(status, &body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}; last answer {status}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn check<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    body["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_each_failing_check_and_its_reason() {
    let store = Arc::new(FlakyStore { inner: InMemoryEventStore::new(), down: AtomicBool::new(false) });
    let shared: Arc<dyn EventStore> = store.clone();
    let feeds =
        Feeds::start(shared.clone(), FeedConfig::default().with_poll(Duration::from_millis(5)).with_stall_after(Duration::from_millis(200))).await.unwrap();
    let bus_up = Arc::new(AtomicBool::new(true));
    let bus = bus_up.clone();
    let health = Health::new()
        .with_timeout(Duration::from_secs(1))
        .with_check("store", StoreReachable::new(shared))
        .with_check("feeds", feeds.stall_check())
        .with_check(
            "bus",
            check_fn(move || {
                let up = bus.load(Ordering::SeqCst);
                async move { if up { Ok(()) } else { Err("bus: no connection to nats://127.0.0.1:4222".to_owned()) } }
            }),
        );
    let prometheus = PrometheusBuilder::new().build_recorder().handle();
    let addr = serve(Router::new().route("/events", feeds.feed()).merge(operations_router(health, prometheus))).await;

    let (status, body) = ready(addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["failing"], serde_json::json!([]));
    assert_eq!(body["checks"].as_array().unwrap().len(), 3);

    // The database stops: the store check fails at once, the feed tail once its last read is older
    // than 200 ms; liveness is unaffected.
    store.down.store(true, Ordering::SeqCst);
    let body = ready_until(addr, "store and feeds fail", |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE && body["failing"] == serde_json::json!(["store", "feeds"])
    })
    .await;
    assert_eq!(body["status"], "not ready");
    let store_check = check(&body, "store");
    assert_eq!(store_check["ok"], false);
    let reason = store_check["reason"].as_str().unwrap();
    assert!(reason.contains("event store unavailable") && reason.contains("connection refused"), "{reason}");
    let feeds_reason = check(&body, "feeds")["reason"].as_str().unwrap().to_owned();
    assert!(feeds_reason.contains("has not read the store") && feeds_reason.contains("connection refused"), "{feeds_reason}");
    assert_eq!(check(&body, "bus")["ok"], true);
    assert!(check(&body, "bus").get("reason").is_none());
    let (status, _, live) = get(addr, "/health/live", &[]).await;
    assert_eq!((status, live.as_str()), (StatusCode::OK, "live"));

    bus_up.store(false, Ordering::SeqCst);
    let body = ready_until(addr, "the bus fails too", |_, body| body["failing"].as_array().unwrap().len() == 3).await;
    assert_eq!(check(&body, "bus")["reason"], "bus: no connection to nats://127.0.0.1:4222");

    // Back up: ready again, once the tail has read successfully.
    store.down.store(false, Ordering::SeqCst);
    bus_up.store(true, Ordering::SeqCst);
    ready_until(addr, "ready again", |status, _| status == StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answers_prometheus_text() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    // A recorder local to this test (the global one is exercised in tests/metrics.rs).
    metrics::with_local_recorder(&recorder, || metrics::counter!("test_requests_total").increment(3));
    let addr = serve(operations_router(Health::new(), prometheus)).await;
    let (status, headers, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    assert!(body.lines().any(|l| l == "test_requests_total 3"), "{body}");
    let (status, body) = ready(addr).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &serde_json::json!("ready")), "no check: ready");
}
