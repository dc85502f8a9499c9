//! # composable-rust-core
//!
//! The vocabulary of composable-rust, with no backend in it:
//!
//! - [`Reducer`]: pure business logic returning [`Effect`]s;
//! - [`Effect`]: I/O described as data, executed in order by `composable-rust-runtime`;
//! - [`SerializedEvent`]: what stores persist and buses carry (payload as shared [`bytes::Bytes`]);
//! - [`EventStore`] and [`EventBus`]: object-safe traits every backend crate implements;
//! - [`Aggregate`] and [`Saga`]: reducers whose state lives in event streams;
//! - [`topic`]: topic names and `*` / `>` patterns with one meaning on every bus;
//! - [`compose`]: `Scope`, `ForEach`, `IfLet` and `combine` build a parent reducer from children;
//! - [`deadline`]: named, cancellable deadlines, durable under the saga runner;
//! - [`read_model`]: event filters and the [`ReadModelStore`] projections keep their documents in;
//! - [`inspect`]: read a reducer's effects in tests without running them.
//!
//! Backends depend on this crate, never the reverse.

pub mod aggregate;
pub mod cause;
pub mod clock;
pub mod command;
pub mod compose;
pub mod dead_letter;
pub mod deadline;
pub mod effect;
pub mod event;
pub mod event_bus;
pub mod event_headers;
pub mod event_store;
pub mod inspect;
pub mod read_model;
pub mod reducer;
pub mod saga;
pub mod stream;
pub mod topic;
pub mod url;

pub use aggregate::{Aggregate, DomainEvent, Reaction};
pub use cause::Cause;
pub use clock::Clock;
pub use command::{AnyCommand, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, Rejection};
pub use compose::{Combine, ForEach, IfLet, Scope, combine};
pub use dead_letter::{DeadLetter, DeadLetterSink, InMemoryDeadLetters};
pub use deadline::{ClaimedDeadline, Deadline, DeadlineChange, DeadlineOwner, Due, StoredDeadline};
pub use effect::{Append, Callback, CancelInFlight, Dispatch, Effect, EffectId, EffectPath, Publish};
pub use event::{CodecError, EventMetadata, SerializedEvent, decode_payload, encode_payload};
pub use event_bus::{
    BusCause, BusMessage, ConsumerGroup, Delivery, DeliveryAck, EventBus, EventBusError, EventStream, SharedAck, SharedEventBus, SubscribeOptions,
};
pub use event_store::{
    AppendRequest, AppendResult, EventStore, EventStoreError, InboxMark, OutboxIntent, PendingPublication, PruneReport, RecordedEvent, SharedEventStore,
    Snapshot, StoreCause,
};
pub use read_model::{Checkpoint, DocChange, EventFilter, FilteredPage, ReadModelError, ReadModelStore};
pub use reducer::{Effects, Reducer};
pub use saga::{Saga, SagaInput};
pub use stream::{ExpectedVersion, GlobalPosition, StreamId, StreamIdError, Version};
pub use topic::{Topic, TopicError, TopicPattern};

pub use ::smallvec::{SmallVec, smallvec};

/// Re-export so that users need no direct `smallvec` dependency.
pub use ::smallvec as smallvec_crate;
