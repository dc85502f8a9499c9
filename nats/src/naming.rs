//! Mapping topics, patterns and group names onto NATS subjects and consumer names.

use composable_rust_core::TopicPattern;
use composable_rust_core::topic::PatternSegment;

/// `{prefix}.{topic}`: our topic syntax is a subset of NATS subjects, so no escaping is needed.
pub(crate) fn subject(prefix: &str, topic: &str) -> String {
    format!("{prefix}.{topic}")
}

/// The NATS filter subject for a pattern: `*` and `>` mean the same in NATS.
pub(crate) fn filter_subject(prefix: &str, pattern: &TopicPattern) -> String {
    let parts: Vec<&str> = pattern
        .segments()
        .iter()
        .map(|s| match s {
            PatternSegment::Literal(l) => l.as_str(),
            PatternSegment::AnyOne => "*",
            PatternSegment::Rest => ">",
        })
        .collect();
    format!("{prefix}.{}", parts.join("."))
}

/// The topic of a subject under `prefix`, if it is one.
pub(crate) fn topic_of<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject.strip_prefix(prefix)?.strip_prefix('.')
}

/// A durable consumer name for `group` and one of its patterns: the same in every process, and made
/// of the characters NATS allows in names.
pub(crate) fn consumer_name(group: &str, pattern: &str) -> String {
    let clean: String = group.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(64).collect();
    format!("{clean}-{:016x}", fnv1a(group.as_bytes()) ^ fnv1a(pattern.as_bytes()).rotate_left(1))
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases; names must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_map_onto_subjects() {
        assert_eq!(subject("cr", "order.events"), "cr.order.events");
        assert_eq!(filter_subject("cr", &TopicPattern::new("shop.*.events").unwrap()), "cr.shop.*.events");
        assert_eq!(filter_subject("cr", &TopicPattern::new(">").unwrap()), "cr.>");
        assert_eq!(topic_of("cr", "cr.order.events"), Some("order.events"));
        assert_eq!(topic_of("cr", "crx.order"), None);
    }

    #[test]
    fn consumer_names_are_stable_and_safe() {
        let a = consumer_name("saga-checkout", "order.events");
        assert_eq!(a, consumer_name("saga-checkout", "order.events"));
        assert_ne!(a, consumer_name("saga-checkout", "payment.events"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
        assert!(consumer_name("a.b c>", "x").starts_with("a_b_c_-"));
    }
}
