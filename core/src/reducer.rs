//! The [`Reducer`] trait: `(state, action, environment) -> effects`, pure.

use smallvec::SmallVec;

use crate::effect::Effect;

/// Effects returned by one `reduce` call; up to four live inline without allocating.
pub type Effects<A> = SmallVec<[Effect<A>; 4]>;

/// Business logic as a pure function. `reduce` mutates the state and returns effects that describe
/// the I/O to perform; the runtime executes them in the order returned.
pub trait Reducer: Send + Sync + 'static {
    /// The state the reducer owns.
    type State: Send + 'static;
    /// The actions it handles (commands, events fed back, effect results).
    type Action: Send + 'static;
    /// Dependencies: event store, bus, clock, other stores' handles.
    type Environment: Send + Sync + 'static;

    /// Handles one action.
    fn reduce(&self, state: &mut Self::State, action: Self::Action, env: &Self::Environment) -> Effects<Self::Action>;
}
