//! Session feeds over a real server: the session comes only from the verified token; a client
//! without one, with a forged or expired one, or naming another session is refused, and a
//! session's feed never carries another session's events.

mod support;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use composable_rust_core::EventStore;
use composable_rust_web::axum::Router;
use composable_rust_web::axum::http::StatusCode;
use composable_rust_web::{FeedConfig, Feeds, SessionId, SessionTokens};
use support::{Backend, SseClient, SseEvent, all_events, append, event, get, serve};

const SECRET: &[u8] = b"test secret of at least 32 bytes, honestly";

struct Setup {
    store: support::TestStore,
    addr: std::net::SocketAddr,
    tokens: SessionTokens,
    alice: String,
    bob: String,
}

async fn setup() -> Setup {
    let store = Backend::Memory.open().await;
    let feeds = Feeds::start(store.store.clone(), FeedConfig::default().with_poll(Duration::from_millis(5))).await.unwrap();
    let tokens = SessionTokens::new(SECRET).unwrap();
    let app = Router::new()
        .route("/events", feeds.feed())
        .route("/session/events", feeds.session_feed(tokens.clone()))
        .route("/sessions/{session}/events", feeds.session_feed(tokens.clone()));
    let addr = serve(app).await;
    let alice = tokens.issue(&SessionId::new("alice").unwrap(), Some(Duration::from_secs(3600)));
    let bob = tokens.issue(&SessionId::new("bob").unwrap(), None);
    Setup { store, addr, tokens, alice, bob }
}

async fn appends(store: &dyn EventStore, round: &str) {
    for i in 0..3 {
        append(store, "cart-a", vec![event("ItemAdded.v1", format!("alice {round}{i}"), Some("alice"))]).await;
        append(store, "cart-b", vec![event("ItemAdded.v1", format!("bob {round}{i}"), Some("bob"))]).await;
        append(store, "order-1", vec![event("OrderPlaced.v1", format!("public {round}{i}"), None)]).await;
        // Alice's session acting on Bob's stream: still Alice's event, never Bob's.
        append(store, "cart-b", vec![event("ItemViewed.v1", format!("alice on b {round}{i}"), Some("alice"))]).await;
    }
}

fn session_of(store_events: &[composable_rust_core::RecordedEvent], session: Option<&str>) -> Vec<u64> {
    store_events
        .iter()
        .filter(|e| e.event.metadata.headers.get(composable_rust_web::SESSION_HEADER).map(String::as_str) == session)
        .map(|e| e.position.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_before_any_event() {
    let s = setup().await;
    let addr = s.addr;

    let (status, headers, body) = get(addr, "/session/events", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(body.contains("no session token"), "{body}");

    // Alice's signature on Bob's session id.
    let (alice_body, alice_sig) = s.alice.rsplit_once('.').unwrap();
    let (bob_body, _) = s.bob.rsplit_once('.').unwrap();
    let forged = format!("{bob_body}.{alice_sig}");
    let (status, _, body) = get(addr, "/session/events", &[("authorization", &format!("Bearer {forged}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("signature does not verify"), "{body}");
    // A token made up from scratch for "bob", signed with a guessed secret.
    let guessed = SessionTokens::new(b"a guessed secret of 32 bytes!!!!").unwrap().issue(&SessionId::new("bob").unwrap(), None);
    let (status, _, _) = get(addr, &format!("/session/events?token={guessed}"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Garbage, and a valid body with the signature cut off.
    for token in ["nonsense", alice_body] {
        let (status, _, _) = get(addr, "/session/events", &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
    }
    // Expired.
    let expired = s.tokens.issue_until(&SessionId::new("alice").unwrap(), Some(SystemTime::now() - Duration::from_secs(5)));
    let (status, _, body) = get(addr, "/session/events", &[("cookie", &format!("cr_session={expired}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("expired"), "{body}");

    // Alice's valid token on Bob's URL, by every way of sending it.
    for headers in [vec![("authorization", format!("Bearer {}", s.alice))], vec![("cookie", format!("cr_session={}", s.alice))]] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = get(addr, "/sessions/bob/events", &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, _, _) = get(addr, &format!("/sessions/bob/events?token={}", s.alice), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A session id is not a credential: naming "alice" in the URL without her token gets nothing.
    let (status, _, _) = get(addr, "/sessions/alice/events", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(addr, "/sessions/alice/events", &[("authorization", &format!("Bearer {}", s.bob))]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_feed_holds_only_that_sessions_events() {
    let s = setup().await;
    let store = s.store.store.clone();
    appends(&*store, "h").await;

    let bearer = format!("Bearer {}", s.alice);
    let mut alice = SseClient::open(s.addr, "/sessions/alice/events?after=0", &[("authorization", &bearer)]).await;
    let mut alice_plain = SseClient::open(s.addr, &format!("/session/events?after=0&token={}", s.alice), &[]).await;
    let mut bob = SseClient::open(s.addr, "/session/events?after=0", &[("cookie", &format!("theme=x; cr_session={}", s.bob))]).await;
    let mut public = SseClient::open(s.addr, "/events?after=0", &[]).await;
    // Alice filtering on Bob's stream sees only her own events in it.
    let mut alice_on_b = SseClient::open(s.addr, "/session/events?after=0&stream=cart-b", &[("authorization", &bearer)]).await;
    for c in [&mut alice, &mut alice_plain, &mut bob, &mut public, &mut alice_on_b] {
        c.preamble().await;
    }
    appends(&*store, "l").await;
    let stored = all_events(&*store).await;

    let positions = |events: Vec<SseEvent>| events.iter().map(SseEvent::position).collect::<Vec<_>>();
    let alice_expected = session_of(&stored, Some("alice"));
    let bob_expected = session_of(&stored, Some("bob"));
    let public_expected = session_of(&stored, None);
    assert_eq!((alice_expected.len(), bob_expected.len(), public_expected.len()), (12, 6, 6));
    assert_eq!(positions(alice.take(alice_expected.len()).await), alice_expected);
    assert_eq!(positions(alice_plain.take(alice_expected.len()).await), alice_expected);
    assert_eq!(positions(bob.take(bob_expected.len()).await), bob_expected);
    assert_eq!(positions(public.take(public_expected.len()).await), public_expected, "a public feed shows no session's events");
    let alice_on_b_expected: Vec<u64> = stored.iter().filter(|e| e.event.event_type == "ItemViewed.v1").map(|e| e.position.0).collect();
    assert_eq!(positions(alice_on_b.take(alice_on_b_expected.len()).await), alice_on_b_expected);

    // And nothing else after: one last event per audience, each feed's next event is its own.
    append(&*store, "cart-b", vec![event("Last.v1", Bytes::from_static(b"bob"), Some("bob"))]).await;
    append(&*store, "cart-a", vec![event("Last.v1", Bytes::from_static(b"alice"), Some("alice"))]).await;
    append(&*store, "order-1", vec![event("Last.v1", Bytes::from_static(b"public"), None)]).await;
    let last = |e: SseEvent| (e.event.clone(), e.json()["stream_id"].as_str().unwrap().to_owned());
    assert_eq!(last(alice.next().await.unwrap()), ("Last.v1".to_owned(), "cart-a".to_owned()));
    assert_eq!(last(bob.next().await.unwrap()), ("Last.v1".to_owned(), "cart-b".to_owned()));
    assert_eq!(last(public.next().await.unwrap()), ("Last.v1".to_owned(), "order-1".to_owned()));
}
