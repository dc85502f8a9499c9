//! The operations router: `/health/live`, `/health/ready` and `/metrics`.

use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::health::Health;

/// Prometheus's text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A router with the operations endpoints, to merge into (or nest beside) the application's:
///
/// - `GET /health/live`: 200 `live` while the process serves requests;
/// - `GET /health/ready`: 200 when every check of `health` passes, else 503; the JSON body
///   ([`Readiness`](crate::Readiness)) names each check, the failing ones with their reason;
/// - `GET /metrics`: what `prometheus` holds, in Prometheus text format (get the handle from
///   [`install_prometheus`](crate::install_prometheus), or from the recorder the application
///   installed itself).
pub fn operations_router<S>(health: Health, prometheus: PrometheusHandle) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/health/live", get(|| async { "live" }))
        .route(
            "/health/ready",
            get(move || {
                let health = health.clone();
                async move {
                    let readiness = health.readiness().await;
                    let status = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, Json(readiness)).into_response()
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let prometheus = prometheus.clone();
                async move { metrics_response(&prometheus) }
            }),
        )
}

fn metrics_response(prometheus: &PrometheusHandle) -> Response {
    // Without the exporter's own HTTP listener nothing else drains histograms: do it per scrape.
    prometheus.run_upkeep();
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], prometheus.render()).into_response()
}
