//! Topic names and subscription patterns, with one meaning on every bus.
//!
//! A topic is one or more dot-separated segments of ASCII letters, digits, `_` and `-`
//! (`order-events`, `shop.order.events`), at most [`MAX_TOPIC_LEN`] bytes (Kafka's limit).
//! A pattern is a topic whose segments may also be `*` (exactly one segment) or, as the last segment
//! only, `>` (one or more remaining segments), as in NATS: `shop.*.events` matches
//! `shop.order.events`; `shop.>` matches `shop.order` and `shop.order.events` but not `shop`.

use std::fmt;
use std::sync::Arc;

/// Longest topic accepted (Kafka's limit, the strictest of the supported buses).
pub const MAX_TOPIC_LEN: usize = 249;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty topic.
    #[error("topic is empty: use dot-separated names such as `order.events`")]
    Empty,
    /// Too long.
    #[error("topic {topic:?} is {len} bytes, the limit is {MAX_TOPIC_LEN}")]
    TooLong {
        /// The refused topic.
        topic: String,
        /// Its length.
        len: usize,
    },
    /// A segment is empty (`a..b`, leading or trailing dot).
    #[error("topic {topic:?} has an empty segment: segments are separated by single dots")]
    EmptySegment {
        /// The refused topic.
        topic: String,
    },
    /// A segment holds a character outside `[A-Za-z0-9_-]`.
    #[error("topic {topic:?} has invalid character {ch:?}: use ASCII letters, digits, `_` and `-`")]
    InvalidCharacter {
        /// The refused topic.
        topic: String,
        /// The first offending character.
        ch: char,
    },
    /// A wildcard was used where only a concrete topic is allowed (e.g. in `publish`).
    #[error("topic {topic:?} contains a wildcard: publish to a concrete topic; wildcards are for subscriptions")]
    WildcardInTopic {
        /// The refused topic.
        topic: String,
    },
    /// `>` somewhere other than the last segment, or a wildcard mixed with other characters.
    #[error("pattern {pattern:?} is invalid: `*` must be a whole segment and `>` a whole, last segment")]
    MisplacedWildcard {
        /// The refused pattern.
        pattern: String,
    },
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { topic: s.to_string(), len: s.len() });
    }
    Ok(())
}

fn check_literal_segment(whole: &str, seg: &str) -> Result<(), TopicError> {
    if seg.is_empty() {
        return Err(TopicError::EmptySegment { topic: whole.to_string() });
    }
    if let Some(ch) = seg.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        if ch == '*' || ch == '>' {
            return Err(TopicError::WildcardInTopic { topic: whole.to_string() });
        }
        return Err(TopicError::InvalidCharacter { topic: whole.to_string(), ch });
    }
    Ok(())
}

const INLINE_TOPIC: usize = 30;

/// Short topics (the common case) are stored inline: creating one for every publish then costs
/// neither an allocation nor an atomic reference count.
#[derive(Clone, PartialEq, Eq)]
enum TopicRepr {
    Inline { len: u8, bytes: [u8; INLINE_TOPIC] },
    Shared(Arc<str>),
}

/// The detailed checks, run only to say why a topic is refused.
fn explain_refusal(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    for seg in topic.split('.') {
        check_literal_segment(topic, seg)?;
    }
    Ok(())
}

/// Whether `bytes` is a valid concrete topic: non-empty, within the length limit, segments of
/// `[A-Za-z0-9_-]` separated by single dots.
fn is_plain_topic(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > MAX_TOPIC_LEN || bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' {
        return false;
    }
    let mut previous_dot = false;
    for &b in bytes {
        let dot = b == b'.';
        if (dot && previous_dot) || !(dot || b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return false;
        }
        previous_dot = dot;
    }
    true
}

/// A validated, concrete topic name (no wildcards). Cheap to clone.
#[derive(Clone)]
pub struct Topic(TopicRepr);

impl Topic {
    /// Validates a concrete topic.
    pub fn new(topic: &str) -> Result<Self, TopicError> {
        // One pass over the bytes for the common, valid case (this runs on every publish); the
        // detailed checks below only run to explain a refusal.
        if !is_plain_topic(topic.as_bytes()) {
            explain_refusal(topic)?;
        }
        if topic.len() <= INLINE_TOPIC {
            let mut bytes = [0u8; INLINE_TOPIC];
            bytes[..topic.len()].copy_from_slice(topic.as_bytes());
            #[allow(clippy::cast_possible_truncation)] // at most INLINE_TOPIC
            return Ok(Self(TopicRepr::Inline { len: topic.len() as u8, bytes }));
        }
        Ok(Self(TopicRepr::Shared(topic.into())))
    }

    /// The topic's bytes (ASCII).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            TopicRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            TopicRepr::Shared(s) => s.as_bytes(),
        }
    }

    /// The topic as a string.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Validated ASCII on construction, so this never fails.
            TopicRepr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            TopicRepr::Shared(s) => s,
        }
    }
}

