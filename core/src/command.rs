//! Commands sent from one reducer (typically a saga) to another store through
//! [`crate::Effect::DispatchCommand`].
//!
//! The command travels type-erased ([`AnyCommand`]) so that one `Effect<A>` can address stores of any
//! action type; tests read it back with [`AnyCommand::downcast_ref`].

use std::any::Any;
use std::fmt;

use async_trait::async_trait;
use uuid::Uuid;

use crate::event_bus::EventBusError;
use crate::event_store::EventStoreError;

/// A command of any type, with its `Debug` rendering kept for logs and test failures.
pub struct AnyCommand {
    value: Box<dyn Any + Send + Sync>,
    type_name: &'static str,
    debug: String,
}

impl AnyCommand {
    /// Wraps a command.
    pub fn new<C: Any + Send + Sync + fmt::Debug>(command: C) -> Self {
        let debug = format!("{command:?}");
        Self { value: Box::new(command), type_name: std::any::type_name::<C>(), debug }
    }

    /// The command as `C`, if it is one.
    pub fn downcast_ref<C: Any>(&self) -> Option<&C> {
        self.value.downcast_ref()
    }

    /// Takes the command out as `C`, or gives it back.
    pub fn downcast<C: Any>(self) -> Result<C, Self> {
        match self.value.downcast::<C>() {
            Ok(c) => Ok(*c),
            Err(value) => Err(Self { value, type_name: self.type_name, debug: self.debug }),
        }
    }

    /// The Rust type name of the command.
    pub fn type_name(&self) -> &'static str {
        self.type_name
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
pub enum CommandOutcome {
    /// Handled now.
    Handled,
    /// The command id had been handled before; nothing was done again.
    Duplicate,
}

/// Why a command could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
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
    /// Whether dispatching the same command again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DispatchError::Store { source, .. } => source.is_retryable(),
            DispatchError::Bus { source, .. } => source.is_retryable(),
            DispatchError::TooManyConflicts { .. } => true,
            DispatchError::Failed { retryable, .. } => *retryable,
            DispatchError::WrongCommandType { .. } | DispatchError::InvalidCommand { .. } => false,
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
