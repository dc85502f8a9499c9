//! `--serve ADDR`: the live dashboard. One axum server on `ADDR` with
//!
//! - `/`: a page (HTML and `EventSource`, no build step) with live counters (`placed`, `confirmed`,
//!   `cancelled`, `in-flight`), the recent order events and a per-order drill-down;
//! - `/events`: the store's SSE feed (`?topic=PATTERN`, `&stream=ID`, `&after=POSITION`, resumable
//!   with `Last-Event-ID`), from `composable_rust::web`;
//! - `/health/live`, `/health/ready` (the store reachable, the feed not stalled) and `/metrics`
//!   (Prometheus text of everything the runtime and the feeds record).
//!
//! It serves while the run goes on and after it, until the process decides to stop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use composable_rust::web::axum::Router;
use composable_rust::web::axum::response::Html;
use composable_rust::web::axum::routing::get;
use composable_rust::web::{FeedConfig, Feeds, Health, PayloadDecoder, PrometheusHandle, SseListener, StoreReachable, install_prometheus, operations_router};
use composable_rust::{DomainEvent, EventStore, GlobalPosition, SerializedEvent};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::AppError;
use crate::domain::inventory::InventoryEvent;
use crate::domain::order::OrderEvent;
use crate::domain::payment::PaymentEvent;

/// The page, with `__RUN_START__` standing for the position the run started after.
const PAGE: &str = include_str!("dashboard.html");

/// A running dashboard server.
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    feeds: Feeds,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Dashboard {
    /// Installs the Prometheus recorder (first thing, so that nothing recorded is lost), binds
    /// `addr` and serves. `run_start` is the store's head before the run: the page counts the
    /// orders after it.
    pub async fn start(addr: &str, store: Arc<dyn EventStore>, run_start: GlobalPosition) -> Result<Self, AppError> {
        let prometheus = recorder()?;
        let listener = TcpListener::bind(addr).await.map_err(|e| AppError::Setup(format!("--serve {addr}: cannot listen: {e}")))?;
        let addr = listener.local_addr().map_err(|e| AppError::Setup(format!("--serve: {e}")))?;
        // The feed starts at the run's start, so that a page opened late still gets every event
        // of the run from the tail's buffer or the store.
        let config = FeedConfig::default().with_start_after(run_start).with_stall_after(Duration::from_secs(5)).with_payload(PayloadDecoder::new(domain_json));
        let feeds = Feeds::start(Arc::clone(&store), config).await.map_err(|e| AppError::Store(format!("the dashboard's feed cannot start: {e}")))?;
        let health = Health::new().with_timeout(Duration::from_secs(2)).with_check("store", StoreReachable::new(store)).with_check("feed", feeds.stall_check());
        let page = PAGE.replace("__RUN_START__", &run_start.0.to_string());
        let app = Router::new()
            .route("/", get(move || std::future::ready(Html(page.clone()))))
            .route("/events", feeds.feed())
            .merge(operations_router(health, prometheus));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = composable_rust::web::axum::serve(SseListener::new(listener), app).with_graceful_shutdown(async move { drop(stopped.await) }).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the dashboard server failed");
            }
        });
        Ok(Self { addr, feeds, stop: Some(stop), task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The feeds it serves (wake them after an append to cut latency).
    pub fn feeds(&self) -> &Feeds {
        &self.feeds
    }

    /// Ends the open SSE streams, stops accepting, lets open responses end, and waits (at most
    /// 2 s).
    pub async fn shutdown(mut self) {
        self.feeds.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// The payload of an order, inventory or payment event as JSON (the page shows it in the
/// drill-down); anything else (saga steps) is left out.
fn domain_json(event: &SerializedEvent) -> Option<serde_json::Value> {
    fn json<E: DomainEvent>(event: &SerializedEvent) -> Option<serde_json::Value> {
        E::from_serialized(event).ok().and_then(|e| serde_json::to_value(e).ok())
    }
    let category = event.stream_id.as_ref().and_then(|s| s.as_str().split_once('-')).map(|(c, _)| c);
    match category? {
        "order" => json::<OrderEvent>(event),
        "inventory" => json::<InventoryEvent>(event),
        "payment" => json::<PaymentEvent>(event),
        _ => None,
    }
}

fn recorder() -> Result<PrometheusHandle, AppError> {
    install_prometheus().map_err(|e| AppError::Setup(format!("--serve: {e}")))
}
