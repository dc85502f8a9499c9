//! The metrics the runtime records, through the [`metrics`] crate's facade.
//!
//! The runtime installs no recorder: an application does (the web crate's `/metrics` endpoint
//! installs `metrics-exporter-prometheus`), then calls [`init`], which gives the recorder each
//! metric's help text and unit and turns on the two latency histograms. With no recorder installed
//! every recording is a call into the facade's no-op recorder: no allocation, no lock (label sets
//! are built once, not per call), and no clock read until [`init`] (two reads of the clock per store
//! or bus call cost more than all the counters together).
//!
//! Every name is a constant of this module; [`ALL`] lists them with their type, unit, labels and
//! meaning (the table of `docs/observability.md`). Counters are monotonic per process: sum them over
//! the processes of a deployment.
//!
//! | constant | type | labels |
//! |---|---|---|
//! | [`EFFECTS`] | counter | `kind` |
//! | [`EFFECTS_FAILED`] | counter | `kind` |
//! | [`EFFECTS_SKIPPED`] | counter | `kind` |
//! | [`APPEND_CONFLICTS`] | counter | |
//! | [`EVENTS_APPENDED`] | counter | |
//! | [`EVENTS_PUBLISHED`] | counter | |
//! | [`APPEND_DURATION`] | histogram (seconds), after [`init`] | |
//! | [`PUBLISH_DURATION`] | histogram (seconds), after [`init`] | |
//! | [`COMMANDS_DISPATCHED`] | counter | `outcome` |
//! | [`COMMANDS_HANDLED`] | counter | `aggregate`, `outcome` |
//! | [`SAGA_STEPS`] | counter | `saga`, `outcome` |
//! | [`SAGA_RETRIES`] | counter | `saga` |
//! | [`SAGA_DEADLINES_FIRED`] | counter | `saga` |
//! | [`SAGA_LAGGED_EVENTS`] | counter | `saga` |
//! | [`DEAD_LETTERS`] | counter | |
//! | [`OUTBOX_RELAYED`] | counter | |
//! | [`OUTBOX_PENDING`] | gauge | |
//! | [`SUBSCRIPTION_LAG_EVENTS`] | gauge | `name` |
//! | [`SUBSCRIPTION_LAG_SECONDS`] | gauge (seconds) | `name` |
//! | [`PROJECTION_LAG_EVENTS`] | gauge | `name` |
//! | [`PROJECTION_LAG_SECONDS`] | gauge (seconds) | `name` |
//!
//! ```
//! use composable_rust_runtime::metrics;
//!
//! assert!(metrics::ALL.iter().any(|m| m.name == metrics::SAGA_STEPS && m.labels == ["saga", "outcome"]));
//! // Once a recorder is installed (e.g. metrics_exporter_prometheus::PrometheusBuilder::install_recorder):
//! metrics::init();
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::metrics::{Key, KeyName, Label, Level, Metadata, SharedString, Unit};
use composable_rust_core::{CommandOutcome, DispatchError};

