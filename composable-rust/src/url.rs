//! The pieces of the one URL parser that bus and store URLs share: schemes, the feature table,
//! query pairs, percent-decoding, hiding passwords, and the environment lookup.

use std::ffi::OsString;
use std::fmt::Write as _;

use crate::error::{ConnectError, Target};

/// A backend crate behind a cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Nats,
    Redpanda,
    Zenoh,
}

impl Backend {
    /// The cargo feature of this crate that compiles the backend in.
    pub(crate) fn feature(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Nats => "nats",
            Backend::Redpanda => "redpanda",
            Backend::Zenoh => "zenoh",
        }
    }

    /// Whether this build has the backend: the feature table [`Parser::new`] uses.
    pub(crate) fn compiled(self) -> bool {
        match self {
            Backend::Memory => cfg!(feature = "memory"),
            Backend::Sqlite => cfg!(feature = "sqlite"),
            Backend::Postgres => cfg!(feature = "postgres"),
            Backend::Nats => cfg!(feature = "nats"),
            Backend::Redpanda => cfg!(feature = "redpanda"),
            Backend::Zenoh => cfg!(feature = "zenoh"),
        }
    }
}

/// Which backends a parse may use: [`Backend::compiled`] in production, another table in the
/// parser's tests.
pub(crate) type FeatureTable = fn(Backend) -> bool;

/// Parses one bus or store URL: knows the whole URL (for errors) and the feature table.
pub(crate) struct Parser<'a> {
    pub(crate) target: Target,
    url: &'a str,
    features: FeatureTable,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(target: Target, url: &'a str, features: FeatureTable) -> Self {
        Self { target, url, features }
    }

    /// The URL being parsed.
    pub(crate) fn url(&self) -> &str {
        self.url
    }

    pub(crate) fn malformed(&self, part: impl Into<String>, reason: impl Into<String>) -> ConnectError {
        ConnectError::Malformed { target: self.target, url: redact(self.url), part: redact(&part.into()), reason: reason.into() }
    }

    pub(crate) fn unknown(&self, scheme: &str, known: &'static [&'static str]) -> ConnectError {
        ConnectError::UnknownScheme { target: self.target, url: redact(self.url), scheme: scheme.to_owned(), known }
    }

    /// `Ok` if `backend` is in the feature table, else [`ConnectError::FeatureDisabled`].
    pub(crate) fn require(&self, scheme: &str, backend: Backend) -> Result<(), ConnectError> {
        if (self.features)(backend) { Ok(()) } else { Err(feature_disabled(self.target, self.url, scheme, backend)) }
    }

    /// The query pairs of `query`, each key checked against `allowed` (all keys when it is empty).
    pub(crate) fn pairs(&self, query: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ConnectError> {
        let Some(query) = query else { return Ok(Vec::new()) };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            // In errors, a secret's value is hidden, also from the decoder's explanation.
            let secret = pair.split_once('=').is_some_and(|(key, _)| is_secret(key));
            let shown = match pair.split_once('=') {
                Some((key, _)) if secret => format!("{key}=***"),
                _ => pair.to_owned(),
            };
            let bad = |reason: String| {
                self.malformed(
                    shown.as_str(),
                    if secret { "a %-escape is not two hex digits, or decodes to bytes that are not UTF-8".to_owned() } else { reason },
                )
            };
            let Some((key, value)) = pair.split_once('=') else {
                return Err(self.malformed(shown.as_str(), "a query pair must be KEY=VALUE"));
            };
            let key = percent_decode(key).map_err(bad)?;
            let value = percent_decode(value).map_err(bad)?;
            if key.is_empty() {
                return Err(self.malformed(shown.as_str(), "a query pair has an empty KEY"));
            }
            if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
                return Err(self.malformed(shown.as_str(), format!("unknown option {key:?}: the options here are {}", allowed.join(", "))));
            }
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    /// `value` of option `key` as a positive count.
    pub(crate) fn count(&self, key: &str, value: &str) -> Result<usize, ConnectError> {
        match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.malformed(format!("{key}={value}"), format!("{key} must be a positive whole number"))),
        }
    }

    /// `value` of option `key` as a boolean.
    pub(crate) fn flag(&self, key: &str, value: &str) -> Result<bool, ConnectError> {
        match value {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(self.malformed(format!("{key}={value}"), format!("{key} must be true or false"))),
        }
    }

    /// A backend refused the URL's address or options when connecting: a malformed URL, with the
    /// backend's own explanation.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres", feature = "nats", feature = "redpanda", feature = "zenoh")), allow(dead_code))]
    pub(crate) fn refused(&self, part: &str, error: &dyn std::error::Error) -> ConnectError {
        self.malformed(part, error.to_string())
    }

    /// Connecting failed: the backend's error as the source.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres", feature = "nats", feature = "redpanda", feature = "zenoh")), allow(dead_code))]
    pub(crate) fn failed(&self, backend: &'static str, error: impl std::error::Error + Send + Sync + 'static) -> ConnectError {
        ConnectError::Connect { target: self.target, url: redact(self.url), backend, source: Box::new(error) }
    }
}

