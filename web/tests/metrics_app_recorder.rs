//! An application that installed its own Prometheus recorder: `install_prometheus` refuses (with
//! what to do instead) and `/metrics` serves the application's handle, this crate's metrics in it.

mod support;

use std::time::Duration;

use composable_rust_web::axum::Router;
use composable_rust_web::{FeedConfig, Feeds, Health, MetricsError, install_prometheus, operations_router};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{Backend, SseClient, get, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_recorder_is_used() {
    let app_handle = PrometheusBuilder::new().install_recorder().expect("the application installs its recorder");
    metrics::counter!("app_orders_total").increment(7);
    let err = install_prometheus().expect_err("another recorder is installed");
    assert!(matches!(err, MetricsError::OtherRecorderInstalled { .. }));
    assert!(err.to_string().contains("pass its PrometheusHandle to operations_router"), "{err}");
    composable_rust_web::metrics::describe();

    let store = Backend::Memory.open().await;
    let feeds = Feeds::start(store.store.clone(), FeedConfig::default().with_poll(Duration::from_millis(5))).await.unwrap();
    let addr = serve(Router::new().route("/events", feeds.feed()).merge(operations_router(Health::new(), app_handle))).await;
    let mut client = SseClient::open(addr, "/events", &[]).await;
    client.preamble().await;
    let (_, _, text) = get(addr, "/metrics", &[]).await;
    assert!(text.lines().any(|l| l == "app_orders_total 7"), "{text}");
    assert!(text.lines().any(|l| l == "sse_clients_connected 1"), "{text}");
    assert!(text.contains("# HELP sse_clients_connected SSE clients connected now"), "{text}");
}