/// Effects the executor ran, by `kind`: `append`, `publish`, `dispatch`, `run`, `stream`, `sleep`,
/// `delay`, `cancel`, and `deadline` / `cancel_deadline` where a saga runner stores them (under a
/// `Store` a deadline runs as an in-process timer and counts as `delay`). Composites (`parallel`,
/// `sequential`, `cancellable`) are not counted, their children are. A redelivered saga step runs
/// its effects again, and they count again.
pub const EFFECTS: &str = "composable_effects_total";
/// Effects that failed, by `kind`, after the executor's retries: appends (conflicts excepted, see
/// [`APPEND_CONFLICTS`]), notification publishes, dispatches (business rejections excepted, see
/// [`COMMANDS_DISPATCHED`]), and `run` / `stream` effects that panicked. A publish of stored events
/// that fails is not an effect failure: the event stays in the outbox ([`OUTBOX_PENDING`]).
pub const EFFECTS_FAILED: &str = "composable_effects_failed_total";
/// Effects not executed because an earlier effect of their sequence failed, by `kind`.
pub const EFFECTS_SKIPPED: &str = "composable_effects_skipped_total";
/// Append effects refused by the expected-version check (the aggregate handler then decides the
/// command again; a `Store` feeds the error back).
pub const APPEND_CONFLICTS: &str = "composable_append_conflicts_total";
/// Events newly stored by the runtime: those of append effects and the saga runner's step records
/// (an idempotent append that stored nothing new counts nothing).
pub const EVENTS_APPENDED: &str = "composable_events_appended_total";
/// Events the runtime published successfully: stored events published after their append,
/// notifications, and entries the outbox relay published. One per event and topic.
pub const EVENTS_PUBLISHED: &str = "composable_events_published_total";
/// Duration of each call to the event store's `append` made by the runtime (effects and saga step
/// records; each retry is one call), in seconds. Recorded once [`init`] (or
/// [`set_latency_histograms`]) turned latencies on.
pub const APPEND_DURATION: &str = "composable_append_duration_seconds";
/// Duration of each call to the bus's `publish` made by the runtime (executor and outbox relay;
/// each retry is one call), in seconds. Recorded once latencies are on, like [`APPEND_DURATION`].
pub const PUBLISH_DURATION: &str = "composable_publish_duration_seconds";
/// Commands dispatched by `Dispatch` effects, by `outcome`: `handled`, `duplicate` (the handler had
/// handled that command id before), `rejected` (a business rule refused it), `failed` (anything
/// else, after retries).
pub const COMMANDS_DISPATCHED: &str = "composable_commands_dispatched_total";
/// Commands an `AggregateHandler` handled, dispatched or sent with `AggregateHandler::send`, by
/// `aggregate` (its `AGGREGATE_TYPE`) and `outcome` (as for [`COMMANDS_DISPATCHED`]).
pub const COMMANDS_HANDLED: &str = "composable_commands_handled_total";
/// Deliveries (bus or store-fed) a saga worker finished, by `saga` (its `NAME`) and `outcome`:
/// `applied`, `duplicate` (a redelivery recognised), `skipped` (a type the saga ignores),
/// `dead_lettered` (including deliveries the bus failed to decode and deadlines given up). Equal
/// to the sums of the workers' `SagaStatsSnapshot` fields of the same names.
pub const SAGA_STEPS: &str = "composable_saga_steps_total";
/// Saga steps retried in their lane after a retryable failure, by `saga`
/// (`SagaStatsSnapshot::redelivery_requests`).
pub const SAGA_RETRIES: &str = "composable_saga_retries_total";
/// Deadlines a saga worker fed to their instances, by `saga` (`SagaStatsSnapshot::deadlines_fired`).
pub const SAGA_DEADLINES_FIRED: &str = "composable_saga_deadlines_fired_total";
/// Events the bus reported a saga worker missed (lag of a non-durable bus), by `saga`.
pub const SAGA_LAGGED_EVENTS: &str = "composable_saga_lagged_events_total";
/// Dead letters the runtime recorded (executor, saga runner, outbox relay, store, deadlines). A
/// bus's own dead letters (messages it terminates) go to its sink without passing through here.
pub const DEAD_LETTERS: &str = "composable_dead_letters_total";
/// Outbox entries the relay published and marked.
pub const OUTBOX_RELAYED: &str = "composable_outbox_relayed_total";
/// Outbox entries still pending after the relay's last pass (held back, backing off, failed).
pub const OUTBOX_PENDING: &str = "composable_outbox_pending";
/// Events between a named `StoreSubscription`'s position and the store's head, as of its last
/// `status()`, by `name`.
pub const SUBSCRIPTION_LAG_EVENTS: &str = "composable_subscription_lag_events";
/// A named `StoreSubscription`'s `SubscriptionStatus::lag` (its lag in time), in seconds, as of its
/// last `status()`, by `name`. A store-fed saga's feed is named after its consumer group.
pub const SUBSCRIPTION_LAG_SECONDS: &str = "composable_subscription_lag_seconds";
/// A projection's `ProjectionStatus::lag_events`, by `name`: set by every `status()` call, which
/// a spawned `ProjectionRunner` makes at most once a second.
pub const PROJECTION_LAG_EVENTS: &str = "composable_projection_lag_events";
/// A projection's `ProjectionStatus::lag` in seconds, by `name`, set like
/// [`PROJECTION_LAG_EVENTS`].
pub const PROJECTION_LAG_SECONDS: &str = "composable_projection_lag_seconds";

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricType {
    /// A monotonic count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One metric the runtime records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricInfo {
    /// Its name (one of this module's constants).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricType,
    /// Its unit, if it has one.
    pub unit: Option<Unit>,
    /// The names of its labels.
    pub labels: &'static [&'static str],
    /// What it counts (one line).
    pub help: &'static str,
}

