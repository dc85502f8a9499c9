//! Given/when/then for sagas and other reducers: given these actions or events, when this one
//! arrives (or when time passes), expect these commands, publishes and state. Nothing is executed:
//! the effects the reducer returned are inspected as data.
//!
//! The scenario keeps a virtual clock and the deadlines the saga scheduled (and did not cancel) in
//! its `given` steps: [`SagaScenario::when_time_passes`] fires those that come due, in due order,
//! as the saga runner would (a cancelled deadline never fires; scheduling a name again replaces
//! it). Their actions go through the same encoding as a stored deadline's.

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use composable_rust_core::deadline::{self, Decision};
use composable_rust_core::inspect;
use composable_rust_core::{Append, Deadline, Due, Effect, Publish, Reducer, Saga, SerializedEvent, decode_payload, encode_payload};

use crate::diff::debug_diff;

/// A scenario for one saga instance.
pub struct SagaScenario<S: Saga> {
    saga: S,
    env: S::Environment,
    state: S::State,
    start: DateTime<Utc>,
    elapsed: Duration,
    pending: Vec<Pending>,
}

/// A deadline scheduled and not cancelled: its name, when it is due (since the start), the
/// encoded action.
struct Pending {
    name: String,
    due: Duration,
    payload: Bytes,
}

impl<S: Saga> SagaScenario<S> {
    /// A scenario starting from the saga's initial state for `instance_id`.
    pub fn new(saga: S, env: S::Environment, instance_id: &str) -> Self {
        let state = saga.initial_state(instance_id);
        Self { saga, env, state, start: Utc::now(), elapsed: Duration::ZERO, pending: Vec::new() }
    }

    /// Starts the scenario's clock at `start` (for deadlines due at an instant, [`Due::At`]).
    #[must_use]
    pub fn starting_at(mut self, start: DateTime<Utc>) -> Self {
        self.start = start;
        self
    }

    /// Applies actions that happened before (their effects are discarded, except their deadline
    /// decisions, which the scenario keeps).
    #[must_use]
    pub fn given(mut self, actions: impl IntoIterator<Item = S::Action>) -> Self {
        for a in actions {
            let effects = self.saga.reduce(&mut self.state, a, &self.env);
            self.record_deadlines(&effects);
        }
        self
    }

    /// Lets `by` pass on the scenario's clock: the deadlines that come due meanwhile fire, earliest
    /// first, each reduced as the action the saga scheduled (their own deadline decisions apply
    /// too). The outcome holds the state afterwards and every effect the fired deadlines returned.
    ///
    /// # Panics
    /// If a scheduled action cannot be encoded or decoded (it could not be stored either).
    pub fn when_time_passes(mut self, by: Duration) -> Outcome<S> {
        let until = self.elapsed + by;
        let mut effects = Vec::new();
        while let Some(k) = self.pending.iter().enumerate().filter(|(_, p)| p.due <= until).min_by_key(|(_, p)| p.due).map(|(k, _)| k) {
            let fired = self.pending.remove(k);
            self.elapsed = self.elapsed.max(fired.due);
            let action: S::Action = decode_payload(&fired.payload).unwrap_or_else(|e| panic!("deadline {}: the action does not decode: {e}", fired.name));
            let returned = self.saga.reduce(&mut self.state, action, &self.env).into_vec();
            self.record_deadlines(&returned);
            effects.extend(returned);
        }
        self.elapsed = until;
        Outcome { state: self.state, effects }
    }

    /// The deadlines scheduled and not cancelled (nor fired) so far: name and time left until due.
    pub fn pending_deadlines(&self) -> Vec<(&str, Duration)> {
        let mut out: Vec<(&str, Duration)> = self.pending.iter().map(|p| (p.name.as_str(), p.due.saturating_sub(self.elapsed))).collect();
        out.sort_by_key(|(_, left)| *left);
        out
    }

    fn record_deadlines(&mut self, effects: &[Effect<S::Action>]) {
        let now = self.start + chrono::Duration::from_std(self.elapsed).unwrap_or(chrono::Duration::MAX);
        for decision in deadline::net(deadline::changes(effects)) {
            match decision {
                Decision::Schedule(d) => {
                    self.pending.retain(|p| p.name != d.name);
                    let payload = encode_payload(&d.action).unwrap_or_else(|e| panic!("deadline {}: the action does not encode: {e}", d.name));
                    self.pending.push(Pending { name: d.name.clone(), due: self.elapsed + d.due.remaining(now), payload });
                }
                Decision::Cancel(name) => self.pending.retain(|p| p.name != name),
            }
        }
    }

    /// Applies events that happened before, decoded by the saga (unknown types are ignored).
    #[must_use]
    pub fn given_events(mut self, events: &[SerializedEvent]) -> Self {
        for e in events {
            if let Some(input) = self.saga.decode(e).expect("given event must decode") {
                let effects = self.saga.reduce(&mut self.state, input.action, &self.env);
                self.record_deadlines(&effects);
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

    /// Asserts the effects schedule the deadline `name`, due as `due`, feeding back `action`.
    #[track_caller]
    pub fn expect_deadline(&self, name: &str, due: Due, action: &R::Action) -> &Self
    where
        R::Action: PartialEq + Debug,
    {
        let scheduled = self.deadlines();
        assert!(
            scheduled.iter().any(|d| d.name == name && d.due == due && d.action == *action),
            "expected deadline {name} ({due:?}) feeding back {action:?}; scheduled: {scheduled:?}"
        );
        self
    }

    /// Asserts the effects cancel the deadline `name`.
    #[track_caller]
    pub fn expect_deadline_cancelled(&self, name: &str) -> &Self {
        let cancelled = inspect::cancelled_deadlines(&self.effects);
        assert!(cancelled.contains(&name), "expected deadline {name} to be cancelled; cancelled: {cancelled:?}");
        self
    }

    /// The deadlines the effects schedule.
    pub fn deadlines(&self) -> Vec<&Deadline<R::Action>> {
        inspect::deadlines(&self.effects)
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
