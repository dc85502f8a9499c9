//! [`CommandRouter`]: which handler takes a dispatched command, by the command's type.
//!
//! Effects name only the command ([`composable_rust_core::Effect::dispatch`]); the runtime looks its
//! handler up here. One handler per command type: registering a second one for the same type is an
//! error, not a silent replacement.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use composable_rust_core::{CommandEnvelope, CommandHandler, CommandOutcome, DispatchError};
use parking_lot::RwLock;

/// Registering a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// Another handler already takes this command type.
    #[error("commands of type {command_type} already go to {existing}; one handler per command type")]
    AlreadyRegistered {
        /// The command type.
        command_type: &'static str,
        /// The handler registered first.
        existing: String,
    },
}

/// The handler of each command type, with the type's name.
type Routes = HashMap<TypeId, (&'static str, Arc<dyn CommandHandler>)>;

/// Maps command types to handlers. Cheap to clone; clones share the table, so handlers can be
/// registered after the runtimes that dispatch through it were built (an aggregate handler needs
/// the runtime, and the saga's runtime needs the aggregate handler).
#[derive(Clone, Default)]
pub struct CommandRouter {
    routes: Arc<RwLock<Routes>>,
    fallback: Arc<RwLock<Option<Arc<dyn CommandHandler>>>>,
}

impl fmt::Debug for CommandRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.routes.read();
        f.debug_map().entries(routes.values().map(|(t, h)| (*t, h.name().to_string()))).finish()
    }
}

impl CommandRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends commands of type `C` to `handler`.
    pub fn register<C: 'static>(&self, handler: Arc<dyn CommandHandler>) -> Result<(), RouterError> {
        let mut routes = self.routes.write();
        if let Some((_, existing)) = routes.get(&TypeId::of::<C>()) {
            return Err(RouterError::AlreadyRegistered { command_type: std::any::type_name::<C>(), existing: existing.name().to_string() });
        }
        routes.insert(TypeId::of::<C>(), (std::any::type_name::<C>(), handler));
        Ok(())
    }

    /// Sends commands of every unregistered type to `handler` (a test double recording commands).
    pub fn set_fallback(&self, handler: Arc<dyn CommandHandler>) {
        *self.fallback.write() = Some(handler);
    }

    /// The handler for `envelope`'s command.
    pub fn route(&self, envelope: &CommandEnvelope) -> Result<Arc<dyn CommandHandler>, DispatchError> {
        if let Some((_, h)) = self.routes.read().get(&envelope.command.command_type()) {
            return Ok(Arc::clone(h));
        }
        self.fallback.read().clone().ok_or(DispatchError::NoHandler { command_type: envelope.command.type_name() })
    }

    /// The name of the handler that would take `envelope`, for logs.
    pub fn target_name(&self, envelope: &CommandEnvelope) -> String {
        self.route(envelope).map_or_else(|_| "<no handler>".to_string(), |h| h.name().to_string())
    }
}

#[async_trait::async_trait]
impl CommandHandler for CommandRouter {
    fn name(&self) -> &'static str {
        "router"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let handler = self.route(envelope)?;
        handler.handle(envelope).await
    }
}
