//! Readiness: named checks (store reachable, bus reachable, feeds and projections not stalled), run
//! concurrently, each within a timeout, by `/health/ready`.
//!
//! A check is anything that implements [`ReadinessCheck`]; [`StoreReachable`] asks the store for
//! its head, [`Feeds::stall_check`](crate::Feeds::stall_check) reports the feed tail, and
//! [`check_fn`] turns an async closure into a check (the event bus has no ping: register one that
//! fits it, such as a round trip through a test topic or the client's connection state).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use composable_rust_core::EventStore;
use parking_lot::RwLock;
use serde::Serialize;

/// One readiness check: `Ok` when ready, else why not (the reason is shown in the 503's body).
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Runs the check.
    async fn check(&self) -> Result<(), String>;
}

/// Ready when the store answers [`EventStore::head`].
pub struct StoreReachable {
    store: Arc<dyn EventStore>,
}

impl StoreReachable {
    /// A check of `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl ReadinessCheck for StoreReachable {
    async fn check(&self) -> Result<(), String> {
        self.store.head().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

struct FnCheck<F>(F);

#[async_trait]
impl<F, Fut> ReadinessCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

/// A check from an async closure: `check_fn(move || { let bus = bus.clone(); async move { ... } })`.
pub fn check_fn<F, Fut>(f: F) -> impl ReadinessCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    FnCheck(f)
}

/// The outcome of one check, as `/health/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// Every check's outcome; the body of `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `"ready"` or `"not ready"`.
    pub status: &'static str,
    /// The names of the failing checks.
    pub failing: Vec<String>,
    /// Every check, in registration order.
    pub checks: Vec<CheckReport>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.failing.is_empty()
    }
}

type NamedCheck = (String, Arc<dyn ReadinessCheck>);

/// The registry of readiness checks. Cheap to clone (clones share the registry, so a check
/// registered later, e.g. by a projection started after the router was built, counts at once).
#[derive(Clone)]
pub struct Health {
    checks: Arc<RwLock<Vec<NamedCheck>>>,
    timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.checks.read().iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("Health").field("checks", &names).field("timeout", &self.timeout).finish()
    }
}

impl Health {
    /// No checks (always ready); each check gets 2 s.
    pub fn new() -> Self {
        Self { checks: Arc::new(RwLock::new(Vec::new())), timeout: Duration::from_secs(2) }
    }

    /// How long a check may take before it counts as failed (default 2 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a check (builder form of [`Health::register`]).
    #[must_use]
    pub fn with_check(self, name: impl Into<String>, check: impl ReadinessCheck) -> Self {
        self.register(name, check);
        self
    }

    /// Adds a check, replacing one of the same name.
    pub fn register(&self, name: impl Into<String>, check: impl ReadinessCheck) {
        let name = name.into();
        let mut checks = self.checks.write();
        let check: Arc<dyn ReadinessCheck> = Arc::new(check);
        match checks.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = check,
            None => checks.push((name, check)),
        }
    }

    /// Removes the check `name` (e.g. a projection that was stopped on purpose).
    pub fn unregister(&self, name: &str) {
        self.checks.write().retain(|(n, _)| n != name);
    }

    /// Runs every check concurrently, each within the timeout.
    pub async fn readiness(&self) -> Readiness {
        let checks: Vec<NamedCheck> = self.checks.read().clone();
        let timeout = self.timeout;
        let reports = futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(timeout, check.check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            };
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            CheckReport { name, ok: outcome.is_ok(), reason: outcome.err(), duration_ms }
        }))
        .await;
        let failing: Vec<String> = reports.iter().filter(|r| !r.ok).map(|r| r.name.clone()).collect();
        if !failing.is_empty() {
            tracing::warn!(failing = ?failing, "not ready");
        }
        Readiness { status: if failing.is_empty() { "ready" } else { "not ready" }, failing, checks: reports }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_and_slow_checks_make_it_not_ready() {
        let health = Health::new().with_timeout(Duration::from_millis(50)).with_check("ok", check_fn(|| async { Ok(()) }));
        assert!(health.readiness().await.is_ready());
        health.register("bus", check_fn(|| async { Err("bus: connection refused".to_owned()) }));
        health.register(
            "slow",
            check_fn(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }),
        );
        let r = health.readiness().await;
        assert_eq!(r.status, "not ready");
        assert_eq!(r.failing, ["bus", "slow"]);
        assert_eq!(r.checks[1].reason.as_deref(), Some("bus: connection refused"));
        assert_eq!(r.checks[2].reason.as_deref(), Some("no answer within 50 ms"));
        health.unregister("slow");
        health.register("bus", check_fn(|| async { Ok(()) }));
        assert!(health.readiness().await.is_ready());
    }
}
