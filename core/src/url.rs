//! The grammar of backend URLs, shared by the `composable-rust` facade and every backend's
//! `connect(url)`: schemes, query pairs, percent-decoding, and hiding passwords in errors.
//!
//! Each backend parses its own scheme once, with these pieces (`NatsConfig::from_url`,
//! `RedpandaConfig::from_url`, ...); the facade only picks the backend by scheme and calls it, so
//! no URL is parsed in two places.
//!
//! ```
//! use composable_rust_core::url::UrlReader;
//!
//! let url = "kafka://h:9092?acks=all&sasl.password=p%26q";
//! let reader = UrlReader::new(url);
//! let (scheme, rest) = reader.scheme(&["redpanda", "kafka"]).unwrap();
//! let (brokers, query) = composable_rust_core::url::split_query(reader.authority(rest, "kafka://HOST:PORT").unwrap());
//! assert_eq!((scheme.as_str(), brokers), ("kafka", "h:9092"));
//! let pairs = reader.pairs(query, &[]).unwrap();
//! assert_eq!(pairs[1], ("sasl.password".to_owned(), "p&q".to_owned()));
//! assert_eq!(composable_rust_core::url::redact(url), "kafka://h:9092?acks=all&sasl.password=***");
//! ```

use std::fmt::Write as _;

/// Why a URL was refused: the offending part and what was expected. The URL and the part have their
/// passwords replaced by `***` ([`redact`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed URL {url:?}: {part:?}: {reason}")]
#[non_exhaustive]
pub struct UrlError {
    /// The URL (passwords hidden).
    pub url: String,
    /// The offending part of the URL: a query pair, a host, an endpoint (passwords hidden).
    pub part: String,
    /// What is wrong with it and what was expected.
    pub reason: String,
}

impl UrlError {
    /// A refusal of `part` of `url`, both redacted here.
    pub fn new(url: &str, part: &str, reason: impl Into<String>) -> Self {
        Self { url: redact(url), part: redact(part), reason: reason.into() }
    }
}

/// Reads one URL, remembering the whole of it for errors.
#[derive(Debug, Clone, Copy)]
pub struct UrlReader<'a> {
    url: &'a str,
}

impl<'a> UrlReader<'a> {
    /// A reader of `url`.
    pub fn new(url: &'a str) -> Self {
        Self { url }
    }

    /// The URL being read.
    pub fn url(&self) -> &'a str {
        self.url
    }

    /// A refusal of `part` of this URL.
    pub fn error(&self, part: &str, reason: impl Into<String>) -> UrlError {
        UrlError::new(self.url, part, reason)
    }

    /// The URL's scheme, lower-cased, and what follows its `:`; an error unless the scheme is one of
    /// `schemes`.
    pub fn scheme(&self, schemes: &[&str]) -> Result<(String, &'a str), UrlError> {
        let expected = || format!("expected a URL starting with {}", schemes.iter().map(|s| format!("{s}:")).collect::<Vec<_>>().join(" or "));
        match split_scheme(self.url) {
            Some((scheme, rest)) if schemes.contains(&scheme.as_str()) => Ok((scheme, rest)),
            _ => Err(self.error(&scheme_of(self.url), expected())),
        }
    }

    /// What follows the `//` of `scheme://`, `rest` being what follows the scheme's `:`; `expected`
    /// describes the right form.
    pub fn authority(&self, rest: &'a str, expected: &str) -> Result<&'a str, UrlError> {
        rest.strip_prefix("//").ok_or_else(|| self.error(self.url, format!("expected {expected}")))
    }

    /// The pairs of `query` (`KEY=VALUE&...`, percent-decoded), each key checked against `allowed`
    /// (any key when it is empty). A secret's value (a key naming a password, secret or token) is
    /// hidden in errors.
    pub fn pairs(&self, query: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, UrlError> {
        let Some(query) = query else { return Ok(Vec::new()) };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let secret = pair.split_once('=').is_some_and(|(key, _)| is_secret(key));
            let shown = match pair.split_once('=') {
                Some((key, _)) if secret => format!("{key}=***"),
                _ => pair.to_owned(),
            };
            // A secret's value is hidden also from the decoder's explanation.
            let bad = |reason: String| {
                self.error(&shown, if secret { "a %-escape is not two hex digits, or decodes to bytes that are not UTF-8".to_owned() } else { reason })
            };
            let Some((key, value)) = pair.split_once('=') else {
                return Err(self.error(&shown, "a query pair must be KEY=VALUE"));
            };
            let key = percent_decode(key).map_err(bad)?;
            let value = percent_decode(value).map_err(bad)?;
            if key.is_empty() {
                return Err(self.error(&shown, "a query pair has an empty KEY"));
            }
            if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
                return Err(self.error(&shown, format!("unknown option {key:?}: the options here are {}", allowed.join(", "))));
            }
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    /// `value` of option `key` as a positive count.
    pub fn count(&self, key: &str, value: &str) -> Result<usize, UrlError> {
        match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.error(&format!("{key}={value}"), format!("{key} must be a positive whole number"))),
        }
    }

    /// `value` of option `key` as a boolean (`true`/`1`/`yes`, `false`/`0`/`no`).
    pub fn flag(&self, key: &str, value: &str) -> Result<bool, UrlError> {
        match value {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(self.error(&format!("{key}={value}"), format!("{key} must be true or false"))),
        }
    }
}

