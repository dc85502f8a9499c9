//! Deadlines: named timers a reducer schedules for itself and cancels by name.
//!
//! A reducer returns [`Effect::Deadline`] ("feed me `action` in 30 s unless I cancel `payment`")
//! and [`Effect::CancelDeadline`]. Both are **decisions of the step that returned them**: they take
//! effect when the reducer returns, wherever they sit in the returned tree, before any other effect
//! runs (a failing effect before them in a sequence does not skip them). Within one step they apply
//! in tree order; scheduling a name that is already scheduled replaces it; cancelling a name that
//! is not scheduled does nothing.
//!
//! Where they live depends on the runtime:
//! - **Saga runner**: durable. The changes are stored with the step's own record in one atomic write
//!   (the same append), found by their due time, claimed by exactly one worker at a time, and fed
//!   to the instance as a follow-up step: recorded, de-duplicated, acknowledged like any event. A
//!   deadline due while no worker runs fires when one starts again (late, never lost). A deadline
//!   cancelled before it fired never reaches the instance.
//! - **`Store`, `TestStore`**: an in-process timer on the runtime's clock, cancellable by name
//!   (virtual time in tests), lost if the process dies.
//!
//! The reducer sees the same thing in both: the action, once, at or after the due time, unless it
//! cancelled the name first.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::effect::Effect;

/// When a deadline comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Due {
    /// This long after the step that scheduled it (on the runtime's clock).
    After(Duration),
    /// At this instant (an instant already past fires at once).
    At(DateTime<Utc>),
}

impl Due {
    /// The instant this is due, for a step deciding it at `now`.
    pub fn instant(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            // Saturates: a duration too long to represent is due at the end of time, not a panic.
            Due::After(d) => chrono::Duration::from_std(*d).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC),
            Due::At(at) => *at,
        }
    }

    /// How long from `now` until this is due (zero when already due).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        match self {
            Due::After(d) => *d,
            Due::At(at) => (*at - now).to_std().unwrap_or(Duration::ZERO),
        }
    }
}

/// "Feed `action` back when `due`, unless the name is cancelled first": the payload of
/// [`Effect::Deadline`].
#[derive(Debug, Clone, PartialEq)]
pub struct Deadline<A> {
    /// The name, unique per instance (scheduling it again replaces the earlier one).
    pub name: String,
    /// When it comes due.
    pub due: Due,
    /// What the instance receives then.
    pub action: A,
}

/// One deadline decision of a step, in tree order (what [`changes`] returns).
#[derive(Debug, PartialEq)]
pub enum Decision<'a, A> {
    /// Schedule (or replace) a deadline.
    Schedule(&'a Deadline<A>),
    /// Cancel the deadline of this name.
    Cancel(&'a str),
}

/// Every deadline decision in `effects`, depth first in tree order (nested `Parallel`,
/// `Sequential` and `Cancellable` included).
pub fn changes<A>(effects: &[Effect<A>]) -> Vec<Decision<'_, A>> {
    let mut out = Vec::new();
    crate::inspect::for_each_leaf(effects, &mut |e| match e {
        Effect::Deadline(d) => out.push(Decision::Schedule(d)),
        Effect::CancelDeadline(name) => out.push(Decision::Cancel(name.as_str())),
        _ => {}
    });
    out
}

/// Whether `effects` decide anything about deadlines (cheap check before [`changes`]).
pub fn any<A>(effects: &[Effect<A>]) -> bool {
    let mut found = false;
    crate::inspect::for_each_leaf(effects, &mut |e| found |= matches!(e, Effect::Deadline(_) | Effect::CancelDeadline(_)));
    found
}

/// The net result of a step's decisions per name, in the order names were first decided: the last
/// schedule of a name, or its cancellation if that came last.
pub fn net<'a, A>(decisions: Vec<Decision<'a, A>>) -> Vec<Decision<'a, A>> {
    let mut out: Vec<Decision<'a, A>> = Vec::new();
    for d in decisions {
        let name = match &d {
            Decision::Schedule(s) => s.name.as_str(),
            Decision::Cancel(n) => n,
        };
        let same = |x: &Decision<'a, A>| match x {
            Decision::Schedule(s) => s.name == name,
            Decision::Cancel(n) => *n == name,
        };
        match out.iter().position(same) {
            Some(k) => out[k] = d,
            None => out.push(d),
        }
    }
    out
}

/// Why a decision cannot be kept, if it cannot: an empty name. Every runtime refuses such a
/// deadline the same way (a dead letter; the rest of the step stands).
pub fn refusal<A>(decision: &Decision<'_, A>) -> Option<String> {
    let name = match decision {
        Decision::Schedule(d) => d.name.as_str(),
        Decision::Cancel(n) => n,
    };
    name.is_empty().then(|| "a deadline needs a non-empty name; this one was ignored".to_string())
}

/// The scoped form of a deadline name inside `scope` (a `ForEach` key): names of different scopes
/// never match. The scope's length goes first, so no scope and name read as another pair.
pub fn scoped_name(scope: &str, name: &str) -> String {
    format!("{}:{scope}/{name}", scope.len())
}

/// Who a stored deadline belongs to: a consumer (e.g. `saga.checkout`) and one of its instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadlineOwner {
    /// The consumer whose workers fire it (a saga's name, `saga.{NAME}`).
    pub consumer: String,
    /// The instance (correlation id) it is fed to.
    pub instance: String,
}

impl DeadlineOwner {
    /// The owner `instance` of `consumer`.
    pub fn new(consumer: impl Into<String>, instance: impl Into<String>) -> Self {
        Self { consumer: consumer.into(), instance: instance.into() }
    }
}

/// A deadline as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadline {
    /// Unique id (derived by the runtime from the step that scheduled it and the name, so that the
    /// same step scheduling again gives the same id).
    pub id: Uuid,
    /// Whose it is.
    pub owner: DeadlineOwner,
    /// Its name within the instance.
    pub name: String,
    /// When it comes due.
    pub due_at: DateTime<Utc>,
    /// The encoded action.
    pub payload: Bytes,
}

/// A deadline change stored atomically with an append ([`crate::AppendRequest::deadlines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineChange {
    /// Schedules a deadline, replacing a pending (not fired) one of the same owner and name.
    Schedule(StoredDeadline),
    /// Deletes the pending (not fired) deadline of this owner and name, if any.
    Cancel {
        /// Whose.
        owner: DeadlineOwner,
        /// Which.
        name: String,
    },
    /// Marks the deadline `id` fired. The whole append is refused with
    /// [`crate::EventStoreError::DeadlineNotPending`] if it is not pending any more (cancelled,
    /// replaced, or fired by someone else): the append that records the firing and the deadline's
    /// end are one decision.
    Fire {
        /// The deadline.
        id: Uuid,
    },
}

/// A deadline handed to a worker by [`crate::EventStore::claim_due_deadlines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDeadline {
    /// The deadline.
    pub deadline: StoredDeadline,
    /// Whether an append already marked it fired: the step feeding it to the instance was recorded,
    /// but the worker did not get to [`crate::EventStore::complete_deadline`] (it died, or the
    /// step's effects failed). The worker runs the recorded step's effects again, then completes it.
    pub fired: bool,
    /// How many times it was claimed, this claim included.
    pub claims: u32,
}
