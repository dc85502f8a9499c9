//! Given/when/then for sagas and other reducers: given these actions or events, when this one
//! arrives, expect these commands, publishes and state. Nothing is executed: the effects the reducer
//! returned are inspected as data.

use std::fmt::Debug;

use composable_rust_core::inspect;
use composable_rust_core::{Append, Effect, Publish, Reducer, Saga, SerializedEvent};

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
    /// Asserts the commands of type `C` dispatched, in order.
    #[track_caller]
    pub fn expect_commands<C: PartialEq + Debug + 'static>(&self, expected: &[C]) -> &Self {
        let actual = inspect::commands::<C, _>(&self.effects);
        let matches = actual.len() == expected.len() && actual.iter().zip(expected).all(|(c, e)| *c == e);
        if !matches {
            let expected: Vec<&C> = expected.iter().collect();
            panic!("dispatched commands differ\n{}", debug_diff(&expected, &actual));
        }
        self
    }

    /// Asserts no command of any type is dispatched.
    #[track_caller]
    pub fn expect_no_commands(&self) -> &Self {
        let mut n = 0;
        inspect::for_each_leaf(&self.effects, &mut |e| {
            if matches!(e, Effect::Dispatch(_)) {
                n += 1;
            }
        });
        assert_eq!(n, 0, "expected no command, got {n}: {:?}", self.kinds());
        self
    }

    /// Asserts the whole state equals `expected` (a diff on failure).
    #[track_caller]
    pub fn expect_state(&self, expected: &R::State) -> &Self
    where
        R::State: PartialEq + Debug,
    {
        assert!(*expected == self.state, "state differs from the expected state\n{}", debug_diff(expected, &self.state));
        self
    }

    /// Asserts the effects returned equal `expected` (effects compare as data; callbacks by
    /// presence).
    #[track_caller]
    pub fn expect_effects(&self, expected: &[Effect<R::Action>]) -> &Self
    where
        R::Action: PartialEq + Debug,
    {
        assert!(expected == self.effects.as_slice(), "effects differ\n{}", debug_diff(&expected, &self.effects.as_slice()));
        self
    }

    /// Runs a custom check on the state.
    #[track_caller]
    pub fn check_state(&self, check: impl FnOnce(&R::State)) -> &Self {
        check(&self.state);
        self
    }

    /// The leaf effect kinds in order.
    pub fn kinds(&self) -> Vec<&'static str> {
        inspect::kinds(&self.effects)
    }

    /// The appends returned.
    pub fn appends(&self) -> Vec<&Append<R::Action>> {
        inspect::appends(&self.effects)
    }

    /// The publishes (of events not stored) returned.
    pub fn publishes(&self) -> Vec<&Publish<R::Action>> {
        inspect::publishes(&self.effects)
    }
}