const fn info(name: &'static str, kind: MetricType, unit: Option<Unit>, labels: &'static [&'static str], help: &'static str) -> MetricInfo {
    MetricInfo { name, kind, unit, labels, help }
}

use MetricType::{Counter, Gauge, Histogram};

/// Every metric the runtime records.
pub const ALL: &[MetricInfo] = &[
    info(EFFECTS, Counter, None, &["kind"], "Effects the executor ran, by kind."),
    info(EFFECTS_FAILED, Counter, None, &["kind"], "Effects that failed after retries (conflicts and business rejections excepted), by kind."),
    info(EFFECTS_SKIPPED, Counter, None, &["kind"], "Effects skipped because an earlier effect of their sequence failed, by kind."),
    info(APPEND_CONFLICTS, Counter, None, &[], "Append effects refused by the expected-version check."),
    info(EVENTS_APPENDED, Counter, None, &[], "Events newly stored by append effects and saga step records."),
    info(EVENTS_PUBLISHED, Counter, None, &[], "Events published by the executor and the outbox relay, one per event and topic."),
    info(APPEND_DURATION, Histogram, Some(Unit::Seconds), &[], "Duration of each event store append call made by the runtime."),
    info(PUBLISH_DURATION, Histogram, Some(Unit::Seconds), &[], "Duration of each bus publish call made by the runtime."),
    info(COMMANDS_DISPATCHED, Counter, None, &["outcome"], "Commands dispatched by effects, by outcome (handled, duplicate, rejected, failed)."),
    info(COMMANDS_HANDLED, Counter, None, &["aggregate", "outcome"], "Commands handled by aggregate handlers, by aggregate and outcome."),
    info(
        SAGA_STEPS,
        Counter,
        None,
        &["saga", "outcome"],
        "Deliveries saga workers finished, by saga and outcome (applied, duplicate, skipped, dead_lettered).",
    ),
    info(SAGA_RETRIES, Counter, None, &["saga"], "Saga steps retried in their lane after a retryable failure."),
    info(SAGA_DEADLINES_FIRED, Counter, None, &["saga"], "Deadlines saga workers fed to their instances."),
    info(SAGA_LAGGED_EVENTS, Counter, None, &["saga"], "Events the bus reported saga workers missed."),
    info(DEAD_LETTERS, Counter, None, &[], "Dead letters recorded by the runtime."),
    info(OUTBOX_RELAYED, Counter, None, &[], "Outbox entries the relay published."),
    info(OUTBOX_PENDING, Gauge, Some(Unit::Count), &[], "Outbox entries still pending after the relay's last pass."),
    info(
        SUBSCRIPTION_LAG_EVENTS,
        Gauge,
        Some(Unit::Count),
        &["name"],
        "Events between a store subscription's position and the store's head, as of its last status.",
    ),
    info(SUBSCRIPTION_LAG_SECONDS, Gauge, Some(Unit::Seconds), &["name"], "A store subscription's lag in time, as of its last status."),
    info(PROJECTION_LAG_EVENTS, Gauge, Some(Unit::Count), &["name"], "Events between a projection's checkpoint and the store's head, as of its last status."),
    info(PROJECTION_LAG_SECONDS, Gauge, Some(Unit::Seconds), &["name"], "A projection's lag in time, as of its last status."),
];

static LATENCIES: AtomicBool = AtomicBool::new(false);

/// Call once after installing a recorder: registers the help text and unit of every metric in
/// [`ALL`] with it, and turns the latency histograms ([`APPEND_DURATION`], [`PUBLISH_DURATION`])
/// on. Calling it again is harmless.
pub fn init() {
    describe();
    set_latency_histograms(true);
}

/// Turns the latency histograms on or off (off until [`init`]): when off, store and bus calls are
/// not timed at all.
pub fn set_latency_histograms(on: bool) {
    LATENCIES.store(on, Ordering::Relaxed);
}

/// Registers the help text and unit of every metric in [`ALL`] with the installed recorder (a no-op
/// without one). [`init`] does this.
pub fn describe() {
    for m in ALL {
        ::metrics::with_recorder(|r| {
            let name = KeyName::from_const_str(m.name);
            let help = SharedString::const_str(m.help);
            match m.kind {
                MetricType::Counter => r.describe_counter(name, m.unit, help),
                MetricType::Gauge => r.describe_gauge(name, m.unit, help),
                MetricType::Histogram => r.describe_histogram(name, m.unit, help),
            }
        });
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn increment(key: &Key, n: u64) {
    ::metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(n));
}

fn set(key: &Key, value: f64) {
    ::metrics::with_recorder(|r| r.register_gauge(key, &METADATA).set(value));
}

fn record(key: &Key, value: Duration) {
    ::metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(value.as_secs_f64()));
}

static APPEND_CONFLICTS_KEY: Key = Key::from_static_name(APPEND_CONFLICTS);
static EVENTS_APPENDED_KEY: Key = Key::from_static_name(EVENTS_APPENDED);
static EVENTS_PUBLISHED_KEY: Key = Key::from_static_name(EVENTS_PUBLISHED);
static APPEND_DURATION_KEY: Key = Key::from_static_name(APPEND_DURATION);
static PUBLISH_DURATION_KEY: Key = Key::from_static_name(PUBLISH_DURATION);
static DEAD_LETTERS_KEY: Key = Key::from_static_name(DEAD_LETTERS);
static OUTBOX_RELAYED_KEY: Key = Key::from_static_name(OUTBOX_RELAYED);
static OUTBOX_PENDING_KEY: Key = Key::from_static_name(OUTBOX_PENDING);

/// A function from a label value to the key of `$metric` with that one label, each key a static
/// built at compile time; `None` for a value not listed.
macro_rules! static_keys {
    ($fn_name:ident, $metric:expr, $label:literal, [$($value:literal),* $(,)?]) => {
        fn $fn_name(value: &str) -> Option<&'static Key> {
            match value {
                $($value => {
                    static LABELS: [Label; 1] = [Label::from_static_parts($label, $value)];
                    static KEY: Key = Key::from_static_parts($metric, &LABELS);
                    Some(&KEY)
                })*
                _ => None,
            }
        }
    };
}