/// The scheme, lower-cased, and what follows its `:`; a bare scheme (`memory`, `zenoh`) has nothing
/// after it. `None` when the text before the `:` is not a scheme (`127.0.0.1:4222`, an empty string).
pub fn split_scheme(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once(':').unwrap_or((url, ""));
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme.to_ascii_lowercase(), rest))
}

/// The scheme-ish start of `url` (the text before the first `:`, or all of it), for an error.
pub fn scheme_of(url: &str) -> String {
    url.split_once(':').map_or(url, |(s, _)| s).to_owned()
}

/// `rest` split at its first `?`.
pub fn split_query(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    }
}

/// Decodes `%XX` escapes (so a value can hold `&`, `=`, `|` or `#`); the error says what is wrong.
pub fn percent_decode(text: &str) -> Result<String, String> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else { return Err(format!("{text:?} has a % not followed by two hex digits")) };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} decodes to bytes that are not UTF-8"))
}

/// Escapes what [`percent_decode`] and the query syntax would otherwise read differently.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '&' | '=' | '|' | '#' | '?') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a query option's value is a secret (its key names a password, secret or token), hidden
/// in errors and printed URLs.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "passwd"].iter().any(|s| key.contains(s))
}

/// `url` with passwords replaced by `***`: the password of every `scheme://user:password@` and the
/// value of every query option whose key names a password, secret or token.
pub fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    // User info: after each `://`, up to the first `@` that comes before the authority ends.
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.find(['/', '?', '|', '#']).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &tail[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    // Secret query values.
    if !out.contains('?') {
        return out;
    }
    let mut redacted = String::with_capacity(out.len());
    let mut in_query = false;
    let mut segment_start = 0;
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate().chain(std::iter::once((bytes.len(), &b'&'))) {
        let boundary = matches!(b, b'?' | b'&' | b'|') || i == bytes.len();
        if !boundary {
            continue;
        }
        let segment = &out[segment_start..i];
        match segment.split_once('=') {
            Some((key, _)) if in_query && is_secret(key) => {
                redacted.push_str(key);
                redacted.push_str("=***");
            }
            _ => redacted.push_str(segment),
        }
        if i < bytes.len() {
            redacted.push(char::from(b));
        }
        in_query = matches!(b, b'?' | b'&');
        segment_start = i + 1;
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_split_and_lower_cased() {
        assert_eq!(split_scheme("NATS://h:1"), Some(("nats".to_owned(), "//h:1")));
        assert_eq!(split_scheme("memory"), Some(("memory".to_owned(), "")));
        assert_eq!(split_scheme("sqlite::memory:"), Some(("sqlite".to_owned(), ":memory:")));
        assert_eq!(split_scheme("127.0.0.1:4222"), None);
        assert_eq!(split_scheme(""), None);
        assert_eq!(split_scheme(":x"), None);
        let err = UrlReader::new("http://h").scheme(&["nats"]).unwrap_err();
        assert_eq!((err.part.as_str(), err.reason.as_str()), ("http", "expected a URL starting with nats:"));
    }

    #[test]
    fn percent_escapes_round_trip() {
        assert_eq!(percent_decode("a%26b%3Dc%7Cd").unwrap(), "a&b=c|d");
        assert_eq!(percent_encode("a&b=c|d %"), "a%26b%3Dc%7Cd%20%25");
        assert_eq!(percent_decode(&percent_encode("tcp/[::1]:7447?x&y")).unwrap(), "tcp/[::1]:7447?x&y");
        assert!(percent_decode("50%").unwrap_err().contains("two hex digits"));
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn query_pairs_name_the_bad_pair() {
        let r = UrlReader::new("x://h?a=1&b");
        assert_eq!(r.pairs(Some("a=1&&b=%41"), &[]).unwrap(), [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "A".to_owned())]);
        assert_eq!(r.pairs(Some("a=1&b"), &[]).unwrap_err().part, "b");
        assert_eq!(r.pairs(Some("=1"), &[]).unwrap_err().reason, "a query pair has an empty KEY");
        assert!(r.pairs(Some("c=1"), &["a", "b"]).unwrap_err().reason.contains("the options here are a, b"));
        assert_eq!(r.pairs(Some("token=%zz"), &[]).unwrap_err().part, "token=***", "a secret stays hidden");
        assert_eq!(r.count("n", "0").unwrap_err().part, "n=0");
        assert!(r.flag("on", "maybe").is_err());
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/shop"), "postgres://app:***@db:5432/shop");
        assert_eq!(redact("postgres://app@db/shop"), "postgres://app@db/shop");
        assert_eq!(redact("nats://tok@h:4222"), "nats://tok@h:4222");
        assert_eq!(redact("kafka://h:1?sasl.username=u&sasl.password=p%26q&acks=all"), "kafka://h:1?sasl.username=u&sasl.password=***&acks=all");
        assert_eq!(redact("dual:nats://u:p@h:1|postgres://v:w@h/db?x=1"), "dual:nats://u:***@h:1|postgres://v:***@h/db?x=1");
        assert_eq!(redact("dual:kafka://h:1?secret.key=x|memory:"), "dual:kafka://h:1?secret.key=***|memory:");
        assert_eq!(redact("memory:"), "memory:");
        assert_eq!(redact("sqlite:/tmp/a@b.db"), "sqlite:/tmp/a@b.db");
    }
}
