//! Event metadata carried in each sample's attachment, readable by any Zenoh client.
//!
//! The payload of a sample is the event's data, untouched. The attachment is a sequence of
//! `(name, value)` string pairs in the Zenoh serialization format, which every Zenoh binding decodes
//! as a map (Python: `zenoh.ext.z_deserialize(dict[str, str], sample.attachment)`):
//!
//! | name | value |
//! |---|---|
//! | `cr-event-id` | UUID |
//! | `cr-event-type` | e.g. `OrderPlaced.v1` |
//! | `cr-timestamp-ns` | nanoseconds since the Unix epoch |
//! | `cr-stream-id`, `cr-stream-version` | when the event came from a stream |
//! | `cr-correlation-id`, `cr-causation-id` | when set |
//! | `cr-header-{name}` | each free-form header |

use bytes::Bytes;
use chrono::{DateTime, Utc};
use composable_rust_core::{CodecError, EventMetadata, SerializedEvent, StreamId, Version};
use uuid::Uuid;
use zenoh::bytes::ZBytes;
use zenoh_ext::{ZDeserializer, ZSerializer};

/// Attachment names.
pub mod names {
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
}

fn timestamp_ns(t: &DateTime<Utc>) -> i64 {
    // Out of i64 nanosecond range only after the year 2262; microseconds keep such dates representable.
    t.timestamp_nanos_opt().unwrap_or_else(|| t.timestamp_micros().saturating_mul(1000))
}

/// Encodes everything but the payload.
pub fn encode(event: &SerializedEvent) -> ZBytes {
    let m = &event.metadata;
    let mut id_buf = Uuid::encode_buffer();
    let id = event.event_id.as_hyphenated().encode_lower(&mut id_buf);
    let ts = timestamp_ns(&m.timestamp).to_string();
    let version = event.stream_version.map(|v| v.0.to_string());
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(7 + m.headers.len());
    pairs.push((names::EVENT_ID, id));
    pairs.push((names::EVENT_TYPE, &event.event_type));
    pairs.push((names::TIMESTAMP_NS, &ts));
    if let Some(stream) = &event.stream_id {
        pairs.push((names::STREAM_ID, stream.as_str()));
    }
    if let Some(v) = &version {
        pairs.push((names::STREAM_VERSION, v));
    }
    if let Some(c) = &m.correlation_id {
        pairs.push((names::CORRELATION_ID, c));
    }
    if let Some(c) = &m.causation_id {
        pairs.push((names::CAUSATION_ID, c));
    }
    let header_names: Vec<String> = m.headers.keys().map(|k| format!("{}{k}", names::HEADER_PREFIX)).collect();
    for (name, value) in header_names.iter().zip(m.headers.values()) {
        pairs.push((name, value));
    }
    let mut s = ZSerializer::new();
    s.serialize_iter(pairs.iter().map(|(k, v)| (*k, *v)));
    s.finish()
}

fn malformed(reason: impl Into<String>) -> CodecError {
    CodecError::Malformed { what: "zenoh sample attachment".into(), reason: reason.into() }
}

/// Rebuilds the event from a sample's attachment and payload.
pub fn decode(attachment: Option<&ZBytes>, payload: Bytes) -> Result<SerializedEvent, CodecError> {
    let attachment = attachment.ok_or_else(|| malformed("no attachment: the sample was not published by a composable-rust bus"))?;
    let mut d = ZDeserializer::new(attachment);
    let pairs: Vec<(String, String)> = d
        .deserialize_iter::<(String, String)>()
        .map_err(|_| malformed("not a sequence of string pairs"))?
        .collect::<Result<_, _>>()
        .map_err(|_| malformed("not a sequence of string pairs"))?;
    if !d.done() {
        return Err(malformed("trailing bytes after the metadata pairs"));
    }
    let mut event_id = None;
    let mut event_type = None;
    let mut timestamp = None;
    let mut stream_id = None;
    let mut stream_version = None;
    let mut metadata = EventMetadata::now();
    for (name, value) in pairs {
        match name.as_str() {
            names::EVENT_ID => event_id = Some(Uuid::parse_str(&value).map_err(|e| malformed(format!("{}: {e}", names::EVENT_ID)))?),
            names::EVENT_TYPE => event_type = Some(value),
            names::TIMESTAMP_NS => {
                let ns: i64 = value.parse().map_err(|e| malformed(format!("{}: {e}", names::TIMESTAMP_NS)))?;
                timestamp = Some(DateTime::from_timestamp_nanos(ns));
            }
            names::STREAM_ID => stream_id = Some(StreamId::new(value).map_err(|e| malformed(format!("{}: {e}", names::STREAM_ID)))?),
            names::STREAM_VERSION => {
                stream_version = Some(Version(value.parse().map_err(|e| malformed(format!("{}: {e}", names::STREAM_VERSION)))?));
            }
            names::CORRELATION_ID => metadata.correlation_id = Some(value),
            names::CAUSATION_ID => metadata.causation_id = Some(value),
            other => {
                if let Some(header) = other.strip_prefix(names::HEADER_PREFIX) {
                    metadata.headers.insert(header.to_owned(), value);
                }
                // Unknown names are ignored: a newer publisher may add fields.
            }
        }
    }
    let event_id = event_id.ok_or_else(|| malformed(format!("missing {}", names::EVENT_ID)))?;
    let event_type = event_type.ok_or_else(|| malformed(format!("missing {}", names::EVENT_TYPE)))?;
    if let Some(t) = timestamp {
        metadata.timestamp = t;
    }
    Ok(SerializedEvent { event_id, event_type, stream_id, stream_version, data: payload, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let mut m = EventMetadata::now().with_correlation_id("order-1").with_causation_id("cmd-1");
        m.headers.insert("tenant".into(), "acme".into());
        let mut e = SerializedEvent::new("OrderPlaced.v1", Bytes::from_static(b"payload"), Some(m));
        e.stream_id = Some(StreamId::new("order-1").unwrap());
        e.stream_version = Some(Version(7));
        let back = decode(Some(&encode(&e)), e.data.clone()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn foreign_samples_are_typed_errors() {
        assert!(matches!(decode(None, Bytes::new()), Err(CodecError::Malformed { .. })));
        let junk = ZBytes::from(vec![0xff_u8, 0x01]);
        assert!(matches!(decode(Some(&junk), Bytes::new()), Err(CodecError::Malformed { .. })));
        let mut s = ZSerializer::new();
        s.serialize_iter([("cr-event-type", "X.v1")]);
        let err = decode(Some(&s.finish()), Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("missing cr-event-id"), "{err}");
    }
}