static_keys!(effects_key, EFFECTS, "kind", ["append", "publish", "dispatch", "run", "stream", "sleep", "delay", "cancel", "deadline", "cancel_deadline"]);
static_keys!(failed_key, EFFECTS_FAILED, "kind", ["append", "publish", "dispatch", "run", "stream"]);
static_keys!(
    skipped_key,
    EFFECTS_SKIPPED,
    "kind",
    ["append", "publish", "dispatch", "run", "stream", "sleep", "delay", "cancel", "deadline", "cancel_deadline", "parallel", "sequential", "cancellable"]
);
static_keys!(dispatched_key, COMMANDS_DISPATCHED, "outcome", ["handled", "duplicate", "rejected", "failed"]);

/// An effect of `kind` starts running (composites and `none` are not counted).
pub(crate) fn effect_started(kind: &'static str) {
    if let Some(key) = effects_key(kind) {
        increment(key, 1);
    }
}

/// An effect of `kind` failed (see [`EFFECTS_FAILED`]).
pub(crate) fn effect_failed(kind: &'static str) {
    if let Some(key) = failed_key(kind) {
        increment(key, 1);
    }
}

/// An effect of `kind` was skipped.
pub(crate) fn effect_skipped(kind: &'static str) {
    if let Some(key) = skipped_key(kind) {
        increment(key, 1);
    }
}

