//! Reading what a reducer returned, without executing anything: for unit tests and
//! given/when/then helpers. Every helper walks nested `Sequential`, `Parallel` and `Cancellable`
//! effects in order. (Effects also compare with `==`; these helpers are for partial checks.)

use crate::deadline::Deadline;
use crate::effect::{Append, Effect, Publish};

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
pub fn appends<A>(effects: &[Effect<A>]) -> Vec<&Append<A>> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::Append(a) = e {
            out.push(a);
        }
    });
    out
}

/// All publishes of events that are not stored, in order.
pub fn publishes<A>(effects: &[Effect<A>]) -> Vec<&Publish<A>> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::Publish(p) = e {
            out.push(p);
        }
    });
    out
}

/// All dispatched commands of type `C`, in order.
pub fn commands<C: 'static, A>(effects: &[Effect<A>]) -> Vec<&C> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::Dispatch(d) = e {
            if let Some(c) = d.command.downcast_ref::<C>() {
                out.push(c);
            }
        }
    });
    out
}

/// Names of the leaf effects in order, e.g. `["append", "dispatch"]`.
pub fn kinds<A: Send + 'static>(effects: &[Effect<A>]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| out.push(e.kind()));
    out.retain(|k| *k != "none");
    out
}

/// All deadlines scheduled, in order.
pub fn deadlines<A>(effects: &[Effect<A>]) -> Vec<&Deadline<A>> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::Deadline(d) = e {
            out.push(d);
        }
    });
    out
}

/// The names of all deadlines cancelled, in order.
pub fn cancelled_deadlines<A>(effects: &[Effect<A>]) -> Vec<&str> {
    let mut out = Vec::new();
    for_each_leaf(effects, &mut |e| {
        if let Effect::CancelDeadline(name) = e {
            out.push(name.as_str());
        }
    });
    out
}
