//! SSE feeds against real stores (in memory, SQLite in a temporary file), a real server on
//! 127.0.0.1:0 and a real HTTP client: filters, resume with `Last-Event-ID` while writers append,
//! reset of a lagging client, keep-alives, bad requests.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use composable_rust_core::{EventStore, GlobalPosition, RecordedEvent, TopicPattern};
use composable_rust_web::axum::Router;
use composable_rust_web::axum::http::StatusCode;
use composable_rust_web::{FeedConfig, Feeds};
use support::{Backend, SseClient, SseEvent, TestStore, all_events, append, event, eventually, get, serve};

async fn start(backend: &Backend, config: FeedConfig) -> (TestStore, Feeds, std::net::SocketAddr) {
    let store = backend.open().await;
    let feeds = Feeds::start(store.store.clone(), config.with_poll(Duration::from_millis(5))).await.expect("start feeds");
    let addr = serve(Router::new().route("/events", feeds.feed())).await;
    (store, feeds, addr)
}

/// The default topic, computed independently of the crate.
fn topic(e: &RecordedEvent) -> String {
    let stream = e.event.stream_id.as_ref().unwrap().as_str();
    let category = stream.split('-').next().unwrap();
    let name = e.event.event_type.rsplit_once(".v").map_or(e.event.event_type.as_str(), |(n, _)| n);
    format!("{category}.{name}")
}

async fn history_and_live(store: &dyn EventStore, round: &str) {
    for i in 0..4 {
        append(store, &format!("order-{i}"), vec![event("OrderPlaced.v1", format!("{round}{i}"), None), event("OrderConfirmed.v1", Bytes::new(), None)]).await;
        append(store, &format!("payment-{i}"), vec![event("PaymentCaptured.v2", Bytes::new(), None)]).await;
    }
    append(store, "inventory", vec![event("StockReserved.v1", Bytes::new(), None)]).await;
}

/// Reads until the client has every expected event, and checks it got exactly those, in order.
async fn expect_exactly(client: &mut SseClient, expected: &[RecordedEvent], what: &str) {
    assert!(!expected.is_empty(), "{what}: a test must expect something");
    let got = client.take(expected.len()).await;
    let got_positions: Vec<u64> = got.iter().map(SseEvent::position).collect();
    let want: Vec<u64> = expected.iter().map(|e| e.position.0).collect();
    assert_eq!(got_positions, want, "{what}");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g.event, e.event.event_type, "{what}");
        assert_eq!(g.json()["event_id"], e.event.event_id.to_string(), "{what}");
    }
}

type Wanted = Box<dyn Fn(&RecordedEvent) -> bool>;