impl PartialEq for Topic {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            // Inline topics are zero-padded, so comparing the fixed arrays is comparing the names,
            // without a call to memcmp: this is the bus's per-delivery filter.
            (TopicRepr::Inline { .. }, TopicRepr::Inline { .. }) => self.0 == other.0,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for Topic {}

impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Topic {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Topic {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.as_str())
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternSegment {
    /// Matches exactly this segment.
    Literal(String),
    /// `*`: any single segment.
    AnyOne,
    /// `>`: one or more remaining segments (only last).
    Rest,
}

/// A validated subscription pattern: an exact topic or one with `*` / `>` wildcards.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    raw: Arc<str>,
    segments: Arc<[PatternSegment]>,
    /// The one topic an exact pattern names.
    exact: Option<Topic>,
}

impl TopicPattern {
    /// Validates a pattern.
    pub fn new(pattern: &str) -> Result<Self, TopicError> {
        check_common(pattern)?;
        let parts: Vec<&str> = pattern.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, seg) in parts.iter().enumerate() {
            segments.push(match *seg {
                "*" => PatternSegment::AnyOne,
                ">" if i == last => PatternSegment::Rest,
                s if s.contains('*') || s.contains('>') => {
                    return Err(TopicError::MisplacedWildcard { pattern: pattern.to_string() });
                }
                s => {
                    check_literal_segment(pattern, s)?;
                    PatternSegment::Literal(s.to_string())
                }
            });
        }
        let exact = if segments.iter().all(|s| matches!(s, PatternSegment::Literal(_))) { Some(Topic::new(pattern)?) } else { None };
        Ok(Self { raw: pattern.into(), segments: segments.into(), exact })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The parsed segments, for buses that translate patterns into native syntax.
    pub fn segments(&self) -> &[PatternSegment] {
        &self.segments
    }

    /// Whether the pattern has no wildcard (it names exactly one topic).
    #[inline]
    pub fn is_exact(&self) -> bool {
        self.exact.is_some()
    }

    /// Whether a validated `topic` matches this pattern (the bus's hot path: no UTF-8 re-check).
    #[inline]
    pub fn matches_topic(&self, topic: &Topic) -> bool {
        match &self.exact {
            Some(exact) => exact == topic,
            None => self.matches(topic.as_str()),
        }
    }

    /// Whether `topic` matches this pattern.
    #[inline]
    pub fn matches(&self, topic: &str) -> bool {
        if self.exact.is_some() {
            return &*self.raw == topic;
        }
        let mut parts = topic.split('.');
        for seg in self.segments.iter() {
            match seg {
                PatternSegment::Rest => return parts.next().is_some_and(|p| !p.is_empty()),
                PatternSegment::AnyOne => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                PatternSegment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", &*self.raw)
    }
}

/// Validates a list of subscription patterns; an empty list is refused.
pub fn parse_patterns(patterns: &[&str]) -> Result<Vec<TopicPattern>, TopicError> {
    if patterns.is_empty() {
        return Err(TopicError::Empty);
    }
    patterns.iter().map(|p| TopicPattern::new(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_validated() {
        assert!(Topic::new("order-events").is_ok());
        assert!(Topic::new("shop.order_v2.events").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert!(matches!(Topic::new("a..b"), Err(TopicError::EmptySegment { .. })));
        assert!(matches!(Topic::new(".a"), Err(TopicError::EmptySegment { .. })));
        assert!(matches!(Topic::new("a b"), Err(TopicError::InvalidCharacter { ch: ' ', .. })));
        assert!(matches!(Topic::new("a/b"), Err(TopicError::InvalidCharacter { ch: '/', .. })));
        assert!(matches!(Topic::new("a.*"), Err(TopicError::WildcardInTopic { .. })));
        assert!(matches!(Topic::new(&"a".repeat(250)), Err(TopicError::TooLong { .. })));
    }

    #[test]
    fn short_and_long_topics_compare_by_content() {
        let short = Topic::new("order.events").unwrap();
        let long = Topic::new(&format!("{}.events", "x".repeat(40))).unwrap();
        assert_eq!(short.as_str(), "order.events");
        assert_eq!(long.as_str().len(), 47);
        assert_eq!(short.clone(), Topic::new("order.events").unwrap());
        assert!(short < long, "ordered by content");
    }

    #[test]
    fn patterns_match_like_nats() {
        let p = |s: &str| TopicPattern::new(s).unwrap();
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.c"));
        assert!(!p("a.*").matches("a.b.c"));
        assert!(p("a.>").matches("a.b"));
        assert!(p("a.>").matches("a.b.c.d"));
        assert!(!p("a.>").matches("a"));
        assert!(p(">").matches("anything.at.all"));
        assert!(p("*").matches("single"));
        assert!(!p("*").matches("two.parts"));
        assert!(matches!(TopicPattern::new("a.>.b"), Err(TopicError::MisplacedWildcard { .. })));
        assert!(matches!(TopicPattern::new("a.b*"), Err(TopicError::MisplacedWildcard { .. })));
        assert!(parse_patterns(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn fast_validation_agrees_with_the_detailed_checks(t in "[a-c.*> _/-]{0,12}") {
            proptest::prop_assert_eq!(is_plain_topic(t.as_bytes()), explain_refusal(&t).is_ok(), "topic {:?}", t);
        }

        #[test]
        fn exact_pattern_matches_only_itself(a in "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}", b in "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}") {
            let p = TopicPattern::new(&a).unwrap();
            proptest::prop_assert!(p.matches(&a));
            proptest::prop_assert_eq!(p.matches(&b), a == b);
        }

        #[test]
        fn rest_wildcard_matches_every_extension(prefix in "[a-z]{1,5}", tail in "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}") {
            let p = TopicPattern::new(&format!("{prefix}.>")).unwrap();
            let extended = format!("{prefix}.{tail}");
            proptest::prop_assert!(p.matches(&extended));
            proptest::prop_assert!(!p.matches(&prefix));
        }
    }
}
