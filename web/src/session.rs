//! Sessions: which events a session feed may show, and who the caller is.
//!
//! An event belongs to a session when its metadata carries the [`SESSION_HEADER`] header
//! (`metadata.headers["session-id"]`). A session feed shows only the events of the caller's
//! session, and the session comes from [`Authenticate`] alone, never from the URL: a route with a
//! `{session}` segment answers 403 when it names another session than the caller's.
//!
//! [`SessionTokens`] is the provided [`Authenticate`]: tokens signed with HMAC-SHA256, of the form
//! `v1.<session id, base64url>.<expiry, Unix seconds, 0 for none>.<signature, base64url>`, read
//! from `Authorization: Bearer <token>`, else a cookie (`cr_session` by default), else the `token`
//! query parameter (a browser's `EventSource` cannot set headers). Signatures are compared in
//! constant time.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The metadata header (a key of `EventMetadata::headers`) naming the session an event belongs
/// to: `session-id`, the same name the rest of the framework uses
/// (`composable_rust_core::event_headers::SESSION`).
pub const SESSION_HEADER: &str = composable_rust_core::event_headers::SESSION;

/// Longest session id accepted, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// Longest token accepted, in bytes (a longer one is refused before any decoding).
pub const MAX_TOKEN_LEN: usize = 1024;

/// A session (or tenant) id: non-empty, at most [`MAX_SESSION_ID_LEN`] bytes, no control
/// characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// Validates a session id.
    pub fn new(id: impl Into<String>) -> Result<Self, AuthError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_SESSION_ID_LEN || id.chars().any(char::is_control) {
            return Err(AuthError::InvalidSessionId { len: id.len() });
        }
        Ok(Self(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:?})", self.0)
    }
}

/// Why a request was refused a session feed. [`AuthError::status`] says which HTTP status
/// answers it (401 for every "who are you?" failure, 403 for "not yours"). New variants may be
/// added: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials in the request.
    #[error("no session token: send `Authorization: Bearer <token>`, the `{cookie}` cookie or the `token` query parameter")]
    MissingToken {
        /// The cookie the token may come in.
        cookie: String,
    },
    /// The token is not of the expected form.
    #[error("malformed session token: {reason}; sign in again to get a new token")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not verify: the token was not issued with this server's secret (forged,
    /// altered, or issued before the secret changed).
    #[error("session token signature does not verify (forged, altered, or signed with another secret); sign in again")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("session token expired at {expired_at} (Unix seconds); sign in again")]
    Expired {
        /// The expiry, in seconds since the Unix epoch.
        expired_at: u64,
    },
    /// The URL names another session than the caller's.
    #[error("this feed belongs to another session than the one the token was issued for")]
    WrongSession,
    /// A session id is empty, too long or holds a control character.
    #[error("invalid session id ({len} bytes): use 1 to {MAX_SESSION_ID_LEN} bytes without control characters")]
    InvalidSessionId {
        /// Its length in bytes.
        len: usize,
    },
    /// A user [`Authenticate`] refused the caller's identity (answered with 401).
    #[error("not authenticated: {reason}")]
    Unauthenticated {
        /// Why.
        reason: String,
    },
    /// A user [`Authenticate`] knows the caller but refuses the feed (answered with 403).
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Why.
        reason: String,
    },
}

impl AuthError {
    /// 403 for [`AuthError::WrongSession`] and [`AuthError::Forbidden`], 401 for the rest.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::WrongSession | AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Who is calling: plug your own (a session cookie looked up in a database, a JWT, mTLS) or use
/// [`SessionTokens`]. The session a feed serves comes only from here.
#[async_trait]
pub trait Authenticate: Send + Sync + 'static {
    /// The caller's session, from the request's head (headers, URI), or why there is none.
    async fn session(&self, parts: &Parts) -> Result<SessionId, AuthError>;
}

type HmacSha256 = Hmac<Sha256>;

/// The secret is too short to sign tokens with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session token secret must be at least {min} bytes, got {len}: use 32 random bytes, e.g. from a secrets manager")]
pub struct SecretTooShort {
    /// The given length.
    pub len: usize,
    /// The minimum.
    pub min: usize,
}

/// Issues and verifies signed session tokens (see the module docs), and authenticates requests
/// with them.
#[derive(Clone)]
pub struct SessionTokens {
    key: HmacSha256,
    cookie: String,
    query: bool,
}

