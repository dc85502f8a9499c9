//! What one stored event looks like on an SSE feed, encoded once per event and shared by every
//! client (a client's bytes are a reference-counted slice, never a copy per client).
//!
//! ```text
//! event: OrderPlaced.v1
//! id: 17
//! data: {"position":17,"event_id":"…","event_type":"OrderPlaced.v1","topic":"order.OrderPlaced","stream_id":"order-42","version":1,"timestamp":"2026-12-01T15:06:00.123456Z","correlation_id":"order-42","causation_id":null,"payload":"…"}
//!
//! ```

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use composable_rust_core::{GlobalPosition, RecordedEvent, SerializedEvent, StreamId};
use serde::Serialize;

use crate::session::SESSION_HEADER;
use crate::topic_of::TopicOf;

/// Turns an event's payload bytes into the JSON of its `payload` field; `None` leaves the field out.
/// Cheap to clone. The default, [`PayloadDecoder::base64`], sends the bytes as a base64 string
/// (standard alphabet, padded), since the store does not know the payload's format.
#[derive(Clone)]
pub struct PayloadDecoder(Arc<DecodeFn>);

type DecodeFn = dyn Fn(&SerializedEvent) -> Option<serde_json::Value> + Send + Sync;

impl PayloadDecoder {
    /// A user decoder, typically one that matches on `event.event_type` and decodes the payload
    /// with `decode_data` into a type that implements `Serialize`. Returning `None` omits the field.
    pub fn new(f: impl Fn(&SerializedEvent) -> Option<serde_json::Value> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The payload as a base64 string (the default).
    pub fn base64() -> Self {
        Self::new(|e| Some(serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&e.data))))
    }

    /// The payload parsed as JSON when it is JSON, else as a base64 string.
    pub fn json_or_base64() -> Self {
        Self::new(|e| {
            Some(serde_json::from_slice(&e.data).unwrap_or_else(|_| serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&e.data))))
        })
    }

    /// No `payload` field at all (feeds that only announce that something happened).
    pub fn omit() -> Self {
        Self::new(|_| None)
    }

    /// The `payload` field of `event`.
    pub fn decode(&self, event: &SerializedEvent) -> Option<serde_json::Value> {
        (self.0)(event)
    }
}

impl Default for PayloadDecoder {
    /// [`PayloadDecoder::base64`].
    fn default() -> Self {
        Self::base64()
    }
}

impl fmt::Debug for PayloadDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PayloadDecoder(..)")
    }
}

/// The JSON of an event's `data:` line.
#[derive(Serialize)]
struct EventJson<'a> {
    position: u64,
    event_id: String,
    event_type: &'a str,
    topic: &'a str,
    stream_id: Option<&'a str>,
    version: Option<u64>,
    timestamp: String,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
}

/// One event ready for every client: what filters look at, and its encoded SSE frame.
#[derive(Debug, Clone)]
pub(crate) struct FeedEvent {
    pub(crate) position: GlobalPosition,
    pub(crate) topic: Box<str>,
    pub(crate) stream_id: Option<StreamId>,
    pub(crate) session: Option<Box<str>>,
    pub(crate) frame: Bytes,
}

/// Events the tail read at once, their frames concatenated in one shared buffer.
#[derive(Debug)]
pub(crate) struct FeedBatch {
    pub(crate) events: Vec<FeedEvent>,
    /// Every frame of the batch, in order (what a client without a filter is sent).
    pub(crate) frames: Bytes,
    /// Whether an event of the batch belongs to a session.
    pub(crate) any_session: bool,
}

impl FeedBatch {
    pub(crate) fn first_position(&self) -> GlobalPosition {
        self.events.first().map_or(GlobalPosition(0), |e| e.position)
    }

    pub(crate) fn last_position(&self) -> GlobalPosition {
        self.events.last().map_or(GlobalPosition(0), |e| e.position)
    }
}

