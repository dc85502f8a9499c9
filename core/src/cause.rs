//! [`Cause`]: the underlying error of a store or bus failure, kept as the failure's `source()`.

use std::fmt;
use std::sync::Arc;

/// The underlying error of a failure: the client library's error (sqlx, async-nats, rdkafka, zenoh,
/// ...) or, where there is none, a plain message ([`Cause::msg`]).
///
/// Cheap to clone (shared). Its `Display` and `source` are those of the error it wraps, so error
/// reports show the client's own message and chain. Two causes are equal when their messages are
/// (client errors are rarely comparable themselves); use [`Cause::downcast_ref`] to get the client's
/// error back. The store's and the bus's errors use it under the names `StoreCause` and `BusCause`.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

/// A cause given as a message only.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// An error with a word on what was being done (`context: error`) or on what to do (`error: hint`).
#[derive(Debug)]
struct Annotated {
    note: String,
    before: bool,
    source: Cause,
}

impl fmt::Display for Annotated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.before { write!(f, "{}: {}", self.note, self.source) } else { write!(f, "{}: {}", self.source, self.note) }
    }
}

impl std::error::Error for Annotated {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Cause {
    /// Wraps a client's error (a `Cause` is taken as it is, not wrapped again).
    pub fn new<E: std::error::Error + Send + Sync + 'static>(error: E) -> Self {
        if let Some(cause) = (&error as &dyn std::any::Any).downcast_ref::<Cause>() {
            return cause.clone();
        }
        Self(Arc::new(error))
    }

    /// Wraps a boxed error (e.g. `async_nats::Error`, zenoh's `ZError`, `sqlx::BoxDynError`).
    pub fn from_boxed(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self(Arc::from(error))
    }

    /// A cause with no underlying error: only `message`.
    pub fn msg(message: impl Into<String>) -> Self {
        Self(Arc::new(Message(message.into())))
    }

    /// `error`, shown after what was being done: `context: error`. The error stays the source.
    pub fn context(context: impl Into<String>, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(Annotated { note: context.into(), before: true, source: Self::new(error) }))
    }

    /// `error`, followed by what it means or what to do: `error: hint`. The error stays the source.
    pub fn with_hint(error: impl std::error::Error + Send + Sync + 'static, hint: impl Into<String>) -> Self {
        Self(Arc::new(Annotated { note: hint.into(), before: false, source: Self::new(error) }))
    }

    /// The first error of type `E` in the chain of this cause (the wrapped error, then its sources).
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*self.0);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<E>() {
                return Some(found);
            }
            next = match error.downcast_ref::<Cause>() {
                Some(cause) => Some(&*cause.0),
                None => error.source(),
            };
        }
        None
    }

    /// The wrapped error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}