impl fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTokens").field("cookie", &self.cookie).field("query", &self.query).finish_non_exhaustive()
    }
}

const TOKEN_VERSION: &str = "v1";

impl SessionTokens {
    /// Shortest secret accepted, in bytes.
    pub const MIN_SECRET_LEN: usize = 32;

    /// Tokens signed with `secret` (at least [`SessionTokens::MIN_SECRET_LEN`] bytes); read from
    /// the `cr_session` cookie and the `token` query parameter besides the `Authorization` header.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SecretTooShort> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(SecretTooShort { len: secret.len(), min: Self::MIN_SECRET_LEN });
        }
        // HMAC takes keys of any length; this cannot fail.
        let key = HmacSha256::new_from_slice(secret).map_err(|_| SecretTooShort { len: secret.len(), min: Self::MIN_SECRET_LEN })?;
        Ok(Self { key, cookie: "cr_session".to_owned(), query: true })
    }

    /// Reads the token from the cookie `name` instead of `cr_session`.
    #[must_use]
    pub fn with_cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = name.into();
        self
    }

    /// Whether the `token` query parameter is accepted (default yes; URLs end up in logs, so turn
    /// it off when every client can send a header or a cookie).
    #[must_use]
    pub fn with_query_token(mut self, accept: bool) -> Self {
        self.query = accept;
        self
    }

    /// A token for `session`, valid for `ttl` from now (`None`: no expiry).
    pub fn issue(&self, session: &SessionId, ttl: Option<Duration>) -> String {
        self.issue_until(session, ttl.map(|ttl| SystemTime::now() + ttl))
    }

    /// A token for `session` that expires at `expires_at` (`None`: never).
    pub fn issue_until(&self, session: &SessionId, expires_at: Option<SystemTime>) -> String {
        let exp = expires_at.map_or(0, |t| t.duration_since(UNIX_EPOCH).map_or(1, |d| d.as_secs().max(1)));
        let body = format!("{TOKEN_VERSION}.{}.{exp}", URL_SAFE_NO_PAD.encode(session.as_str()));
        let mut mac = self.key.clone();
        mac.update(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The session of a token, checked against the current time.
    pub fn verify(&self, token: &str) -> Result<SessionId, AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    /// The session of a token, checked against `now`.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<SessionId, AuthError> {
        let malformed = |reason: &str| AuthError::Malformed { reason: reason.to_owned() };
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed("longer than any token this server issues"));
        }
        let (body, signature) = token.rsplit_once('.').ok_or_else(|| malformed("no signature"))?;
        let mut parts = body.splitn(3, '.');
        let (Some(version), Some(session), Some(exp)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("expected four dot-separated parts"));
        };
        if version != TOKEN_VERSION {
            return Err(malformed("unknown token version"));
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| malformed("signature is not base64url"))?;
        let mut mac = self.key.clone();
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature).map_err(|_| AuthError::BadSignature)?;
        // Signed by us from here on: these only fail for tokens we would not issue.
        let exp: u64 = exp.parse().map_err(|_| malformed("expiry is not a number"))?;
        if exp != 0 {
            let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if now >= exp {
                return Err(AuthError::Expired { expired_at: exp });
            }
        }
        let session = URL_SAFE_NO_PAD.decode(session).map_err(|_| malformed("session is not base64url"))?;
        let session = String::from_utf8(session).map_err(|_| malformed("session is not UTF-8"))?;
        SessionId::new(session)
    }

    /// The token of a request: `Authorization: Bearer`, else the cookie, else `?token=` (when
    /// accepted). `None` when there is none.
    pub fn token_of(&self, parts: &Parts) -> Option<String> {
        bearer(&parts.headers)
            .or_else(|| cookie(&parts.headers, &self.cookie))
            .or_else(|| if self.query { query_param(parts.uri.query().unwrap_or_default(), "token") } else { None })
    }
}