/// Encodes stored events into frames (shared by the tail and the catch-up reads, so both send the
/// very same bytes for an event).
#[derive(Debug, Clone, Default)]
pub(crate) struct Encoder {
    pub(crate) topic_of: TopicOf,
    pub(crate) payload: PayloadDecoder,
}

impl Encoder {
    /// Encodes `events` into one batch.
    pub(crate) fn batch(&self, events: &[RecordedEvent]) -> FeedBatch {
        let mut buf = BytesMut::with_capacity(events.iter().map(|e| 256 + e.event.data.len() * 4 / 3).sum());
        let mut spans = Vec::with_capacity(events.len());
        for e in events {
            let start = buf.len();
            let topic = self.topic_of.topic(e);
            self.write_frame(&mut buf, e, &topic);
            spans.push((start, buf.len(), topic));
        }
        let frames = buf.freeze();
        let events = events
            .iter()
            .zip(spans)
            .map(|(e, (start, end, topic))| FeedEvent {
                position: e.position,
                topic: topic.into_boxed_str(),
                stream_id: e.event.stream_id.clone(),
                session: e.event.metadata.headers.get(SESSION_HEADER).map(|s| s.clone().into_boxed_str()),
                frame: frames.slice(start..end),
            })
            .collect::<Vec<FeedEvent>>();
        let any_session = events.iter().any(|e| e.session.is_some());
        FeedBatch { events, frames, any_session }
    }

    fn write_frame(&self, buf: &mut BytesMut, e: &RecordedEvent, topic: &str) {
        let ev = &e.event;
        let json = EventJson {
            position: e.position.0,
            event_id: ev.event_id.to_string(),
            event_type: &ev.event_type,
            topic,
            stream_id: ev.stream_id.as_ref().map(StreamId::as_str),
            version: ev.stream_version.map(|v| v.0),
            timestamp: ev.metadata.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            correlation_id: ev.metadata.correlation_id.as_deref(),
            causation_id: ev.metadata.causation_id.as_deref(),
            payload: self.payload.decode(ev),
        };
        buf.put_slice(b"event: ");
        put_field_value(buf, &ev.event_type);
        buf.put_slice(b"\nid: ");
        buf.put_slice(e.position.0.to_string().as_bytes());
        buf.put_slice(b"\ndata: ");
        // Compact JSON never holds a raw line break (they are escaped in strings), so one `data:`
        // line carries it whole. Serialising these plain types cannot fail; if a user decoder's
        // value ever did, the event still goes out, without its payload.
        let mut writer = buf.writer();
        if serde_json::to_writer(&mut writer, &json).is_err() {
            tracing::warn!(position = e.position.0, "feed: could not encode the event as JSON; sent without its payload");
            let mut json = json;
            json.payload = None;
            let _ = serde_json::to_writer(&mut writer, &json);
        }
        let buf = writer.into_inner();
        buf.put_slice(b"\n\n");
    }
}

/// Writes `value` as an SSE field value: a line break would end the field, so CR and LF become a
/// space (event types never hold one in practice).
pub(crate) fn put_field_value(buf: &mut BytesMut, value: &str) {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        buf.put_slice(value.replace(['\r', '\n'], " ").as_bytes());
    } else {
        buf.put_slice(value.as_bytes());
    }
}

/// `retry: <ms>\nid: <position>\n\n`: no event is dispatched (no data), but an `EventSource` takes
/// the id as its last event id and the retry as its reconnection delay.
pub(crate) fn preamble(retry_ms: u128, position: GlobalPosition) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\nid: {}\n\n", position.0))
}

/// The event sent to a client that fell behind: its id is the position to resume after.
pub(crate) fn reset(resume_after: GlobalPosition, last_event_id: Option<GlobalPosition>, reason: &str) -> Bytes {
    let data = serde_json::json!({
        "reason": reason,
        "resume_after": resume_after.0,
        "last_event_id": last_event_id.map(|p| p.0),
    });
    Bytes::from(format!("event: {}\nid: {}\ndata: {data}\n\n", crate::feed::RESET_EVENT, resume_after.0))
}

