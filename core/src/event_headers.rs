//! Event metadata as named string headers, for buses whose messages carry headers next to a payload
//! (Kafka headers, Zenoh attachments). The payload stays the event's data as it is, so clients in
//! other languages can read both without knowing the composable-rust envelope.
//!
//! | name | value |
//! |---|---|
//! | `cr-event-id` | UUID |
//! | `cr-event-type` | e.g. `OrderPlaced.v1` |
//! | `cr-timestamp-ns` | nanoseconds since the Unix epoch |
//! | `cr-stream-id`, `cr-stream-version` | when the event came from a stream |
//! | `cr-correlation-id`, `cr-causation-id` | when set |
//! | `cr-header-{name}` | each free-form header |
//!
//! Only `cr-event-type` is required when reading: a message from another producer without
//! `cr-event-id` gets the id its bus derives from the message's position, so a redelivery of it
//! carries the same id.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::{CodecError, EventMetadata, SerializedEvent};
use crate::stream::{StreamId, Version};

/// The event id.
pub const EVENT_ID: &str = "cr-event-id";
/// The event type.
pub const EVENT_TYPE: &str = "cr-event-type";
/// Creation time, nanoseconds since the Unix epoch.
pub const TIMESTAMP_NS: &str = "cr-timestamp-ns";
/// The stream id.
pub const STREAM_ID: &str = "cr-stream-id";
/// The stream version.
pub const STREAM_VERSION: &str = "cr-stream-version";
/// The correlation id.
pub const CORRELATION_ID: &str = "cr-correlation-id";
/// The causation id.
pub const CAUSATION_ID: &str = "cr-causation-id";
/// Prefix of free-form headers.
pub const HEADER_PREFIX: &str = "cr-header-";

/// Free-form header (a key of [`EventMetadata::headers`]) naming the session or tenant an event
/// belongs to. Session-scoped feeds (Zenoh `sessions/{id}/...` keys, the web crate's session feeds)
/// deliver an event only to that session.
pub const SESSION: &str = "session-id";

/// Free-form header carrying the W3C trace context (`traceparent`) of the operation that produced
/// an event, so a consumer's span can continue the producer's trace across processes.
pub const TRACEPARENT: &str = "traceparent";

/// Free-form header carrying the W3C `tracestate` that goes with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// Nanoseconds since the epoch (microsecond precision past the year 2262).
pub fn timestamp_ns(t: &DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or_else(|| t.timestamp_micros().saturating_mul(1000))
}

/// The headers of `event`, in the order of the table above.
pub fn to_headers(event: &SerializedEvent) -> Vec<(String, String)> {
    let m = &event.metadata;
    let mut out = Vec::with_capacity(7 + m.headers.len());
    out.push((EVENT_ID.to_owned(), event.event_id.to_string()));
    out.push((EVENT_TYPE.to_owned(), event.event_type.clone()));
    out.push((TIMESTAMP_NS.to_owned(), timestamp_ns(&m.timestamp).to_string()));
    if let Some(s) = &event.stream_id {
        out.push((STREAM_ID.to_owned(), s.as_str().to_owned()));
    }
    if let Some(v) = event.stream_version {
        out.push((STREAM_VERSION.to_owned(), v.0.to_string()));
    }
    if let Some(c) = &m.correlation_id {
        out.push((CORRELATION_ID.to_owned(), c.clone()));
    }
    if let Some(c) = &m.causation_id {
        out.push((CAUSATION_ID.to_owned(), c.clone()));
    }
    for (k, v) in &m.headers {
        out.push((format!("{HEADER_PREFIX}{k}"), v.clone()));
    }
    out
}

fn malformed(what: &str, reason: impl Into<String>) -> CodecError {
    CodecError::Malformed { what: what.to_owned(), reason: reason.into() }
}

/// Rebuilds an event from its headers and payload. `what` names the source in errors (`kafka
/// headers`); `fallback_id` gives the id when `cr-event-id` is absent. Unknown names are ignored.
pub fn from_headers<'a>(
    what: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    data: Bytes,
    fallback_id: impl FnOnce() -> Uuid,
) -> Result<SerializedEvent, CodecError> {
    let mut event_id = None;
    let mut event_type = None;
    let mut stream_id = None;
    let mut stream_version = None;
    let mut timestamp = None;
    let mut metadata = EventMetadata { correlation_id: None, causation_id: None, timestamp: DateTime::UNIX_EPOCH, headers: BTreeMap::new() };
    for (name, value) in headers {
        if !name.starts_with("cr-") {
            continue;
        }
        let value = std::str::from_utf8(value).map_err(|_| malformed(what, format!("header {name} is not UTF-8")))?;
        let bad = |e: &dyn std::fmt::Display| malformed(what, format!("header {name}: {e}"));
        match name {
            EVENT_ID => event_id = Some(Uuid::parse_str(value).map_err(|e| bad(&e))?),
            EVENT_TYPE => event_type = Some(value.to_owned()),
            TIMESTAMP_NS => timestamp = Some(DateTime::from_timestamp_nanos(value.parse().map_err(|e| bad(&e))?)),
            STREAM_ID => stream_id = Some(StreamId::new(value).map_err(|e| bad(&e))?),
            STREAM_VERSION => stream_version = Some(Version(value.parse().map_err(|e| bad(&e))?)),
            CORRELATION_ID => metadata.correlation_id = Some(value.to_owned()),
            CAUSATION_ID => metadata.causation_id = Some(value.to_owned()),
            other => {
                if let Some(header) = other.strip_prefix(HEADER_PREFIX) {
                    metadata.headers.insert(header.to_owned(), value.to_owned());
                }
            }
        }
    }
    let event_type = event_type.ok_or_else(|| malformed(what, format!("no {EVENT_TYPE} header: the message was not published as a composable-rust event")))?;
    metadata.timestamp = timestamp.unwrap_or_else(Utc::now);
    Ok(SerializedEvent { event_id: event_id.unwrap_or_else(fallback_id), event_type, stream_id, stream_version, data, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut m = EventMetadata::now().with_correlation_id("o-1").with_causation_id("c-1");
        m.headers.insert("tenant".into(), "acme".into());
        let mut e = SerializedEvent::new("OrderPlaced.v1", Bytes::from_static(b"{}"), Some(m));
        e.stream_id = Some(StreamId::new("order-1").unwrap());
        e.stream_version = Some(Version(3));
        let headers = to_headers(&e);
        let back = from_headers("test", headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())), e.data.clone(), Uuid::new_v4).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn foreign_messages_need_only_a_type() {
        let id = Uuid::new_v4();
        let e = from_headers("test", [("cr-event-type", &b"Ping.v1"[..]), ("other", b"\xff")], Bytes::new(), || id).unwrap();
        assert_eq!((e.event_id, e.event_type.as_str()), (id, "Ping.v1"));
        let err = from_headers("kafka headers", [("x", &b"y"[..])], Bytes::new(), Uuid::new_v4).unwrap_err();
        assert!(err.to_string().contains("no cr-event-type header"), "{err}");
        let err = from_headers("kafka headers", [("cr-event-type", &b"T"[..]), ("cr-event-id", b"nope")], Bytes::new(), Uuid::new_v4).unwrap_err();
        assert!(err.to_string().contains("cr-event-id"), "{err}");
    }
}
