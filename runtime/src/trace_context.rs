//! W3C trace context carried in event metadata, so a saga step's span continues the trace of the
//! command that caused the event it handles, in this process or another one.
//!
//! # Rules
//! - **Where it travels.** The context is the free-form header
//!   [`TRACEPARENT`] (`traceparent`, and
//!   [`TRACESTATE`](composable_rust_core::event_headers::TRACESTATE) when not empty) of
//!   [`EventMetadata::headers`], in the standard W3C format (`00-{trace id}-{parent id}-{flags}`).
//!   It is stored with the event and every bus carries it: in memory as is, on NATS, Kafka and
//!   Zenoh as the native header (attachment) `cr-header-traceparent`, besides the envelope.
//! - **Injection.** With the `otel` feature, every event an effect appends or publishes gets the
//!   context of the current span (the effect's span) unless it already carries a valid
//!   `traceparent`: an event built with one keeps it. The outbox relay publishes stored events as
//!   they were stored, so a relayed event carries the context of the append. Nothing is written when
//!   there is no valid span context (no OpenTelemetry layer installed, no feature).
//! - **Extraction.** The saga runner's step span (`saga_step`) takes the delivered event's context
//!   as its OpenTelemetry parent, so the step, its effects, the commands it dispatches and the
//!   events those append are all in the trace of the command that caused the event. A step whose
//!   event carries no valid `traceparent` (or a deadline's step) starts a trace of its own (a root
//!   span, whatever span it runs in). Malformed values (garbage, wrong length, upper-case hex,
//!   all-zero ids, version `ff`) are ignored: they never fail a step.
//! - **Commands** are dispatched in process ([`crate::CommandRouter`]): the handler's `command`
//!   span is a child of the dispatching effect's span, so it is in the same trace without a header.
//!
//! # API
//! [`TraceParent`] parses and prints the header without any OpenTelemetry dependency;
//! [`inject_current`], [`set_parent`] and [`current`] are what the runtime uses, for code that
//! builds or consumes events itself. Without the `otel` feature they do nothing (and say so by
//! returning `false` / `None`).

use std::fmt;

use composable_rust_core::EventMetadata;
use composable_rust_core::event_headers::TRACEPARENT;

/// A valid W3C `traceparent` value: trace id, parent (span) id and trace flags.
///
/// ```
/// use composable_rust_runtime::trace_context::TraceParent;
///
/// let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
/// assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(tp.is_sampled());
/// assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert!(TraceParent::parse("00-4bf92f35-00f067aa0ba902b7-01").is_err());
/// # Ok::<(), composable_rust_runtime::trace_context::TraceParentError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a `traceparent` value was refused. The runtime ignores such values (the step starts a trace
/// of its own); the message says what the producer got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Not `{version}-{trace id}-{parent id}-{flags}` with the W3C lengths (2, 32, 16, 2).
    #[error("a traceparent is 55 characters, 00-{{32 hex}}-{{16 hex}}-{{2 hex}}; got {len} characters: {value:?}")]
    Shape {
        /// The value's length in bytes.
        len: usize,
        /// The value (cut to its first 64 characters).
        value: String,
    },
    /// A field is not lower-case hexadecimal.
    #[error("traceparent {field} {value:?} is not lower-case hexadecimal")]
    NotHex {
        /// `version`, `trace id`, `parent id` or `flags`.
        field: &'static str,
        /// The field's text.
        value: String,
    },
    /// Version `ff`, which W3C forbids.
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    /// An all-zero trace id or parent id, which W3C forbids.
    #[error("traceparent {field} is all zeros, which W3C forbids")]
    Zero {
        /// `trace id` or `parent id`.
        field: &'static str,
    },
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn decode_hex<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], TraceParentError> {
    let bytes = text.as_bytes();
    let not_hex = || TraceParentError::NotHex { field, value: text.to_owned() };
    if bytes.len() != 2 * N {
        return Err(not_hex());
    }
    let mut out = [0u8; N];
    for (k, pair) in bytes.chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else { return Err(not_hex()) };
        out[k] = hi << 4 | lo;
    }
    Ok(out)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

impl TraceParent {
    /// The length of a version-00 value.
    pub const LEN: usize = 55;

    /// A trace parent from its parts. `None` if either id is all zeros (W3C forbids them).
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(Self { trace_id, parent_id, flags })
    }

    /// Parses a `traceparent` value as W3C defines it: version-00 values are exactly 55 characters;
    /// a later version may append fields after a `-`, which are ignored. Upper-case hex is refused.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let shape = || TraceParentError::Shape { len: value.len(), value: value.chars().take(64).collect() };
        let bytes = value.as_bytes();
        if bytes.len() < Self::LEN || (bytes.len() > Self::LEN && bytes[Self::LEN] != b'-') {
            return Err(shape());
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(shape());
        }
        // The separators are ASCII, so these are char boundaries.
        let field = |from: usize, to: usize| value.get(from..to).ok_or_else(shape);
        let [version] = decode_hex::<1>("version", field(0, 2)?)?;
        if version == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if version == 0 && bytes.len() != Self::LEN {
            return Err(shape());
        }
        let trace_id = decode_hex::<16>("trace id", field(3, 35)?)?;
        let parent_id = decode_hex::<8>("parent id", field(36, 52)?)?;
        let [flags] = decode_hex::<1>("flags", field(53, 55)?)?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::Zero { field: "trace id" });
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::Zero { field: "parent id" });
        }
        Ok(Self { trace_id, parent_id, flags })
    }

    /// The valid `traceparent` of `metadata`, if it has one; a malformed one is ignored (logged at
    /// debug level).
    pub fn from_metadata(metadata: &EventMetadata) -> Option<Self> {
        let value = metadata.headers.get(TRACEPARENT)?;
        match Self::parse(value) {
            Ok(tp) => Some(tp),
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a malformed traceparent header");
                None
            }
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The trace id as 32 lower-case hex digits (how trace viewers show it).
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }

    /// The id of the span that produced the event (the parent of the consumer's span).
    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the producer sampled the trace (flag `01`).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(Self::LEN);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.parent_id);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        f.write_str(&s)
    }
}

