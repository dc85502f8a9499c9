//! [`SerializedEvent`]: the unit that event stores persist and buses carry.
//!
//! The payload is a [`Bytes`], so fanning an event out to many subscribers shares one buffer instead of
//! copying it. The binary envelope ([`SerializedEvent::encode`]) is bincode with a format tag in front, and
//! decoding a malformed buffer returns a [`CodecError`], never panics.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::stream::{StreamId, Version};

/// Largest encoded envelope or payload accepted by the codec (16 MiB). A length prefix above this in a
/// malformed buffer is refused instead of allocating.
pub const MAX_ENCODED_EVENT_BYTES: usize = 16 * 1024 * 1024;

const ENVELOPE_TAG: &[u8; 4] = b"CRE1";

/// Why bytes could not be turned into an event or a payload (or back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a composable-rust event envelope (wrong tag): probably produced by another client.
    #[error("not a composable-rust event envelope (first bytes {prefix:02x?}): was it published by another client?")]
    NotAnEnvelope {
        /// Up to the first four bytes seen.
        prefix: Vec<u8>,
    },
    /// The envelope or payload bytes are malformed (truncated, wrong layout, too large).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded (`event envelope`, `payload of OrderPlaced.v1`, ...).
        what: String,
        /// The decoder's explanation.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("could not encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's explanation.
        reason: String,
    },
    /// The event type is not one this decoder knows.
    #[error("unknown event type {event_type:?}: add a decoder for it or ignore it explicitly")]
    UnknownEventType {
        /// The type found on the event.
        event_type: String,
    },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED_EVENT_BYTES>()
}

/// Encodes a payload value with bincode. Use it to build the `data` of a [`SerializedEvent`].
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Bytes, CodecError> {
    bincode::serde::encode_to_vec(value, bincode_config())
        .map(Bytes::from)
        .map_err(|e| CodecError::Encode { what: std::any::type_name::<T>().to_string(), reason: e.to_string() })
}

/// Decodes a payload written by [`encode_payload`]. Trailing bytes are an error (they signal a schema
/// mismatch).
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let malformed = |reason: String| CodecError::Malformed { what: format!("payload {}", std::any::type_name::<T>()), reason };
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(bytes, bincode_config()).map_err(|e| malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(malformed(format!("{} trailing bytes after the value", bytes.len() - read)));
    }
    Ok(value)
}

/// Correlation, causation and time of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Groups every event of one business process (e.g. the order id of a checkout).
    pub correlation_id: Option<String>,
    /// The id of the command or event that caused this event.
    pub causation_id: Option<String>,
    /// When the event was created.
    pub timestamp: DateTime<Utc>,
    /// Free-form headers carried end to end (buses map them to native headers where they can).
    pub headers: BTreeMap<String, String>,
}

impl EventMetadata {
    /// Metadata stamped now, with no correlation or causation.
    pub fn now() -> Self {
        Self { correlation_id: None, causation_id: None, timestamp: Utc::now(), headers: BTreeMap::new() }
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }
}

impl Default for EventMetadata {
    fn default() -> Self {
        Self::now()
    }
}

/// An event ready to be persisted or published: type, unique id, payload bytes, metadata, and (once
/// it came from a stream) the stream id and version.
#[derive(Clone, PartialEq, Eq)]
pub struct SerializedEvent {
    /// Unique id; stores and consumers de-duplicate by it.
    pub event_id: Uuid,
    /// Type with schema version, e.g. `OrderPlaced.v1`.
    pub event_type: String,
    /// The stream it belongs to, once appended.
    pub stream_id: Option<StreamId>,
    /// Its version in that stream, once appended.
    pub stream_version: Option<Version>,
    /// Encoded payload, shared (not copied) on fan-out.
    pub data: Bytes,
    /// Correlation, causation, time.
    pub metadata: EventMetadata,
}