pub(crate) fn append_conflict() {
    increment(&APPEND_CONFLICTS_KEY, 1);
}

pub(crate) fn events_appended(n: usize) {
    increment(&EVENTS_APPENDED_KEY, u64::try_from(n).unwrap_or(u64::MAX));
}

pub(crate) fn event_published() {
    increment(&EVENTS_PUBLISHED_KEY, 1);
}

pub(crate) fn dead_letter() {
    increment(&DEAD_LETTERS_KEY, 1);
}

/// After a relay pass: `relayed` entries published, `pending` left.
pub(crate) fn outbox_pass(relayed: usize, pending: usize) {
    increment(&OUTBOX_RELAYED_KEY, u64::try_from(relayed).unwrap_or(u64::MAX));
    #[allow(clippy::cast_precision_loss)]
    set(&OUTBOX_PENDING_KEY, pending as f64);
}

/// The label of a command's outcome.
fn outcome_of(outcome: Result<&CommandOutcome, &DispatchError>) -> &'static str {
    match outcome {
        Ok(CommandOutcome::Duplicate) => "duplicate",
        Ok(_) => "handled",
        Err(DispatchError::Rejected { .. }) => "rejected",
        Err(_) => "failed",
    }
}

pub(crate) fn command_dispatched(outcome: &Result<CommandOutcome, DispatchError>) {
    if let Some(key) = dispatched_key(outcome_of(outcome.as_ref())) {
        increment(key, 1);
    }
}

/// Which store or bus call a duration is of.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    Append,
    Publish,
}

/// Runs `call`, recording its duration under `what`'s histogram if latencies are on.
pub(crate) async fn timed<T>(what: Call, call: impl Future<Output = T>) -> T {
    if !LATENCIES.load(Ordering::Relaxed) {
        return call.await;
    }
    let started = Instant::now();
    let out = call.await;
    let key = match what {
        Call::Append => &APPEND_DURATION_KEY,
        Call::Publish => &PUBLISH_DURATION_KEY,
    };
    record(key, started.elapsed());
    out
}

fn labelled(name: &'static str, labels: &[(&'static str, SharedString)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>())
}

/// The keys of one saga's metrics, built once per runner.
pub(crate) struct SagaMetrics {
    applied: Key,
    duplicate: Key,
    skipped: Key,
    dead_lettered: Key,
    retries: Key,
    deadlines_fired: Key,
    lagged: Key,
}

/// What a saga worker counts, as [`SagaMetrics::count`] takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SagaCount {
    Applied,
    Duplicate,
    Skipped,
    DeadLettered,
    Retry,
    DeadlineFired,
    Lagged(u64),
}

impl SagaMetrics {
    pub(crate) fn new(saga: &'static str) -> Self {
        let saga = SharedString::const_str(saga);
        let step = |outcome: &'static str| labelled(SAGA_STEPS, &[("saga", saga.clone()), ("outcome", SharedString::const_str(outcome))]);
        let of = |name: &'static str| labelled(name, &[("saga", saga.clone())]);
        Self {
            applied: step("applied"),
            duplicate: step("duplicate"),
            skipped: step("skipped"),
            dead_lettered: step("dead_lettered"),
            retries: of(SAGA_RETRIES),
            deadlines_fired: of(SAGA_DEADLINES_FIRED),
            lagged: of(SAGA_LAGGED_EVENTS),
        }
    }

