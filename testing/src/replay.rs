//! Shared pieces of the replay benchmarks (`cargo bench -p composable-rust-sqlite --bench replay`,
//! `-p composable-rust-postgres --bench replay`): seeding a log, a no-op projection, timing its
//! catch-up, and the side-by-side report against the raw `SELECT` each backend measures itself.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use composable_rust_core::{AppendRequest, EventFilter, EventStore, ExpectedVersion, ReadModelStore, RecordedEvent, SerializedEvent, StreamId};
use composable_rust_runtime::{Projection, ProjectionError, ProjectionRunner, View};

/// A projection that applies nothing: what replay costs by itself.
pub struct NoopProjection;

#[async_trait]
impl Projection for NoopProjection {
    const NAME: &'static str = "bench-noop";

    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    async fn apply(&self, _: &RecordedEvent, _: &mut View<'_>) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// A setting from the environment, or `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Appends `events` events of 64 bytes, 1,000 per append, each append to a new stream with a
/// `prefix`; returns the seconds it took.
///
/// # Panics
/// If an append fails.
pub async fn seed(store: &dyn EventStore, prefix: &str, events: usize) -> f64 {
    let started = Instant::now();
    for chunk in 0..events.div_ceil(1000) {
        let batch = (0..1000.min(events - chunk * 1000)).map(|_| SerializedEvent::new("Bench.v1", vec![7u8; 64], None)).collect();
        let stream = StreamId::new(format!("{prefix}-{chunk}")).expect("stream id");
        store.append(AppendRequest::new(stream, ExpectedVersion::NoStream, batch)).await.expect("append");
    }
    started.elapsed().as_secs_f64()
}

/// Events per second of a no-op projection catching up from position 0 over the whole log.
///
/// # Panics
/// If the replay fails.
#[allow(clippy::cast_precision_loss)]
pub async fn projection_rate(events: Arc<dyn EventStore>, models: Arc<dyn ReadModelStore>) -> f64 {
    models.reset(NoopProjection::NAME).await.expect("reset");
    let total = events.head().await.expect("head").0;
    let runner = ProjectionRunner::new(NoopProjection, events, models);
    let started = Instant::now();
    runner.catch_up().await.expect("replay");
    total as f64 / started.elapsed().as_secs_f64()
}

/// Prints both series and the ratio of their medians.
pub fn report(backend: &str, events: usize, ours: &[f64], floor: &[f64]) {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, f) = (median(ours), median(floor));
    let rounded = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    println!("{backend}: raw SELECT {:?} events/s", rounded(floor));
    println!("{backend}: projection {:?} events/s", rounded(ours));
    println!("{backend} replay of {events} events, medians of {}: projection {o:.0}/s, raw SELECT {f:.0}/s, ratio {:.2}", ours.len(), o / f);
}
