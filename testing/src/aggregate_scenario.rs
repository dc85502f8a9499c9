//! Given/when/then for typed aggregates, in the style of cqrs-es's `TestFramework`: given these
//! past events (folded in with `apply`), when this command is decided, then these events, or this
//! rejection. Nothing is stored: `handle` and `apply` are pure, so the scenario needs no I/O.

use std::fmt::Debug;

use composable_rust_core::Aggregate;

use crate::diff::debug_diff;

/// A scenario for one aggregate instance.
pub struct AggregateScenario<A: Aggregate> {
    aggregate: A,
    env: A::Environment,
    state: A::State,
}

impl<A: Aggregate> AggregateScenario<A> {
    /// A scenario for instance `id`, starting from [`Aggregate::initial_state`].
    pub fn new(aggregate: A, env: A::Environment, id: &str) -> Self {
        Self { aggregate, env, state: A::initial_state(id) }
    }

    /// Events that happened before, folded into the state with [`Aggregate::apply`].
    #[must_use]
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for e in events {
            A::apply(&mut self.state, &e);
        }
        self
    }

    /// Decides `command` on the state so far.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = self.aggregate.handle(&self.state, command, &self.env);
        let mut state = self.state;
        if let Ok(events) = &result {
            for e in events {
                A::apply(&mut state, e);
            }
        }
        AggregateOutcome { result, state }
    }
}

/// What a `when` decided.
pub struct AggregateOutcome<A: Aggregate> {
    /// The events, or the rejection.
    pub result: Result<Vec<A::Event>, A::Error>,
    /// The state after applying the events (unchanged on a rejection).
    pub state: A::State,
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command produced exactly `expected` (a diff on failure).
    #[track_caller]
    pub fn then_events(&self, expected: &[A::Event]) -> &Self {
        match &self.result {
            Ok(events) => assert!(events.as_slice() == expected, "events differ\n{}", debug_diff(&expected, &events.as_slice())),
            Err(e) => panic!("expected events {expected:?}, the command was rejected: {e}"),
        }
        self
    }

    /// Asserts the command changed nothing (no events, no rejection).
    #[track_caller]
    pub fn then_nothing(&self) -> &Self {
        self.then_events(&[])
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    pub fn then_rejected(&self, expected: &A::Error) -> &Self
    where
        A::Error: PartialEq,
    {
        match &self.result {
            Err(e) => assert!(e == expected, "rejection differs\n{}", debug_diff(expected, e)),
            Ok(events) => panic!("expected the rejection {expected:?}, the command produced {events:?}"),
        }
        self
    }

    /// Asserts the whole state after the events (a diff on failure).
    #[track_caller]
    pub fn then_state(&self, expected: &A::State) -> &Self
    where
        A::State: PartialEq + Debug,
    {
        assert!(*expected == self.state, "state differs from the expected state\n{}", debug_diff(expected, &self.state));
        self
    }
}