/// [`ConnectError::FeatureDisabled`] for `url`.
pub(crate) fn feature_disabled(target: Target, url: &str, scheme: &str, backend: Backend) -> ConnectError {
    ConnectError::FeatureDisabled { target, url: redact(url), scheme: scheme.to_owned(), feature: backend.feature() }
}

/// The scheme (lower-cased) and what follows its `:`. A URL without `:` is a bare scheme
/// (`memory`, `zenoh`) with nothing after it. `None` when the text before the `:` is not a scheme
/// (`127.0.0.1:4222`, an empty string).
pub(crate) fn split_scheme(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once(':').unwrap_or((url, ""));
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme.to_ascii_lowercase(), rest))
}

/// The scheme-ish start of `url`, for an unknown-scheme error.
pub(crate) fn scheme_of(url: &str) -> String {
    url.split_once(':').map_or(url, |(s, _)| s).to_owned()
}

/// `rest` split at the first `?`.
pub(crate) fn split_query(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    }
}

/// Decodes `%XX` escapes (so a value can hold `&`, `=`, `|` or `#`).
pub(crate) fn percent_decode(text: &str) -> Result<String, String> {
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
pub(crate) fn percent_encode(text: &str) -> String {
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

/// Whether a query option's value is a secret, hidden in errors and [`std::fmt::Display`].
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "passwd"].iter().any(|s| key.contains(s))
}

/// `url` with passwords replaced by `***`: the password of every `scheme://user:password@` and the
/// value of every query option whose key names a password, secret or token.
pub(crate) fn redact(url: &str) -> String {
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

/// The URL in environment variable `var`: [`ConnectError::NotSet`] when it is unset, empty or not
/// UTF-8. `lookup` reads the environment (a stand-in in tests).
pub(crate) fn env_url(target: Target, var: &'static str, example: &'static str, lookup: impl Fn(&str) -> Option<OsString>) -> Result<String, ConnectError> {
    match lookup(var).map(OsString::into_string) {
        Some(Ok(url)) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => Err(ConnectError::NotSet { target, var, example }),
    }
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

    #[test]
    fn the_environment_must_hold_a_url() {
        let unset = |_: &str| None;
        let empty = |_: &str| Some(OsString::from("  "));
        let set = |var: &str| (var == "V").then(|| OsString::from(" memory: "));
        for lookup in [&unset as &dyn Fn(&str) -> Option<OsString>, &empty] {
            let err = env_url(Target::Bus, "V", "memory:", lookup).unwrap_err();
            assert!(matches!(err, ConnectError::NotSet { var: "V", .. }), "{err}");
            assert_eq!(err.to_string(), "V is not set: set it to an event bus URL, e.g. V=memory:");
        }
        assert_eq!(env_url(Target::Bus, "V", "memory:", set).unwrap(), "memory:");
    }
}
