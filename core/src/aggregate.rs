//! [`Aggregate`]: typed business logic whose state lives in an event stream.
//!
//! An aggregate **decides** ([`Aggregate::handle`]: state and command in, events or a typed
//! rejection out) and **evolves** ([`Aggregate::apply`]: the only code that changes its state). The
//! framework owns the rest: loading the stream, versions, the expected-version append, encoding the
//! events (type names such as `OrderPlaced.v1`), publishing them through the outbox, and
//! de-duplicating a command handled before. Because `apply` is the only mutation, the state a
//! command is decided on is exactly the state its events rebuild.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::effect::Effect;
use crate::event::{CodecError, EventMetadata, SerializedEvent, decode_payload, encode_payload};
use crate::topic::Topic;

/// An event type of an aggregate: usually an enum, one variant per event, each with a stable name
/// carrying a schema version.
///
/// The payload is the bincode encoding of the whole value, so **add new variants at the end** and
/// never reorder them; decoding checks that the decoded variant has the stored type name, so a
/// reorder is caught as an error instead of read as another event.
pub trait DomainEvent: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// The stored type name of this event, with its schema version (`OrderPlaced.v1`).
    fn event_type(&self) -> &'static str;

    /// Encodes the event for storage.
    fn to_serialized(&self, metadata: Option<EventMetadata>) -> Result<SerializedEvent, CodecError> {
        Ok(SerializedEvent::new(self.event_type(), encode_payload(self)?, metadata))
    }

    /// Decodes a stored event, checking its type name.
    fn from_serialized(event: &SerializedEvent) -> Result<Self, CodecError> {
        let value: Self = decode_payload(&event.data)?;
        if value.event_type() != event.event_type {
            return Err(CodecError::Malformed {
                what: format!("event {} of type {}", event.event_id, event.event_type),
                reason: format!("the payload decodes as {}: event variants were reordered or renamed; keep old variants in place", value.event_type()),
            });
        }
        Ok(value)
    }
}

/// Effects an aggregate adds after a decision (a reply, a notification, a schedule). They cannot
/// feed actions back: an aggregate has no actions, only commands.
pub type Reaction = Effect<std::convert::Infallible>;

/// A typed aggregate. See the module docs.
pub trait Aggregate: Send + Sync + 'static {
    /// Type name, the prefix of stream ids (`order` gives streams `order-42`).
    const AGGREGATE_TYPE: &'static str;
    /// The state rebuilt from the events.
    type State: Send + Sync + 'static;
    /// The commands it decides on.
    type Command: fmt::Debug + Clone + PartialEq + Send + Sync + 'static;
    /// The events it records.
    type Event: DomainEvent;
    /// Why a command is refused (a business rule). Reaches the caller typed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Dependencies of `handle` (a clock, a price list); `()` for none.
    type Environment: Send + Sync + 'static;

    /// Which instance a command is for. An empty id is refused by the handler.
    fn aggregate_id(command: &Self::Command) -> &str;

    /// The state of an instance with no events.
    fn initial_state(id: &str) -> Self::State;

    /// Decides: the events a command produces (none: nothing to do), or a rejection.
    fn handle(&self, state: &Self::State, command: Self::Command, env: &Self::Environment) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves: folds one event into the state. The only code that changes the state.
    fn apply(state: &mut Self::State, event: &Self::Event);

    /// The topic the aggregate's events are published to (through the outbox), if any.
    fn topic() -> Option<Topic> {
        None
    }

    /// Effects to run after the events of a decision are stored (default: none).
    fn react(&self, _state: &Self::State, _events: &[Self::Event], _env: &Self::Environment) -> Vec<Reaction> {
        Vec::new()
    }

    /// Encodes the state for a snapshot; `None` (the default) disables snapshots.
    fn encode_state(_state: &Self::State) -> Option<Result<bytes::Bytes, CodecError>> {
        None
    }

    /// Decodes a snapshot written by [`Aggregate::encode_state`].
    fn decode_state(_bytes: &[u8]) -> Result<Self::State, CodecError> {
        Err(CodecError::Malformed { what: "snapshot".into(), reason: "this aggregate does not support snapshots".into() })
    }

    /// Take a snapshot every this many events (when [`Aggregate::encode_state`] returns `Some`).
    fn snapshot_every() -> u64 {
        100
    }
}