async fn filtered_feeds_get_exactly_the_matching_events(backend: Backend) {
    let (store, feeds, addr) = start(&backend, FeedConfig::default()).await;
    let store = store.store.clone();
    history_and_live(&*store, "h").await;
    let head = store.head().await.unwrap();
    // Feeds started before the history: wait for the tail to pass it, so "live only" is defined.
    eventually("the tail read the history", || feeds.position() >= head).await;

    let filters: [(&str, Wanted); 6] = [
        ("/events?after=0", Box::new(|_| true)),
        ("/events?topic=order.%3E&after=0", Box::new(|e| TopicPattern::new("order.>").unwrap().matches(&topic(e)))),
        ("/events?topic=*.OrderPlaced&after=0", Box::new(|e| topic(e).ends_with(".OrderPlaced"))),
        ("/events?stream=order-2&after=0", Box::new(|e| e.event.stream_id.as_ref().unwrap().as_str() == "order-2")),
        ("/events?stream=inventory&topic=inventory.StockReserved&after=0", Box::new(|e| e.event.stream_id.as_ref().unwrap().as_str() == "inventory")),
        ("/events?topic=payment.PaymentCaptured", Box::new(move |e| e.position > head && e.event.event_type == "PaymentCaptured.v2")),
    ];
    let mut clients = Vec::new();
    for (path, _) in &filters {
        let mut client = SseClient::open(addr, path, &[]).await;
        client.preamble().await;
        clients.push(client);
    }
    assert_eq!(clients[0].last_event_id, "0", "a resuming client's preamble carries its resume position");
    assert_eq!(clients[5].last_event_id, head.0.to_string(), "a live client's preamble carries where it starts");
    assert_eq!(clients[0].retry, Some(1000));
    assert_eq!(feeds.clients(), filters.len());

    // Live events, while the clients are connected.
    history_and_live(&*store, "l").await;
    let stored = all_events(&*store).await;
    assert_eq!(stored.len(), 2 * 13);
    for ((path, wanted), client) in filters.iter().zip(&mut clients) {
        let expected: Vec<RecordedEvent> = stored.iter().filter(|e| wanted(e)).cloned().collect();
        expect_exactly(client, &expected, path).await;
    }

    // The data of one event, field by field.
    let mut client = SseClient::open(addr, "/events?after=0", &[]).await;
    let first = client.next().await.unwrap();
    let e = &stored[0];
    let data = first.json();
    assert_eq!(first.id, e.position.0.to_string());
    assert_eq!(data["position"], e.position.0);
    assert_eq!(data["event_type"], "OrderPlaced.v1");
    assert_eq!(data["topic"], "order.OrderPlaced");
    assert_eq!(data["stream_id"], "order-0");
    assert_eq!(data["version"], 1);
    assert_eq!(data["correlation_id"], "corr-1");
    assert_eq!(data["payload"], "aDA=", "base64 of the payload `h0`");
    let timestamp: chrono::DateTime<chrono::Utc> = data["timestamp"].as_str().unwrap().parse().unwrap();
    assert_eq!(timestamp.timestamp_micros(), e.event.metadata.timestamp.timestamp_micros());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_feeds_in_memory() {
    filtered_feeds_get_exactly_the_matching_events(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_feeds_on_sqlite() {
    filtered_feeds_get_exactly_the_matching_events(Backend::Sqlite).await;
}

/// Two writers append while a client disconnects every few events and resumes with the last id it
/// got (header, or `after` once): every event arrives exactly once, in order.
async fn resume_after_disconnects_loses_and_repeats_nothing(backend: Backend) {
    const PER_WRITER: usize = 150;
    let (store, _feeds, addr) = start(&backend, FeedConfig::default()).await;
    let store = store.store.clone();
    let writers: Vec<_> = ["order", "payment"]
        .into_iter()
        .map(|category| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    append(&*store, &format!("{category}-{}", i % 5), vec![event("Happened.v1", format!("{category}{i}"), None)]).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    let mut received: Vec<SseEvent> = Vec::new();
    let mut connections = 0;
    let mut resumed_during_writes = 0;
    while received.len() < 2 * PER_WRITER {
        let path_and_headers: (String, Vec<(&str, String)>) = match (connections, received.last()) {
            (3, Some(last)) => (format!("/events?after={}", last.id), vec![]),
            (1.., Some(last)) => ("/events?after=0".to_owned(), vec![("last-event-id", last.id.clone())]),
            _ => ("/events?after=0".to_owned(), vec![]),
        };
        let headers: Vec<(&str, &str)> = path_and_headers.1.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut client = SseClient::open(addr, &path_and_headers.0, &headers).await;
        connections += 1;
        if writers.iter().any(|w| !w.is_finished()) {
            resumed_during_writes += 1;
        }
        let take = (17 + connections * 7).min(2 * PER_WRITER - received.len());
        received.extend(client.take(take).await);
        // Dropping the client closes the connection mid-stream.
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(connections >= 6 && resumed_during_writes >= 3, "{connections} connections, {resumed_during_writes} while writing");
    let positions: Vec<u64> = received.iter().map(SseEvent::position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate: {positions:?}");
    let stored = all_events(&*store).await;
    assert_eq!(positions, stored.iter().map(|e| e.position.0).collect::<Vec<_>>(), "every stored event, once");
    let ids: HashSet<String> = received.iter().map(|e| e.json()["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, stored.iter().map(|e| e.event.event_id.to_string()).collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_in_memory() {
    resume_after_disconnects_loses_and_repeats_nothing(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_sqlite() {
    resume_after_disconnects_loses_and_repeats_nothing(Backend::Sqlite).await;
}

/// A client that stops reading falls behind the broadcast buffer (2 batches of 8 events): it gets a
/// `reset` carrying the last position it received, its stream ends, and it resumes from there.
async fn a_lagging_client_is_reset_and_resumes_without_loss(backend: Backend) {
    const EVENTS: usize = 2400;
    const PER_APPEND: usize = 12;
    let config = FeedConfig::default().with_tail_batch(8).with_buffer(2).with_keep_alive(Duration::from_secs(600));
    let (store, feeds, addr) = start(&backend, config).await;
    let store = store.store.clone();
    let payload = Bytes::from(vec![7u8; 8 * 1024]);

    let mut client = SseClient::open_with(addr, "/events", &[], Some(4096)).await;
    client.preamble().await;
    append(&*store, "order-0", vec![event("Happened.v1", payload.clone(), None)]).await;
    let first = client.next().await.unwrap();
    assert_eq!(first.position(), 1);

    // The client stops reading: about 26 MB of frames fill the socket buffers and hyper's, and
    // the broadcast moves past what the client's stream has taken.
    for i in 0..=(EVENTS - 1) / PER_APPEND {
        let n = PER_APPEND.min(EVENTS - 1 - i * PER_APPEND);
        if n == 0 {
            break;
        }
        append(&*store, &format!("order-{}", i % 7), (0..n).map(|_| event("Happened.v1", payload.clone(), None)).collect()).await;
    }
    let head = store.head().await.unwrap();
    assert_eq!(head, GlobalPosition(EVENTS as u64));
    eventually("the tail read every event", || feeds.position() == head).await;

    // Reading again: a contiguous prefix, then the reset, then the end of the stream.
    let mut got = vec![first];
    let reset = loop {
        let e = client.next().await.expect("a reset before the end of the stream");
        if e.event == "reset" {
            break e;
        }
        got.push(e);
    };
    assert!(client.next().await.is_none(), "the stream ends after a reset");
    let positions: Vec<u64> = got.iter().map(SseEvent::position).collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>(), "no gap before the reset");
    assert!(positions.len() < EVENTS, "the client fell behind");
    assert_eq!(reset.position(), positions.len() as u64, "the reset's id is the last position received");
    let data = reset.json();
    assert_eq!(data["reason"], "lagged");
    assert_eq!(data["resume_after"], positions.len());
    assert_eq!(client.last_event_id, reset.id, "an EventSource would reconnect with the reset's id");

    // Resuming with that id: the rest, exactly once.
    let mut again = SseClient::open(addr, "/events", &[("last-event-id", &reset.id)]).await;
    let remaining = again.take(EVENTS - positions.len()).await;
    let everything: Vec<u64> = positions.into_iter().chain(remaining.iter().map(SseEvent::position)).collect();
    assert_eq!(everything, (1..=EVENTS as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_client_in_memory() {
    a_lagging_client_is_reset_and_resumes_without_loss(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_client_on_sqlite() {
    a_lagging_client_is_reset_and_resumes_without_loss(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_comments_flow_while_nothing_happens() {
    let (_store, _feeds, addr) = start(&Backend::Memory, FeedConfig::default().with_keep_alive(Duration::from_millis(20))).await;
    let mut client = SseClient::open(addr, "/events", &[]).await;
    client.preamble().await;
    client.wait_for_comments(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let (_store, _feeds, addr) = start(&Backend::Memory, FeedConfig::default()).await;
    let (status, _, body) = get(addr, "/events?topic=order.%3E.x", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let reason = TopicPattern::new("order.>.x").unwrap_err().to_string();
    assert!(body.contains(&reason), "{body}");
    let (status, _, body) = get(addr, "/events?topic=order%20x", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid character"), "{body}");
    let (status, _, body) = get(addr, "/events", &[("last-event-id", "yesterday")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("\"yesterday\""), "{body}");
}

/// Connected clients are counted, and a disconnect is noticed (here through a failed keep-alive
/// write at the latest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_counted_while_connected() {
    let (store, feeds, addr) = start(&Backend::Memory, FeedConfig::default().with_keep_alive(Duration::from_millis(20))).await;
    let mut a = SseClient::open(addr, "/events", &[]).await;
    let mut b = SseClient::open(addr, "/events", &[]).await;
    a.preamble().await;
    b.preamble().await;
    assert_eq!(feeds.clients(), 2);
    drop(a);
    eventually("the server noticed the disconnect", || feeds.clients() == 1).await;
    append(&*store.store, "order-1", vec![event("Happened.v1", Bytes::new(), None)]).await;
    assert_eq!(b.next().await.unwrap().position(), 1);
}

/// `Feeds::close` ends every open stream, so a graceful shutdown completes; later requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_streams_for_a_graceful_shutdown() {
    let store = Backend::Memory.open().await;
    let feeds = Feeds::start(store.store.clone(), FeedConfig::default().with_poll(Duration::from_millis(5))).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().route("/events", feeds.feed());
    let server = tokio::spawn(async move {
        composable_rust_web::axum::serve(composable_rust_web::SseListener::new(listener), app).with_graceful_shutdown(async move { drop(stopped.await) }).await
    });
    append(&*store.store, "order-1", vec![event("Happened.v1", Bytes::new(), None)]).await;
    eventually("the tail read the event", || feeds.position() == GlobalPosition(1)).await;
    let mut live = SseClient::open(addr, "/events", &[]).await;
    let mut resuming = SseClient::open(addr, "/events?after=0", &[]).await;
    live.preamble().await;
    assert_eq!(resuming.next().await.unwrap().position(), 1);

    stop.send(()).unwrap();
    feeds.close();
    assert!(live.next().await.is_none(), "the stream ends");
    assert!(resuming.next().await.is_none(), "the stream ends");
    tokio::time::timeout(support::PATIENCE, server).await.expect("the graceful shutdown completes").unwrap().unwrap();
    assert!(feeds.is_closed());
    let response = feeds.respond(composable_rust_web::FeedRequest::default());
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
