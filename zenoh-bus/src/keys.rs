//! The key-expression layout of the Zenoh bus: where an event is put and what a subscription pattern
//! becomes.
//!
//! An event published to topic `T` is put under
//!
//! ```text
//! events/{T}/{stream_id}/{stream_version}
//! ```
//!
//! The topic is one chunk, kept verbatim (topics never contain `/`): the topic plays the part of the
//! aggregate type, so name topics after aggregates (`Order`, `payment.events`) to filter by type with
//! `events/Order/**`, by instance with `events/Order/order-42/**`, or take everything with
//! `events/**`. The stream id is percent-encoded where Zenoh reserves characters (`/ * $ ? # %` and
//! anything outside printable ASCII); an event that was never appended to a stream goes under
//! `events/{T}/_/{event_id}`. When the event carries the [`SESSION_HEADER`] header, it is also put
//! under `sessions/{session_id}/events/{T}/{stream_id}/{stream_version}` for session-scoped feeds.
//!
//! A subscription pattern in the shared syntax becomes `events/{chunk}/**`, where `*` and `>` turn
//! into Zenoh's in-chunk wildcard `$*`: Zenoh then filters by topic prefix on the publishing side and
//! the bus applies the exact pattern rule (one segment for `*`, one or more for `>`) on receipt, so
//! patterns mean the same here as on every other bus. A pattern containing `/` is taken as a native
//! Zenoh key expression and used as it is.

use composable_rust_core::{SerializedEvent, Topic, TopicPattern};
use std::fmt::Write;

/// The root chunk of every event key.
pub const EVENTS_ROOT: &str = "events";

/// The root chunk of session-scoped keys.
pub const SESSIONS_ROOT: &str = "sessions";

/// Metadata header naming the session an event belongs to; such events are also put under
/// `sessions/{session_id}/events/...`.
pub const SESSION_HEADER: &str = composable_rust_core::event_headers::SESSION;

/// Stream chunk used for an event that has no stream.
pub const NO_STREAM: &str = "_";

/// Characters kept as they are in a key chunk; everything else is `%XX`-encoded.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@' | b'+' | b'=' | b',' | b'!' | b'&' | b'\'' | b'(' | b')' | b';')
}

/// Percent-encodes `value` so that it is one valid Zenoh chunk with no wildcard meaning.
pub fn encode_chunk(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Reverses [`encode_chunk`]; `None` if the chunk is not a valid encoding.
pub fn decode_chunk(chunk: &str) -> Option<String> {
    if !chunk.contains('%') {
        return Some(chunk.to_owned());
    }
    let bytes = chunk.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = chunk.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn push_event_suffix(out: &mut String, topic: &Topic, event: &SerializedEvent) {
    out.push_str(topic.as_str());
    out.push('/');
    match (&event.stream_id, event.stream_version) {
        (Some(stream), Some(version)) => {
            encode_chunk(stream.as_str(), out);
            let _ = write!(out, "/{}", version.0);
        }
        (Some(stream), None) => {
            encode_chunk(stream.as_str(), out);
            let _ = write!(out, "/{}", event.event_id);
        }
        _ => {
            let _ = write!(out, "{NO_STREAM}/{}", event.event_id);
        }
    }
}

/// `events/{topic}/{stream}/{version}`: the key `event` is put under.
pub fn event_key(topic: &Topic, event: &SerializedEvent) -> String {
    let mut out = String::with_capacity(64);
    out.push_str(EVENTS_ROOT);
    out.push('/');
    push_event_suffix(&mut out, topic, event);
    out
}

/// `sessions/{session}/events/{topic}/{stream}/{version}`: the session-scoped copy of the key.
pub fn session_event_key(session_id: &str, topic: &Topic, event: &SerializedEvent) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(SESSIONS_ROOT);
    out.push('/');
    encode_chunk(session_id, &mut out);
    out.push('/');
    out.push_str(EVENTS_ROOT);
    out.push('/');
    push_event_suffix(&mut out, topic, event);
    out
}

/// `sessions/{session}/**`: every event of one session.
pub fn session_key_expr(session_id: &str) -> String {
    let mut out = format!("{SESSIONS_ROOT}/");
    encode_chunk(session_id, &mut out);
    out.push_str("/**");
    out
}

/// The key expression a topic pattern subscribes to (a superset that the bus narrows on receipt).
pub fn pattern_key_expr(pattern: &TopicPattern) -> String {
    let chunk: String = pattern.as_str().split('.').map(|seg| if seg == "*" || seg == ">" { "$*" } else { seg }).collect::<Vec<_>>().join(".");
    let chunk = if chunk == "$*" { "*".to_owned() } else { chunk };
    format!("{EVENTS_ROOT}/{chunk}/**")
}

/// What a key says about the event under it: its topic chunk and stream chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// The topic chunk.
    pub topic: &'a str,
    /// The stream chunk (still encoded), if present.
    pub stream: Option<&'a str>,
}

