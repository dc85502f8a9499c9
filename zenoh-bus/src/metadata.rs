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

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use composable_rust_core::{CodecError, EventMetadata, SerializedEvent, StreamId, Version};
use uuid::Uuid;
use zenoh::bytes::ZBytes;

/// Attachment names: the same as every header-carrying bus uses.
pub use composable_rust_core::event_headers as names;
use composable_rust_core::event_headers::timestamp_ns;

// The attachment is written and read here rather than through zenoh-ext's generic serializer: that
// one builds a `String` per name and value on every sample, which cost more than Zenoh's own routing
// (measured in benches/zenoh_bus.rs). The format is the same (checked against zenoh-ext in the tests):
// a LEB128 count of pairs, then for each string a LEB128 byte length and the UTF-8 bytes.

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = u8::try_from(n & 0x7f).unwrap_or_default();
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes the decimal form of `n` as a string, without an intermediate allocation.
fn put_decimal(out: &mut Vec<u8>, negative: bool, magnitude: u64) {
    let mut digits = [0u8; 21];
    let mut at = digits.len();
    let mut rest = magnitude;
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(rest % 10).unwrap_or_default();
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        digits[at] = b'-';
    }
    put_varint(out, digits.len() - at);
    out.extend_from_slice(&digits[at..]);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// **Escape hatch** (returns a zenoh type, so it ties your code to the zenoh version this crate
/// depends on): the attachment of `event`, everything but the payload, for a raw `put` that other
/// buses read as an event.
pub fn raw_encode(event: &SerializedEvent) -> ZBytes {
    let m = &event.metadata;
    let mut id_buf = Uuid::encode_buffer();
    let id = event.event_id.as_hyphenated().encode_lower(&mut id_buf);
    let mut pairs = 3 + m.headers.len();
    pairs += usize::from(event.stream_id.is_some()) + usize::from(event.stream_version.is_some());
    pairs += usize::from(m.correlation_id.is_some()) + usize::from(m.causation_id.is_some());
    let mut out = Vec::with_capacity(192 + event.event_type.len());
    put_varint(&mut out, pairs);
    put_str(&mut out, names::EVENT_ID);
    put_str(&mut out, id);
    put_str(&mut out, names::EVENT_TYPE);
    put_str(&mut out, &event.event_type);
    put_str(&mut out, names::TIMESTAMP_NS);
    let ns = timestamp_ns(&m.timestamp);
    put_decimal(&mut out, ns < 0, ns.unsigned_abs());
    if let Some(stream) = &event.stream_id {
        put_str(&mut out, names::STREAM_ID);
        put_str(&mut out, stream.as_str());
    }
    if let Some(v) = event.stream_version {
        put_str(&mut out, names::STREAM_VERSION);
        put_decimal(&mut out, false, v.0);
    }
    if let Some(c) = &m.correlation_id {
        put_str(&mut out, names::CORRELATION_ID);
        put_str(&mut out, c);
    }
    if let Some(c) = &m.causation_id {
        put_str(&mut out, names::CAUSATION_ID);
        put_str(&mut out, c);
    }
    for (name, value) in &m.headers {
        put_varint(&mut out, names::HEADER_PREFIX.len() + name.len());
        out.extend_from_slice(names::HEADER_PREFIX.as_bytes());
        out.extend_from_slice(name.as_bytes());
        put_str(&mut out, value);
    }
    ZBytes::from(out)
}

fn malformed(reason: impl Into<String>) -> CodecError {
    CodecError::Malformed { what: "zenoh sample attachment".into(), reason: reason.into() }
}

