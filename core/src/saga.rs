//! [`Saga`]: a reducer that reacts to events from several topics, keeps per-instance state, and
//! dispatches commands (and compensations) to aggregates.
//!
//! A saga instance (keyed by a correlation id such as the order id) lives in its own stream: the
//! saga runner records each action it reduces there, so any worker can rebuild the instance by
//! replaying those actions, and a redelivered event (same event id) is recognised and not applied
//! twice.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::{CodecError, SerializedEvent};
use crate::reducer::Reducer;

/// An event translated for a saga: which instance, which action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaInput<A> {
    /// The instance (correlation id), e.g. the order id.
    pub instance_id: String,
    /// The action to reduce.
    pub action: A,
}

/// A reducer driven by bus events.
pub trait Saga: Reducer<Action: Serialize + DeserializeOwned> {
    /// Name: consumer group and stream prefix (`checkout` gives group `saga-checkout` and streams
    /// `saga.checkout-{instance}`).
    const NAME: &'static str;

    /// Topics or patterns the saga listens to.
    fn topics(&self) -> Vec<String>;

    /// State of a new instance.
    fn initial_state(&self, instance_id: &str) -> Self::State;

    /// Translates a bus event. `Ok(None)`: not of interest (skipped with a warning by the runner);
    /// `Err`: a known type whose payload cannot be decoded (dead-lettered).
    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Self::Action>>, CodecError>;

    /// Whether an instance has finished (used for metrics and by the example's final check).
    fn is_complete(&self, _state: &Self::State) -> bool {
        false
    }
}
