//! # composable-rust-web
//!
//! The axum (0.8) pieces a composable-rust service needs to show a live page and to be watched:
//!
//! - [`Feeds`]: server-sent-event feeds of the event store, filtered by topic pattern
//!   (`?topic=order.>`) and stream (`?stream=order-42`), resumable with `Last-Event-ID` (no gap, no
//!   duplicate at the switch to live), with keep-alive comments and an explicit `reset` event for a
//!   client that falls behind. One task per process reads the store; clients share its batches,
//!   each event encoded once ([`feed`], [`tail`], [`frame`], [`topic_of`]);
//! - session-scoped feeds ([`Feeds::session_feed`]): only the events of the caller's session, the
//!   session given by an [`Authenticate`] hook, e.g. the signed [`SessionTokens`] ([`session`]);
//! - operations endpoints ([`operations_router`]): `/health/live`, `/health/ready` (named
//!   [`ReadinessCheck`]s: the store, the bus, the feed tail, projections) and `/metrics` in
//!   Prometheus text ([`install_prometheus`]; this crate records the gauge
//!   `sse_clients_connected` and the counters of [`metrics`]);
//! - [`SseListener`]: the listener to serve feeds with (`TCP_NODELAY`, optionally a bounded send
//!   buffer; see [`listener`]).
//!
//! An application builds one `Router` from these and serves it:
//!
//! ```no_run
//! # async fn run(store: std::sync::Arc<dyn composable_rust_core::EventStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use composable_rust_web::{FeedConfig, Feeds, Health, SessionTokens, StoreReachable, install_prometheus, operations_router, SseListener};
//!
//! let prometheus = install_prometheus()?;
//! let feeds = Feeds::start(store.clone(), FeedConfig::default()).await?;
//! let health = Health::new().with_check("store", StoreReachable::new(store)).with_check("feeds", feeds.stall_check());
//! let tokens = SessionTokens::new(std::env::var("SESSION_SECRET")?)?;
//! let app = axum::Router::new()
//!     .route("/events", feeds.feed())
//!     .route("/sessions/{session}/events", feeds.session_feed(tokens))
//!     .merge(operations_router(health, prometheus));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(SseListener::new(listener), app).await?;
//! # Ok(()) }
//! ```
//!
//! The guarantees, the wire format and a complete example are in `docs/web.md`.

pub mod feed;
pub mod frame;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod operations;
pub mod session;
pub mod tail;
pub mod topic_of;

pub use feed::{FeedConfig, FeedFilter, FeedRequest, FeedRequestError, Feeds, LAST_EVENT_ID, RESET_EVENT};
pub use frame::PayloadDecoder;
pub use health::{CheckReport, Health, Readiness, ReadinessCheck, StoreReachable, check_fn};
pub use listener::SseListener;
pub use metrics::{MetricsError, install_prometheus};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use operations::operations_router;
pub use session::{AuthError, Authenticate, SESSION_HEADER, SecretTooShort, SessionId, SessionTokens};
pub use tail::TailStatus;
pub use topic_of::{TopicOf, default_topic};

/// The axum this crate is built on, so that applications use the same version.
pub use axum;

/// The web guide's examples, compiled and run as doc tests.
#[doc = include_str!("../../docs/web.md")]
#[cfg(doctest)]
pub struct WebGuideDoctests;