/// Reads the attachment's strings without copying them.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<usize, CodecError> {
        let mut n: u64 = 0;
        for (i, &byte) in self.bytes.iter().enumerate().take(10) {
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return usize::try_from(n).map_err(|_| malformed("length out of range"));
            }
        }
        Err(malformed("truncated or overlong length"))
    }

    /// The next string's bytes; names are matched as bytes, only kept values pay for UTF-8 checks.
    fn raw_str(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.varint()?;
        if len > self.bytes.len() {
            return Err(malformed("a string runs past the end"));
        }
        let (s, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(s)
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, CodecError> {
    std::str::from_utf8(bytes).map_err(|_| malformed("a string is not UTF-8"))
}

/// **Escape hatch** (takes a zenoh type, so it ties your code to the zenoh version this crate
/// depends on): rebuilds the event from a raw sample's attachment and payload.
pub fn raw_decode(attachment: Option<&ZBytes>, payload: Bytes) -> Result<SerializedEvent, CodecError> {
    let attachment = attachment.ok_or_else(|| malformed("no attachment: the sample was not published by a composable-rust bus"))?;
    let bytes = attachment.to_bytes();
    let mut r = Reader { bytes: &bytes };
    let pairs = r.varint()?;
    let mut event_id = None;
    let mut event_type = None;
    let mut stream_id = None;
    let mut stream_version = None;
    let mut metadata = EventMetadata { correlation_id: None, causation_id: None, timestamp: DateTime::UNIX_EPOCH, headers: BTreeMap::new() };
    let mut timestamp = None;
    for _ in 0..pairs {
        let (name, value) = (r.raw_str()?, r.raw_str()?);
        let value = utf8(value)?;
        match name {
            b"cr-event-id" => event_id = Some(Uuid::parse_str(value).map_err(|e| malformed(format!("{}: {e}", names::EVENT_ID)))?),
            b"cr-event-type" => event_type = Some(value.to_owned()),
            b"cr-timestamp-ns" => {
                let ns: i64 = value.parse().map_err(|e| malformed(format!("{}: {e}", names::TIMESTAMP_NS)))?;
                timestamp = Some(DateTime::from_timestamp_nanos(ns));
            }
            b"cr-stream-id" => stream_id = Some(StreamId::new(value).map_err(|e| malformed(format!("{}: {e}", names::STREAM_ID)))?),
            b"cr-stream-version" => {
                stream_version = Some(Version(value.parse().map_err(|e| malformed(format!("{}: {e}", names::STREAM_VERSION)))?));
            }
            b"cr-correlation-id" => metadata.correlation_id = Some(value.to_owned()),
            b"cr-causation-id" => metadata.causation_id = Some(value.to_owned()),
            other => {
                if let Some(header) = other.strip_prefix(names::HEADER_PREFIX.as_bytes()) {
                    metadata.headers.insert(utf8(header)?.to_owned(), value.to_owned());
                }
                // Unknown names are ignored: a newer publisher may add fields.
            }
        }
    }
    if !r.bytes.is_empty() {
        return Err(malformed("trailing bytes after the metadata pairs"));
    }
    let event_id = event_id.ok_or_else(|| malformed(format!("missing {}", names::EVENT_ID)))?;
    let event_type = event_type.ok_or_else(|| malformed(format!("missing {}", names::EVENT_TYPE)))?;
    metadata.timestamp = timestamp.unwrap_or_else(Utc::now);
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
        let back = raw_decode(Some(&raw_encode(&e)), e.data.clone()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_attachment_is_zenoh_ext_serialization_of_string_pairs() {
        let mut m = EventMetadata::now().with_causation_id("c".repeat(300));
        m.headers.insert("h".into(), "v".into());
        let e = SerializedEvent::new("T.v1", Bytes::new(), Some(m));
        let pairs: std::collections::HashMap<String, String> = zenoh_ext::z_deserialize(&raw_encode(&e)).unwrap();
        assert_eq!(pairs[names::EVENT_ID], e.event_id.to_string());
        assert_eq!(pairs[names::CAUSATION_ID], "c".repeat(300), "lengths above 127 take two LEB128 bytes");
        assert_eq!(pairs["cr-header-h"], "v");
        let written = zenoh_ext::z_serialize(&pairs.into_iter().collect::<Vec<(String, String)>>());
        assert_eq!(raw_decode(Some(&written), Bytes::new()).unwrap(), e);
    }

    #[test]
    fn byte_names_match_the_published_names() {
        let names =
            [names::EVENT_ID, names::EVENT_TYPE, names::TIMESTAMP_NS, names::STREAM_ID, names::STREAM_VERSION, names::CORRELATION_ID, names::CAUSATION_ID];
        let bytes: [&[u8]; 7] =
            [b"cr-event-id", b"cr-event-type", b"cr-timestamp-ns", b"cr-stream-id", b"cr-stream-version", b"cr-correlation-id", b"cr-causation-id"];
        for (n, b) in names.iter().zip(bytes) {
            assert_eq!(n.as_bytes(), b);
        }
    }

    #[test]
    fn decimals_are_written_like_to_string() {
        for n in [0_i128, 7, 10, -1, -1_700_000_000_000_000_000, i128::from(i64::MIN), i128::from(u64::MAX)] {
            let mut out = Vec::new();
            put_decimal(&mut out, n < 0, u64::try_from(n.unsigned_abs()).unwrap());
            let mut expected = Vec::new();
            put_str(&mut expected, &n.to_string());
            assert_eq!(out, expected, "{n}");
        }
    }

    #[test]
    fn truncated_attachments_are_errors_not_panics() {
        let full = raw_encode(&SerializedEvent::new("T.v1", Bytes::new(), None)).to_bytes().into_owned();
        for cut in 0..full.len() {
            let err = raw_decode(Some(&ZBytes::from(full[..cut].to_vec())), Bytes::new());
            assert!(err.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn foreign_samples_are_typed_errors() {
        assert!(matches!(raw_decode(None, Bytes::new()), Err(CodecError::Malformed { .. })));
        let junk = ZBytes::from(vec![0xff_u8, 0x01]);
        assert!(matches!(raw_decode(Some(&junk), Bytes::new()), Err(CodecError::Malformed { .. })));
        let only_type = zenoh_ext::z_serialize(&vec![("cr-event-type".to_owned(), "X.v1".to_owned())]);
        let err = raw_decode(Some(&only_type), Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("missing cr-event-id"), "{err}");
    }
}
