//! [`Aggregate`]: a reducer whose state lives in an event stream.
//!
//! The runtime's aggregate handler loads the state from the stream (and snapshot), reduces a command,
//! and executes the effects; the reducer's `AppendEvents` carries the expected version it read
//! (`ExpectedVersion::from_loaded(state.version)`), so a concurrent writer makes the append conflict and
//! the handler reloads and decides again.

use bytes::Bytes;

use crate::event::{CodecError, SerializedEvent};
use crate::reducer::Reducer;
use crate::stream::Version;

/// A reducer whose state is rebuilt from its own event stream `{AGGREGATE_TYPE}-{id}`.
pub trait Aggregate: Reducer {
    /// Type name, the prefix of stream ids (`order` gives streams `order-42`).
    const AGGREGATE_TYPE: &'static str;

    /// Which instance a command is for. An empty id is refused by the handler.
    fn aggregate_id(command: &Self::Action) -> String;

    /// The state of an instance with no events.
    fn initial_state(&self, id: &str) -> Self::State;

    /// Folds one stored event into the state (also its version). Errors mean the stream holds an
    /// event this code cannot read.
    fn apply(&self, state: &mut Self::State, event: &SerializedEvent) -> Result<(), CodecError>;

    /// Encodes the state for a snapshot; `None` (the default) disables snapshots.
    fn snapshot(&self, _state: &Self::State) -> Option<Result<Bytes, CodecError>> {
        None
    }

    /// Decodes a snapshot written by [`Aggregate::snapshot`] at `version`.
    fn restore(&self, _bytes: &[u8], _version: Version) -> Result<Self::State, CodecError> {
        Err(CodecError::Malformed { what: "snapshot".into(), reason: "this aggregate does not support snapshots".into() })
    }

    /// Take a snapshot every this many events (when [`Aggregate::snapshot`] returns `Some`).
    fn snapshot_every(&self) -> u64 {
        100
    }
}
