//! Given/when/then for sagas and other reducers: given these actions or events, when this one
//! arrives, expect these commands, publishes and state. Nothing is executed: the effects the reducer
//! returned are inspected as data.

use std::fmt::Debug;

use composable_rust_core::inspect::{self, AppendView, PublishView};
use composable_rust_core::{Effect, Reducer, Saga, SerializedEvent};

use crate::diff::debug_diff;

/// A scenario for one saga instance.
pub struct SagaScenario<S: Saga> {
    saga: S,
    env: S::Environment,
    state: S::State,
}

impl<S: Saga> SagaScenario<S> {
    /// A scenario starting from the saga's initial state for `instance_id`.
    pub fn new(saga: S, env: S::Environment, instance_id: &str) -> Self {
        let state = saga.initial_state(instance_id);
        Self { saga, env, state }
    }

    /// Applies actions that happened before (their effects are discarded).
    #[must_use]
    pub fn given(mut self, actions: impl IntoIterator<Item = S::Action>) -> Self {
        for a in actions {
            let _ = self.saga.reduce(&mut self.state, a, &self.env);
        }
        self
    }

    /// Applies events that happened before, decoded by the saga (unknown types are ignored).
    #[must_use]
    pub fn given_events(mut self, events: &[SerializedEvent]) -> Self {
        for e in events {
            if let Some(input) = self.saga.decode(e).expect("given event must decode") {
                let _ = self.saga.reduce(&mut self.state, input.action, &self.env);
            }
        }
        self
    }

    /// Reduces `action` and returns what happened for assertions.
    pub fn when(mut self, action: S::Action) -> Outcome<S> {
        let effects = self.saga.reduce(&mut self.state, action, &self.env).into_vec();
        Outcome { state: self.state, effects }
    }

    /// Decodes `event` with the saga and reduces it.
    pub fn when_event(self, event: &SerializedEvent) -> Outcome<S> {
        let input = self.saga.decode(event).expect("event must decode").expect("the saga must handle this event type");
        self.when(input.action)
    }
}

/// What a `when` produced.
pub struct Outcome<R: Reducer> {
    /// The state afterwards.
    pub state: R::State,
    /// The effects returned.
    pub effects: Vec<Effect<R::Action>>,
}

impl<R: Reducer> Outcome<R> {
    /// Asserts the commands of type `C` dispatched, in order, with their targets' names.
    #[track_caller]
    pub fn expect_commands<C: PartialEq + Debug + 'static>(&self, expected: &[(&str, C)]) -> &Self {
        let actual = inspect::commands::<C, _>(&self.effects);
        let matches = actual.len() == expected.len() && actual.iter().zip(expected).all(|((t, c), (et, ec))| t == et && *c == ec);
        if !matches {
            let expected: Vec<(&str, &C)> = expected.iter().map(|(t, c)| (*t, c)).collect();
            panic!("dispatched commands differ\n{}", debug_diff(&expected, &actual));
        }
        self
    }

    /// Asserts no command of any type is dispatched.
    #[track_caller]
    pub fn expect_no_commands(&self) -> &Self {
        let mut n = 0;
        inspect::for_each_leaf(&self.effects, &mut |e| {
            if matches!(e, Effect::DispatchCommand { .. }) {
                n += 1;
            }
        });
        assert_eq!(n, 0, "expected no command, got {n}: {:?}", self.kinds());
        self
    }

    /// Asserts the state.
    #[track_caller]
    pub fn expect_state(&self, check: impl FnOnce(&R::State)) -> &Self {
        check(&self.state);
        self
    }

    /// The leaf effect kinds in order.
    pub fn kinds(&self) -> Vec<&'static str> {
        inspect::kinds(&self.effects)
    }

    /// The appends returned.
    pub fn appends(&self) -> Vec<AppendView<'_>> {
        inspect::appends(&self.effects)
    }

    /// The publishes returned.
    pub fn publishes(&self) -> Vec<PublishView<'_>> {
        inspect::publishes(&self.effects)
    }
}