impl SerializedEvent {
    /// A new event with a fresh id. `metadata: None` stamps the current time and nothing else.
    pub fn new(event_type: impl Into<String>, data: impl Into<Bytes>, metadata: Option<EventMetadata>) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: event_type.into(),
            stream_id: None,
            stream_version: None,
            data: data.into(),
            metadata: metadata.unwrap_or_default(),
        }
    }

    /// Encodes `payload` with [`encode_payload`] and wraps it.
    pub fn from_payload<T: Serialize>(event_type: impl Into<String>, payload: &T, metadata: Option<EventMetadata>) -> Result<Self, CodecError> {
        Ok(Self::new(event_type, encode_payload(payload)?, metadata))
    }

    /// Replaces the id, e.g. with one derived deterministically from a command id so that a retried
    /// append is recognised as the same event.
    #[must_use]
    pub fn with_event_id(mut self, id: Uuid) -> Self {
        self.event_id = id;
        self
    }

    /// The type without its schema version: `OrderPlaced` for `OrderPlaced.v1`.
    pub fn type_name(&self) -> &str {
        split_event_type(&self.event_type).0
    }

    /// The schema version in the type (`1` for `OrderPlaced.v1`), if it has one.
    pub fn schema_version(&self) -> Option<u32> {
        split_event_type(&self.event_type).1
    }

    /// Decodes the payload with [`decode_payload`].
    pub fn decode_data<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        decode_payload(&self.data).map_err(|e| match e {
            CodecError::Malformed { reason, .. } => CodecError::Malformed { what: format!("payload of {} {}", self.event_type, self.event_id), reason },
            other => other,
        })
    }

    /// Whether two events carry the same content (type and payload), whatever their metadata.
    pub fn same_content(&self, other: &SerializedEvent) -> bool {
        self.event_type == other.event_type && self.data == other.data
    }

    /// Encodes the whole event (id, type, stream position, payload, metadata) into one binary envelope,
    /// the form buses put on the wire.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let wire = WireEvent {
            event_id: *self.event_id.as_bytes(),
            event_type: &self.event_type,
            stream_id: self.stream_id.as_ref().map(StreamId::as_str),
            stream_version: self.stream_version.map(|v| v.0),
            data: &self.data,
            correlation_id: self.metadata.correlation_id.as_deref(),
            causation_id: self.metadata.causation_id.as_deref(),
            timestamp_micros: self.metadata.timestamp.timestamp_micros(),
            headers: &self.metadata.headers,
        };
        let mut out = Vec::with_capacity(self.data.len() + self.event_type.len() + 64);
        out.extend_from_slice(ENVELOPE_TAG);
        bincode::serde::encode_into_std_write(&wire, &mut out, bincode_config())
            .map_err(|e| CodecError::Encode { what: "event envelope".into(), reason: e.to_string() })?;
        Ok(Bytes::from(out))
    }

    /// Decodes an envelope written by [`SerializedEvent::encode`]. Any malformed input, including
    /// bytes from another producer, gives a [`CodecError`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let Some(body) = bytes.strip_prefix(ENVELOPE_TAG.as_slice()) else {
            return Err(CodecError::NotAnEnvelope { prefix: bytes.iter().take(4).copied().collect() });
        };
        let malformed = |reason: String| CodecError::Malformed { what: "event envelope".into(), reason };
        let (wire, read): (OwnedWireEvent, usize) = bincode::serde::decode_from_slice(body, bincode_config()).map_err(|e| malformed(e.to_string()))?;
        if read != body.len() {
            return Err(malformed(format!("{} trailing bytes", body.len() - read)));
        }
        let stream_id = wire.stream_id.map(StreamId::new).transpose().map_err(|e| malformed(e.to_string()))?;
        let timestamp = DateTime::<Utc>::from_timestamp_micros(wire.timestamp_micros)
            .ok_or_else(|| malformed(format!("timestamp {} µs is out of range", wire.timestamp_micros)))?;
        Ok(Self {
            event_id: Uuid::from_bytes(wire.event_id),
            event_type: wire.event_type,
            stream_id,
            stream_version: wire.stream_version.map(Version),
            data: Bytes::from(wire.data),
            metadata: EventMetadata { correlation_id: wire.correlation_id, causation_id: wire.causation_id, timestamp, headers: wire.headers },
        })
    }
}