    pub(crate) fn count(&self, what: SagaCount) {
        let (key, n) = match what {
            SagaCount::Applied => (&self.applied, 1),
            SagaCount::Duplicate => (&self.duplicate, 1),
            SagaCount::Skipped => (&self.skipped, 1),
            SagaCount::DeadLettered => (&self.dead_lettered, 1),
            SagaCount::Retry => (&self.retries, 1),
            SagaCount::DeadlineFired => (&self.deadlines_fired, 1),
            SagaCount::Lagged(n) => (&self.lagged, n),
        };
        increment(key, n);
    }
}

/// The keys of one aggregate's command metrics, built once per handler.
pub(crate) struct CommandMetrics {
    handled: Key,
    duplicate: Key,
    rejected: Key,
    failed: Key,
}

impl CommandMetrics {
    pub(crate) fn new(aggregate: &'static str) -> Self {
        let aggregate = SharedString::const_str(aggregate);
        let key = |outcome: &'static str| labelled(COMMANDS_HANDLED, &[("aggregate", aggregate.clone()), ("outcome", SharedString::const_str(outcome))]);
        Self { handled: key("handled"), duplicate: key("duplicate"), rejected: key("rejected"), failed: key("failed") }
    }

    /// Counts a handled command: `rejected` tells a business rejection from another failure.
    pub(crate) fn count<E>(&self, outcome: &Result<CommandOutcome, E>, rejected: impl FnOnce(&E) -> bool) {
        let key = match outcome {
            Ok(CommandOutcome::Duplicate) => &self.duplicate,
            Ok(_) => &self.handled,
            Err(e) if rejected(e) => &self.rejected,
            Err(_) => &self.failed,
        };
        increment(key, 1);
    }
}

/// The two lag gauges (events, seconds) of a named subscription or projection.
#[derive(Debug, Clone)]
pub(crate) struct LagGauges {
    events: Key,
    seconds: Key,
}

impl LagGauges {
    pub(crate) fn subscription(name: &str) -> Self {
        Self::new(SUBSCRIPTION_LAG_EVENTS, SUBSCRIPTION_LAG_SECONDS, name)
    }

    pub(crate) fn projection(name: &str) -> Self {
        Self::new(PROJECTION_LAG_EVENTS, PROJECTION_LAG_SECONDS, name)
    }

    fn new(events: &'static str, seconds: &'static str, name: &str) -> Self {
        let name = SharedString::from_owned(name.to_owned());
        Self { events: labelled(events, &[("name", name.clone())]), seconds: labelled(seconds, &[("name", name)]) }
    }

    pub(crate) fn set(&self, events: u64, time: Duration) {
        #[allow(clippy::cast_precision_loss)]
        set(&self.events, events as f64);
        set(&self.seconds, time.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_metric_is_listed_once_with_the_prometheus_naming_rules() {
        let names: HashSet<&str> = ALL.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), ALL.len(), "a name listed twice");
        for m in ALL {
            assert!(m.name.starts_with("composable_") && m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", m.name);
            match m.kind {
                MetricType::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            if m.unit == Some(Unit::Seconds) {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
        }
    }

    #[test]
    fn every_effect_kind_has_a_static_key() {
        for kind in ["append", "publish", "dispatch", "run", "stream", "sleep", "delay", "cancel", "deadline", "cancel_deadline"] {
            let key = effects_key(kind).unwrap();
            assert_eq!(key.name(), EFFECTS);
            assert_eq!(key.labels().map(|l| (l.key(), l.value())).collect::<Vec<_>>(), [("kind", kind)]);
        }
        for composite in ["none", "parallel", "sequential", "cancellable"] {
            assert!(effects_key(composite).is_none(), "{composite}");
        }
    }
}