#[async_trait]
impl Authenticate for SessionTokens {
    async fn session(&self, parts: &Parts) -> Result<SessionId, AuthError> {
        let token = self.token_of(parts).ok_or_else(|| AuthError::MissingToken { cookie: self.cookie.clone() })?;
        self.verify(&token)
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.trim_matches('"').to_owned()))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    let parsed: Vec<(String, String)> = axum::extract::Query::try_from_uri(&format!("/?{query}").parse().ok()?).ok()?.0;
    parsed.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let tokens = SessionTokens::new(SECRET).unwrap();
        let alice = SessionId::new("alice@example.com").unwrap();
        let token = tokens.issue(&alice, None);
        assert_eq!(tokens.verify(&token), Ok(alice.clone()));
        let now = SystemTime::now();
        let short = tokens.issue_until(&alice, Some(now + Duration::from_secs(60)));
        assert_eq!(tokens.verify_at(&short, now), Ok(alice.clone()));
        assert!(matches!(tokens.verify_at(&short, now + Duration::from_secs(61)), Err(AuthError::Expired { .. })));
        assert_eq!(AuthError::Expired { expired_at: 1 }.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn forged_or_altered_tokens_are_refused() {
        let tokens = SessionTokens::new(SECRET).unwrap();
        let other = SessionTokens::new(b"another secret, another server!!").unwrap();
        let alice = SessionId::new("alice").unwrap();
        let bob = SessionId::new("bob").unwrap();
        assert_eq!(tokens.verify(&other.issue(&alice, None)), Err(AuthError::BadSignature));
        // Alice's signature on Bob's session id.
        let alice_token = tokens.issue(&alice, None);
        let bob_token = tokens.issue(&bob, None);
        let (alice_body, alice_sig) = alice_token.rsplit_once('.').unwrap();
        let (bob_body, _) = bob_token.rsplit_once('.').unwrap();
        assert_eq!(tokens.verify(&format!("{bob_body}.{alice_sig}")), Err(AuthError::BadSignature));
        // Expiry removed from an expiring token.
        let expiring = tokens.issue(&alice, Some(Duration::from_secs(60)));
        let (body, sig) = expiring.rsplit_once('.').unwrap();
        let no_expiry = format!("{}.0.{sig}", body.rsplit_once('.').unwrap().0);
        assert_eq!(tokens.verify(&no_expiry), Err(AuthError::BadSignature));
        // A flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(alice_sig).unwrap();
        sig[0] ^= 1;
        assert_eq!(tokens.verify(&format!("{alice_body}.{}", URL_SAFE_NO_PAD.encode(sig))), Err(AuthError::BadSignature));
        for garbage in ["", "v1", "v1.a.0", "v2.YWxpY2U.0.AAAA", "v1.YWxpY2U.0.!!!", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(matches!(tokens.verify(garbage), Err(AuthError::Malformed { .. } | AuthError::BadSignature)), "{garbage:?}");
        }
    }

    #[test]
    fn short_secrets_and_bad_session_ids_are_refused() {
        assert_eq!(SessionTokens::new(b"short").unwrap_err(), SecretTooShort { len: 5, min: 32 });
        assert!(SessionId::new("").is_err());
        assert!(SessionId::new("a\nb").is_err());
        assert!(SessionId::new("x".repeat(MAX_SESSION_ID_LEN + 1)).is_err());
    }

    #[tokio::test]
    async fn tokens_are_read_from_header_cookie_or_query() {
        let tokens = SessionTokens::new(SECRET).unwrap();
        let alice = SessionId::new("alice").unwrap();
        let t = tokens.issue(&alice, None);
        let bearer = format!("Bearer {t}");
        let cookie = format!("theme=dark; cr_session={t}");
        for p in [parts("/", &[("authorization", &bearer)]), parts("/", &[("cookie", &cookie)]), parts(&format!("/x?a=1&token={t}"), &[])] {
            assert_eq!(tokens.session(&p).await, Ok(alice.clone()));
        }
        assert!(matches!(tokens.session(&parts("/", &[])).await, Err(AuthError::MissingToken { .. })));
        let no_query = tokens.clone().with_query_token(false);
        assert!(matches!(no_query.session(&parts(&format!("/?token={t}"), &[])).await, Err(AuthError::MissingToken { .. })));
        let renamed = tokens.with_cookie("sid");
        assert_eq!(renamed.session(&parts("/", &[("cookie", &format!("sid={t}"))])).await, Ok(alice));
        assert_eq!(AuthError::WrongSession.status(), StatusCode::FORBIDDEN);
    }
}
