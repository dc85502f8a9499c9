//! Reading what a reducer returned, without executing anything: for unit tests and
//! given/when/then helpers. Every helper walks nested `Sequential`, `Parallel` and `Cancellable`
//! effects in order.

use crate::effect::{Effect, EventStoreOperation};
use crate::event::SerializedEvent;
use crate::stream::{ExpectedVersion, StreamId};

/// An `AppendEvents` request found in an effect tree.
#[derive(Debug, Clone, Copy)]
pub struct AppendView<'a> {
    /// Target stream.
    pub stream_id: &'a StreamId,
    /// Expected version.
    pub expected_version: ExpectedVersion,
    /// Events to append.
    pub events: &'a [SerializedEvent],
}

/// A `PublishEvent` request found in an effect tree.
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Event.
    pub event: &'a SerializedEvent,
}

/// Visits every leaf effect in order (depth first).
pub fn for_each_leaf<'a, A>(effects: &'a [Effect<A>], f: &mut impl FnMut(&'a Effect<A>)) {
    for e in effects {
        match e {
            Effect::Sequential(inner) | Effect::Parallel(inner) => for_each_leaf(inner, f),
            Effect::Cancellable { effect, .. } => for_each_leaf(std::slice::from_ref(effect.as_ref()), f),
            leaf => f(leaf),
        }
    }
}

/// All appends, in order.
pub fn appends<A>(effects: &[Effect<A>]) -> Vec<AppendView<'_>> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::EventStore(EventStoreOperation::AppendEvents { stream_id, expected_version, events, .. }) = e {
            out.push(AppendView { stream_id, expected_version: *expected_version, events });
        }
    });
    out
}

/// All publishes, in order.
pub fn publishes<A>(effects: &[Effect<A>]) -> Vec<PublishView<'_>> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::PublishEvent { topic, event, .. } = e {
            out.push(PublishView { topic, event });
        }
    });
    out
}

/// All dispatched commands of type `C` with their target's name, in order.
pub fn commands<C: 'static, A>(effects: &[Effect<A>]) -> Vec<(&str, &C)> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::DispatchCommand { target, command, .. } = e {
            if let Some(c) = command.downcast_ref::<C>() {
                out.push((target.name(), c));
            }
        }
    });
    out
}

/// Names of the leaf effects in order, e.g. `["append_events", "publish_event"]`.
pub fn kinds<A: Send + 'static>(effects: &[Effect<A>]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| out.push(e.kind()));
    out.retain(|k| *k != "none");
    out
}