/// Whether the `otel` feature is compiled in (without it, [`inject_current`], [`set_parent`] and
/// [`current`] do nothing).
pub const ENABLED: bool = cfg!(feature = "otel");

/// Writes the current span's trace context into `metadata` (`traceparent`, and `tracestate` when
/// not empty) unless it already carries a valid `traceparent`. Returns whether it wrote one: not
/// without the `otel` feature, nor when the current span has no valid OpenTelemetry context (no
/// OpenTelemetry layer installed, no span).
pub fn inject_current(metadata: &mut EventMetadata) -> bool {
    if metadata.headers.get(TRACEPARENT).is_some_and(|v| TraceParent::parse(v).is_ok()) {
        return false;
    }
    otel::inject_current(metadata)
}

/// Makes the trace context carried by `metadata` the OpenTelemetry parent of `span`, which must not
/// have been entered yet. Returns whether it did: not when `metadata` carries no valid
/// `traceparent` (a malformed one is ignored), when no OpenTelemetry layer sees the span, or
/// without the `otel` feature.
pub fn set_parent(span: &tracing::Span, metadata: &EventMetadata) -> bool {
    let Some(tp) = TraceParent::from_metadata(metadata) else { return false };
    otel::set_parent(span, tp, metadata)
}

/// The trace context of the current span, if it has a valid OpenTelemetry one (`otel` feature, an
/// OpenTelemetry layer installed, inside a span).
pub fn current() -> Option<TraceParent> {
    otel::current()
}

/// Parents a step's span: on the trace `metadata` carries, or (none valid) on a trace of its own,
/// whatever span the step runs in.
pub(crate) fn parent_step(span: &tracing::Span, metadata: Option<&EventMetadata>) {
    if !metadata.is_some_and(|m| set_parent(span, m)) {
        otel::new_root(span);
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::BTreeMap;

    use composable_rust_core::EventMetadata;
    use composable_rust_core::event_headers::TRACEPARENT;
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    struct Headers<'a>(&'a BTreeMap<String, String>);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    struct HeadersMut<'a>(&'a mut BTreeMap<String, String>);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            if value.is_empty() {
                // An empty tracestate is no tracestate; a stale one must not outlive its parent.
                self.0.remove(key);
            } else {
                self.0.insert(key.to_owned(), value);
            }
        }
    }

    pub(super) fn inject_current(metadata: &mut EventMetadata) -> bool {
        let span = tracing::Span::current();
        if span.is_none() {
            return false;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return false;
        }
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(&mut metadata.headers));
        metadata.headers.contains_key(TRACEPARENT)
    }

    pub(super) fn set_parent(span: &tracing::Span, _checked: TraceParent, metadata: &EventMetadata) -> bool {
        let cx = TraceContextPropagator::new().extract(&Headers(&metadata.headers));
        if !cx.span().span_context().is_valid() {
            return false;
        }
        match span.set_parent(cx) {
            Ok(()) => true,
            Err(e) => {
                tracing::trace!(error = %e, "trace context not attached to the span");
                false
            }
        }
    }

    pub(super) fn new_root(span: &tracing::Span) {
        // An empty context: the span gets a new trace id when it starts.
        let _ = span.set_parent(opentelemetry::Context::new());
    }

    pub(super) fn current() -> Option<TraceParent> {
        let span = tracing::Span::current();
        if span.is_none() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        TraceParent::new(sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.trace_flags().to_u8())
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    use composable_rust_core::EventMetadata;

    use super::TraceParent;

    pub(super) fn inject_current(_metadata: &mut EventMetadata) -> bool {
        false
    }

    pub(super) fn set_parent(_span: &tracing::Span, _checked: TraceParent, _metadata: &EventMetadata) -> bool {
        false
    }

    pub(super) fn new_root(_span: &tracing::Span) {}

    pub(super) fn current() -> Option<TraceParent> {
        None
    }
}

#[cfg(test)]
mod tests {
    use composable_rust_core::event_headers::TRACESTATE;

    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_format() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id(), [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(tp.is_sampled());
        // A later version may append fields.
        assert_eq!(TraceParent::parse(&format!("01{}-extra", &GOOD[2..])).unwrap().trace_id(), tp.trace_id());
    }

    #[test]
    fn malformed_values_are_refused_never_a_panic() {
        let long = "0".repeat(10_000);
        let bad = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // Multi-byte characters where the separators should be.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            long.as_str(),
        ];
        for value in bad {
            let err = TraceParent::parse(value).expect_err(value);
            assert!(!err.to_string().is_empty());
            let mut m = EventMetadata::now();
            m.headers.insert(TRACEPARENT.into(), value.into());
            m.headers.insert(TRACESTATE.into(), "\u{0}\u{ffff}".into());
            assert_eq!(TraceParent::from_metadata(&m), None, "{value}");
            let span = tracing::info_span!("step");
            assert!(!set_parent(&span, &m), "{value}");
        }
    }

    #[test]
    fn nothing_to_inject_without_a_span_context() {
        let mut m = EventMetadata::now();
        assert!(!inject_current(&mut m));
        assert!(m.headers.is_empty());
        assert_eq!(current(), None);
        // A valid one is kept as it is.
        m.headers.insert(TRACEPARENT.into(), GOOD.into());
        assert!(!inject_current(&mut m));
        assert_eq!(m.headers[TRACEPARENT], GOOD);
    }
}
