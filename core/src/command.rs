//! Commands sent from one reducer (typically a saga) to another store through
//! [`crate::Effect::Dispatch`].
//!
//! The command travels type-erased ([`AnyCommand`]) so that one `Effect<A>` can address stores of any
//! action type; tests read it back with [`AnyCommand::downcast_ref`].

use std::any::Any;
use std::fmt;

use async_trait::async_trait;
use uuid::Uuid;

use crate::event_bus::EventBusError;
use crate::event_store::EventStoreError;

/// A command of any type, with its `Debug` rendering kept for logs and test failures. Two
/// `AnyCommand`s are equal when they hold equal values of the same type.
pub struct AnyCommand {
    value: Box<dyn Any + Send + Sync>,
    type_name: &'static str,
    debug: String,
    eq: fn(&dyn Any, &dyn Any) -> bool,
}

fn eq_as<C: Any + PartialEq>(a: &dyn Any, b: &dyn Any) -> bool {
    matches!((a.downcast_ref::<C>(), b.downcast_ref::<C>()), (Some(a), Some(b)) if a == b)
}

impl AnyCommand {
    /// Wraps a command.
    pub fn new<C: Any + Send + Sync + fmt::Debug + PartialEq>(command: C) -> Self {
        let debug = format!("{command:?}");
        Self { value: Box::new(command), type_name: std::any::type_name::<C>(), debug, eq: eq_as::<C> }
    }

    /// The [`TypeId`](std::any::TypeId) of the command (how runtimes route it to its handler).
    pub fn command_type(&self) -> std::any::TypeId {
        (*self.value).type_id()
    }

    /// The command as `C`, if it is one.
    pub fn downcast_ref<C: Any>(&self) -> Option<&C> {
        self.value.downcast_ref()
    }

    /// Takes the command out as `C`, or gives it back.
    pub fn downcast<C: Any>(self) -> Result<C, Self> {
        match self.value.downcast::<C>() {
            Ok(c) => Ok(*c),
            Err(value) => Err(Self { value, type_name: self.type_name, debug: self.debug, eq: self.eq }),
        }
    }

    /// The Rust type name of the command.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl PartialEq for AnyCommand {
    fn eq(&self, other: &Self) -> bool {
        (self.eq)(&*self.value, &*other.value)
    }
}

impl fmt::Debug for AnyCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.debug)
    }
}

/// A command with the ids that make its handling traceable and idempotent.
#[derive(Debug)]
pub struct CommandEnvelope {
    /// Unique id. Handlers record it (as causation id of the events it produced) and skip a command
    /// whose id they have already handled.
    pub command_id: Uuid,
    /// The business process it belongs to.
    pub correlation_id: Option<String>,
    /// The event or command that caused it.
    pub causation_id: Option<String>,
    /// The command.
    pub command: AnyCommand,
}

/// What handling a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandOutcome {
    /// Handled now. `position` is the global position of the last event it stored, if it stored
    /// any (wait for a read model to reach it for read-your-writes).
    Handled {
        /// Global position of the last stored event.
        position: Option<crate::stream::GlobalPosition>,
    },
    /// The command id had been handled before; nothing was done again.
    Duplicate,
}

impl CommandOutcome {
    /// `Handled` with no stored event.
    pub const HANDLED: CommandOutcome = CommandOutcome::Handled { position: None };
}

/// A business rejection carried type-erased through [`DispatchError::Rejected`]; read it back with
/// [`DispatchError::rejection`]. Equal when the messages are.
#[derive(Clone)]
pub struct Rejection(pub std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl PartialEq for Rejection {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Rejection {}

/// Why a command could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The handler decided against the command (a business rule: overdraft, out of stock). Not
    /// retryable; the typed error is in [`DispatchError::rejection`].
    #[error("{target} rejected the command: {error}")]
    Rejected {
        /// The handler.
        target: String,
        /// The handler's own error.
        error: Rejection,
    },
    /// No handler is registered for the command's type.
    #[error("no handler is registered for commands of type {command_type}; register one with the runtime (CommandRouter::register)")]
    NoHandler {
        /// The command's type name.
        command_type: &'static str,
    },
    /// The handler (or the code it ran) panicked.
    #[error("{target} panicked while handling the command: {message}")]
    Panicked {
        /// The handler.
        target: String,
        /// The panic message.
        message: String,
    },
    /// The target handles another command type.
    #[error("{target} cannot handle a {got}: it expects {expected}")]
    WrongCommandType {
        /// The handler.
        target: String,
        /// What it expects.
        expected: &'static str,
        /// What it got.
        got: &'static str,
    },
    /// The command names no valid target instance (e.g. an empty aggregate id).
    #[error("{target} rejected the command: {reason}")]
    InvalidCommand {
        /// The handler.
        target: String,
        /// Why.
        reason: String,
    },
    /// The event store failed while handling.
    #[error("{target}: {source}")]
    Store {
        /// The handler.
        target: String,
        /// The store error.
        source: EventStoreError,
    },
    /// The event bus failed while handling.
    #[error("{target}: {source}")]
    Bus {
        /// The handler.
        target: String,
        /// The bus error.
        source: EventBusError,
    },
    /// Handling kept conflicting with concurrent writers.
    #[error("{target}: gave up after {attempts} concurrency conflicts on {stream}; the stream is very contended")]
    TooManyConflicts {
        /// The handler.
        target: String,
        /// The contended stream.
        stream: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Any other failure.
    #[error("{target} failed: {reason}")]
    Failed {
        /// The handler.
        target: String,
        /// Why.
        reason: String,
        /// Whether retrying may succeed.
        retryable: bool,
    },
}

impl DispatchError {
    /// The handler's typed rejection, if this is one of type `E`.
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            DispatchError::Rejected { error, .. } => error.0.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Whether dispatching the same command again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DispatchError::Store { source, .. } => source.is_retryable(),
            DispatchError::Bus { source, .. } => source.is_retryable(),
            DispatchError::TooManyConflicts { .. } => true,
            DispatchError::Failed { retryable, .. } => *retryable,
            DispatchError::WrongCommandType { .. }
            | DispatchError::InvalidCommand { .. }
            | DispatchError::Rejected { .. }
            | DispatchError::NoHandler { .. }
            | DispatchError::Panicked { .. } => false,
        }
    }
}

/// Something that handles commands: an aggregate runtime, a store, a remote gateway. Object-safe.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    /// A name for logs and errors (`Inventory`).
    fn name(&self) -> &str;

    /// Handles one command; returns once its effects have run. Takes the envelope by reference so
    /// that the dispatcher can retry it.
    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError>;
}