impl fmt::Debug for SerializedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerializedEvent")
            .field("event_type", &self.event_type)
            .field("event_id", &self.event_id)
            .field("stream_id", &self.stream_id)
            .field("stream_version", &self.stream_version)
            .field("data_len", &self.data.len())
            .field("correlation_id", &self.metadata.correlation_id)
            .field("causation_id", &self.metadata.causation_id)
            .finish_non_exhaustive()
    }
}

fn split_event_type(event_type: &str) -> (&str, Option<u32>) {
    if let Some((name, version)) = event_type.rsplit_once(".v") {
        if let Ok(v) = version.parse::<u32>() {
            return (name, Some(v));
        }
    }
    (event_type, None)
}

#[derive(Serialize)]
struct WireEvent<'a> {
    event_id: [u8; 16],
    event_type: &'a str,
    stream_id: Option<&'a str>,
    stream_version: Option<u64>,
    #[serde(with = "serde_bytes_ref")]
    data: &'a [u8],
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    timestamp_micros: i64,
    headers: &'a BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OwnedWireEvent {
    event_id: [u8; 16],
    event_type: String,
    stream_id: Option<String>,
    stream_version: Option<u64>,
    data: Vec<u8>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    timestamp_micros: i64,
    headers: BTreeMap<String, String>,
}

mod serde_bytes_ref {
    // A `&[u8]` serialises element by element by default; as bytes it is one length and a memcpy.
    // bincode writes both as a length followed by raw bytes, so `Vec<u8>` decodes either form.
    pub fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SerializedEvent {
        let mut e = SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], Some(EventMetadata::now().with_correlation_id("order-1")));
        e.stream_id = Some(StreamId::new("order-1").unwrap());
        e.stream_version = Some(Version(3));
        e.metadata.headers.insert("tenant".into(), "acme".into());
        e
    }

    #[test]
    fn envelope_round_trips() {
        let e = sample();
        let bytes = e.encode().unwrap();
        let back = SerializedEvent::decode(&bytes).unwrap();
        assert_eq!(back, SerializedEvent { metadata: EventMetadata { timestamp: back.metadata.timestamp, ..e.metadata.clone() }, ..e.clone() });
        assert_eq!(back.metadata.timestamp.timestamp_micros(), e.metadata.timestamp.timestamp_micros());
    }

    #[test]
    fn foreign_and_truncated_bytes_are_typed_errors() {
        assert!(matches!(SerializedEvent::decode(b"{\"json\":1}"), Err(CodecError::NotAnEnvelope { .. })));
        let bytes = sample().encode().unwrap();
        for cut in 4..bytes.len() {
            assert!(matches!(SerializedEvent::decode(&bytes[..cut]), Err(CodecError::Malformed { .. })), "cut at {cut}");
        }
    }

    #[test]
    fn event_type_splits_into_name_and_schema_version() {
        let e = SerializedEvent::new("OrderPlaced.v12", Bytes::new(), None);
        assert_eq!(e.type_name(), "OrderPlaced");
        assert_eq!(e.schema_version(), Some(12));
        let e = SerializedEvent::new("Legacy", Bytes::new(), None);
        assert_eq!((e.type_name(), e.schema_version()), ("Legacy", None));
    }

    #[test]
    fn payload_codec_rejects_trailing_bytes() {
        let mut bytes = encode_payload(&(7u32, "x".to_string())).unwrap().to_vec();
        assert_eq!(decode_payload::<(u32, String)>(&bytes).unwrap(), (7, "x".to_string()));
        bytes.push(0);
        assert!(matches!(decode_payload::<(u32, String)>(&bytes), Err(CodecError::Malformed { .. })));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256), tagged in proptest::bool::ANY) {
            if tagged { let mut v = ENVELOPE_TAG.to_vec(); v.append(&mut bytes); bytes = v; }
            let _ = SerializedEvent::decode(&bytes);
        }

        #[test]
        fn any_payload_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512), ty in "[A-Za-z]{1,12}\\.v[0-9]") {
            let e = SerializedEvent::new(ty, data, None);
            let back = SerializedEvent::decode(&e.encode().unwrap()).unwrap();
            proptest::prop_assert_eq!(back.data, e.data);
            proptest::prop_assert_eq!(back.event_id, e.event_id);
        }
    }
}