/// A keep-alive comment.
pub(crate) const KEEP_ALIVE: &[u8] = b":\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_core::{EventMetadata, Version};

    fn recorded(position: u64, stream: &str, event_type: &str, data: &'static [u8]) -> RecordedEvent {
        let mut m = EventMetadata::now().with_correlation_id("c-1");
        m.headers.insert(SESSION_HEADER.to_owned(), "alice".to_owned());
        let mut event = SerializedEvent::new(event_type, Bytes::from_static(data), Some(m));
        event.stream_id = Some(StreamId::new(stream).unwrap());
        event.stream_version = Some(Version(3));
        RecordedEvent { position: GlobalPosition(position), event }
    }

    #[test]
    fn frames_carry_type_position_and_json() {
        let events = [recorded(7, "order-1", "OrderPlaced.v1", b"{\"total\":5}"), recorded(9, "payment-1", "PaymentCaptured.v1", b"\x00\x01")];
        let batch = Encoder::default().batch(&events);
        assert_eq!((batch.first_position(), batch.last_position()), (GlobalPosition(7), GlobalPosition(9)));
        let concatenated: Vec<u8> = batch.events.iter().flat_map(|e| e.frame.to_vec()).collect();
        assert_eq!(concatenated, batch.frames.to_vec(), "per-event frames are slices of the batch's buffer");
        let first = std::str::from_utf8(&batch.events[0].frame).unwrap();
        let mut lines = first.lines();
        assert_eq!(lines.next(), Some("event: OrderPlaced.v1"));
        assert_eq!(lines.next(), Some("id: 7"));
        let data: serde_json::Value = serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert!(first.ends_with("\n\n"));
        assert_eq!(data["position"], 7);
        assert_eq!(data["event_id"], events[0].event.event_id.to_string());
        assert_eq!(data["stream_id"], "order-1");
        assert_eq!(data["version"], 3);
        assert_eq!(data["topic"], "order.OrderPlaced");
        assert_eq!(data["correlation_id"], "c-1");
        assert_eq!(data["payload"], "eyJ0b3RhbCI6NX0=");
        assert_eq!(batch.events[0].session.as_deref(), Some("alice"));
        assert!(batch.any_session);
        assert_eq!(&*batch.events[1].topic, "payment.PaymentCaptured");
    }

    #[test]
    fn payload_decoders() {
        let e = recorded(1, "order-1", "OrderPlaced.v1", b"{\"total\":5}");
        assert_eq!(PayloadDecoder::json_or_base64().decode(&e.event), Some(serde_json::json!({"total": 5})));
        assert_eq!(PayloadDecoder::omit().decode(&e.event), None);
        let binary = recorded(1, "order-1", "OrderPlaced.v1", b"\xff");
        assert_eq!(PayloadDecoder::json_or_base64().decode(&binary.event), Some(serde_json::json!("/w==")));
        let enc = Encoder { payload: PayloadDecoder::omit(), ..Encoder::default() };
        let frame = enc.batch(&[e]).frames;
        assert!(!std::str::from_utf8(&frame).unwrap().contains("payload"));
    }

    #[test]
    fn line_breaks_cannot_end_a_field_early() {
        let e = recorded(1, "order-1", "Evil\ntype\r", b"");
        let frame = Encoder::default().batch(&[e]).frames;
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.starts_with("event: Evil type \nid: 1\ndata: {"), "{text}");
        assert_eq!(text.matches("\n\n").count(), 1);
    }

    #[test]
    fn reset_and_preamble() {
        let r = reset(GlobalPosition(12), Some(GlobalPosition(10)), "lagged");
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("event: reset\nid: 12\ndata: {"), "{text}");
        assert!(text.contains("\"resume_after\":12") && text.contains("\"last_event_id\":10"), "{text}");
        assert_eq!(&preamble(1000, GlobalPosition(5))[..], b"retry: 1000\nid: 5\n\n");
    }
}
