//! The metrics this crate records (through the `metrics` facade, so whatever recorder the
//! application installed receives them) and the Prometheus recorder behind `/metrics`.
//!
//! The recorder is process-global. [`install_prometheus`] installs a Prometheus one the first time
//! it is called and returns the same handle on every later call; when the application installed
//! its own Prometheus recorder, it passes that recorder's [`PrometheusHandle`] to
//! [`operations_router`](crate::operations_router) instead. Metrics recorded before a recorder is
//! installed are lost: install it first thing in `main`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

/// Gauge: SSE clients connected now (every feed of the process).
pub const SSE_CLIENTS_CONNECTED: &str = "sse_clients_connected";
/// Counter: events written to SSE clients (one per event per client).
pub const SSE_EVENTS_DELIVERED: &str = "sse_events_delivered_total";
/// Counter: `reset` events sent (a client fell behind its buffer, or the store failed during its
/// catch-up).
pub const SSE_RESETS: &str = "sse_resets_total";
/// Counter: failed reads of the store by the feed tail.
pub const SSE_TAIL_READ_ERRORS: &str = "sse_tail_read_errors_total";

/// The Prometheus recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another recorder is already the process's global recorder.
    #[error(
        "another metrics recorder is already installed: if it is a Prometheus recorder, pass its PrometheusHandle to operations_router instead of calling install_prometheus ({source})"
    )]
    OtherRecorderInstalled {
        /// The exporter's error.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
}

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs a Prometheus recorder as the process's global `metrics` recorder, once: later calls
/// return the handle of the first. Fails when another recorder was installed by someone else.
pub fn install_prometheus() -> Result<PrometheusHandle, MetricsError> {
    let mut installed = INSTALLED.lock();
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder().map_err(|source| MetricsError::OtherRecorderInstalled { source })?;
    describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Registers the descriptions (Prometheus `# HELP` lines) of this crate's metrics with the current
/// recorder. [`install_prometheus`] calls it; call it after installing a recorder of your own.
pub fn describe() {
    metrics::describe_gauge!(SSE_CLIENTS_CONNECTED, "SSE clients connected now");
    metrics::describe_counter!(SSE_EVENTS_DELIVERED, "Events written to SSE clients (one per event per client)");
    metrics::describe_counter!(SSE_RESETS, "Reset events sent to SSE clients that fell behind");
    metrics::describe_counter!(SSE_TAIL_READ_ERRORS, "Failed reads of the event store by the SSE feed tail");
}