/// Splits `events/{topic}/...` or `sessions/{id}/events/{topic}/...`; `None` for keys outside the
/// layout.
pub fn parse_key(key: &str) -> Option<KeyParts<'_>> {
    let mut chunks = key.split('/');
    let mut root = chunks.next()?;
    if root == SESSIONS_ROOT {
        chunks.next()?;
        root = chunks.next()?;
    }
    if root != EVENTS_ROOT {
        return None;
    }
    let topic = chunks.next().filter(|t| !t.is_empty())?;
    Some(KeyParts { topic, stream: chunks.next() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_core::{StreamId, Version};

    fn stream_event(stream: &str, version: u64) -> SerializedEvent {
        let mut e = SerializedEvent::new("OrderPlaced.v1", bytes::Bytes::from_static(b"x"), None);
        e.stream_id = Some(StreamId::new(stream).unwrap());
        e.stream_version = Some(Version(version));
        e
    }

    #[test]
    fn event_keys_follow_the_documented_layout() {
        let topic = Topic::new("Order").unwrap();
        assert_eq!(event_key(&topic, &stream_event("order-42", 3)), "events/Order/order-42/3");
        let loose = SerializedEvent::new("Ping.v1", bytes::Bytes::new(), None);
        assert_eq!(event_key(&topic, &loose), format!("events/Order/_/{}", loose.event_id));
        assert_eq!(session_event_key("s 1", &topic, &stream_event("a/b*c", 1)), "sessions/s%201/events/Order/a%2Fb%2Ac/1");
    }

    #[test]
    fn chunks_round_trip_and_never_contain_reserved_characters() {
        for id in ["order-42", "a/b", "**", "$*x", "50%", "é?#", "  spaced  "] {
            let mut out = String::new();
            encode_chunk(id, &mut out);
            assert!(!out.contains(['/', '*', '$', '?', '#', ' ']), "{out}");
            assert_eq!(decode_chunk(&out).as_deref(), Some(id));
        }
        assert_eq!(decode_chunk("%zz"), None);
        assert_eq!(decode_chunk("%4"), None);
    }

    #[test]
    fn patterns_become_covering_key_expressions() {
        let ke = |p: &str| pattern_key_expr(&TopicPattern::new(p).unwrap());
        assert_eq!(ke("order.events"), "events/order.events/**");
        assert_eq!(ke("shop.*.events"), "events/shop.$*.events/**");
        assert_eq!(ke("shop.>"), "events/shop.$*/**");
        assert_eq!(ke(">"), "events/*/**");
        assert_eq!(ke("*"), "events/*/**");
    }

    #[test]
    fn keys_are_parsed_back() {
        assert_eq!(parse_key("events/Order/order-42/3"), Some(KeyParts { topic: "Order", stream: Some("order-42") }));
        assert_eq!(parse_key("sessions/s1/events/Order/o/1"), Some(KeyParts { topic: "Order", stream: Some("o") }));
        assert_eq!(parse_key("other/Order"), None);
        assert_eq!(parse_key("events"), None);
    }
}
