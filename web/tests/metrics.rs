//! `/metrics` with the recorder `install_prometheus` installs (this process's global recorder):
//! the SSE gauge follows connects and disconnects, the delivered counter counts every event sent
//! to every client, the reset counter counts resets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use composable_rust_web::axum::Router;
use composable_rust_web::{FeedConfig, Feeds, Health, install_prometheus, operations_router};
use support::{Backend, SseClient, append, event, eventually, get, serve};

/// The value of the sample `name` (no labels) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_metrics_follow_the_clients() {
    let prometheus = install_prometheus().expect("first install");
    assert!(install_prometheus().is_ok(), "installing again returns the same recorder's handle");
    let store = Backend::Memory.open().await;
    let config = FeedConfig::default().with_poll(Duration::from_millis(5)).with_keep_alive(Duration::from_millis(20)).with_tail_batch(1).with_buffer(1);
    let feeds = Feeds::start(store.store.clone(), config).await.unwrap();
    let app = Router::new().route("/events", feeds.feed()).merge(operations_router(Health::new(), prometheus));
    let addr = serve(app).await;
    let scrape = || async move {
        let (status, _, body) = get(addr, "/metrics", &[]).await;
        assert!(status.is_success());
        body
    };

    let mut a = SseClient::open(addr, "/events", &[]).await;
    let mut b = SseClient::open_with(addr, "/events", &[], Some(4096)).await;
    a.preamble().await;
    b.preamble().await;
    let text = scrape().await;
    assert_eq!(sample(&text, "sse_clients_connected"), Some(2.0), "{text}");
    assert!(text.contains("# TYPE sse_clients_connected gauge"), "{text}");

    for i in 0..5 {
        append(&*store.store, "order-1", vec![event("Happened.v1", format!("{i}"), None)]).await;
    }
    a.take(5).await;
    b.take(5).await;
    let text = scrape().await;
    assert_eq!(sample(&text, "sse_events_delivered_total"), Some(10.0), "{text}");
    assert_eq!(sample(&text, "sse_resets_total"), None, "no reset yet: {text}");

    drop(a);
    eventually("the disconnect is noticed", || feeds.clients() == 1).await;
    assert_eq!(sample(&scrape().await, "sse_clients_connected"), Some(1.0));

    // B stops reading while about 20 MB go by (a buffer of one 1-event batch): it is reset.
    let payload = Bytes::from(vec![1u8; 8 * 1024]);
    for _ in 0..2000 {
        append(&*store.store, "order-2", vec![event("Happened.v1", payload.clone(), None)]).await;
    }
    let head = store.store.head().await.unwrap();
    eventually("the tail read everything", || feeds.position() == head).await;
    let reset = loop {
        let e = b.next().await.expect("a reset");
        if e.event == "reset" {
            break e;
        }
    };
    assert!(reset.position() < head.0);
    let text = scrape().await;
    assert_eq!(sample(&text, "sse_resets_total"), Some(1.0), "{text}");
    assert!(b.next().await.is_none());
    eventually("the reset client is gone", || feeds.clients() == 0).await;
    assert_eq!(sample(&scrape().await, "sse_clients_connected"), Some(0.0));
}
