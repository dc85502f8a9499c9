//! Composing reducers, in the style of Point-Free's Composable Architecture: [`Scope`] runs a child
//! reducer on a part of the parent's state, [`ForEach`] on each element of a keyed collection,
//! [`IfLet`] on an optional part, and [`Combine`] runs reducers one after the other on the same state.
//!
//! Each child's effects are lifted into the parent's action type with
//! [`Effect::map_scoped`](crate::Effect::map_scoped): actions they feed back are embedded in the
//! parent's action, and their cancellation ids are scoped to the child (and, for `ForEach`, to the
//! element's key), so two children, or two elements, never cancel each other's effects.
//!
//! The child's state is borrowed in place (no clone), and its environment is projected from the
//! parent's, so a child sees only what it needs.

use std::collections::BTreeMap;
use std::fmt;

use crate::effect::Effect;
use crate::reducer::{Effects, Reducer};

/// A child's effects in the parent's action type, their cancellation ids scoped to `scope`.
fn lift<C: Send + 'static, A: Send + 'static>(effects: Effects<C>, scope: &str, embed: fn(C) -> A) -> Effects<A> {
    effects.into_iter().map(|e| e.map_scoped(scope, embed)).collect()
}

/// Runs `child` on a part of the parent's state (see the module docs).
///
/// `extract` takes the child's action out of a parent action (`Err` gives the action back when it is
/// not one of the child's), `embed` puts a child action into the parent's type, `state` and `env`
/// project the parent's state and environment.
pub struct Scope<R: Reducer, S, A, E> {
    name: &'static str,
    child: R,
    state: fn(&mut S) -> &mut R::State,
    env: fn(&E) -> &R::Environment,
    extract: fn(A) -> Result<R::Action, A>,
    embed: fn(R::Action) -> A,
}

impl<R: Reducer, S, A, E> Scope<R, S, A, E> {
    /// A scope named `name` (the scope of the child's cancellation ids).
    pub fn new(
        name: &'static str,
        child: R,
        state: fn(&mut S) -> &mut R::State,
        env: fn(&E) -> &R::Environment,
        extract: fn(A) -> Result<R::Action, A>,
        embed: fn(R::Action) -> A,
    ) -> Self {
        Self { name, child, state, env, extract, embed }
    }
}

impl<R, S, A, E> Reducer for Scope<R, S, A, E>
where
    R: Reducer,
    S: Send + 'static,
    A: Send + 'static,
    E: Send + Sync + 'static,
{
    type State = S;
    type Action = A;
    type Environment = E;

    fn reduce(&self, state: &mut S, action: A, env: &E) -> Effects<A> {
        let Ok(child_action) = (self.extract)(action) else { return Effects::new() };
        lift(self.child.reduce((self.state)(state), child_action, (self.env)(env)), self.name, self.embed)
    }
}

/// Takes a keyed child action out of a parent action (or gives the parent action back).
pub type KeyedExtract<A, K, C> = fn(A) -> Result<(K, C), A>;

/// Runs `child` on the element of a keyed collection that a parent action names (see the module
/// docs). An action for a key that is not in the collection is **not** dropped silently: the
/// reducer feeds back `on_missing(key)`, which a test receives like any other action.
pub struct ForEach<R: Reducer, K, S, A, E> {
    name: &'static str,
    child: R,
    elements: fn(&mut S) -> &mut BTreeMap<K, R::State>,
    env: fn(&E) -> &R::Environment,
    extract: KeyedExtract<A, K, R::Action>,
    embed: fn(K, R::Action) -> A,
    on_missing: fn(K) -> A,
}

impl<R: Reducer, K, S, A, E> ForEach<R, K, S, A, E> {
    /// A `ForEach` named `name`; the cancellation ids of element `key` are scoped to `name/key`.
    pub fn new(
        name: &'static str,
        child: R,
        elements: fn(&mut S) -> &mut BTreeMap<K, R::State>,
        env: fn(&E) -> &R::Environment,
        extract: KeyedExtract<A, K, R::Action>,
        embed: fn(K, R::Action) -> A,
        on_missing: fn(K) -> A,
    ) -> Self {
        Self { name, child, elements, env, extract, embed, on_missing }
    }
}

impl<R, K, S, A, E> Reducer for ForEach<R, K, S, A, E>
where
    R: Reducer,
    K: Ord + Clone + fmt::Debug + Send + Sync + 'static,
    S: Send + 'static,
    A: Send + 'static,
    E: Send + Sync + 'static,
{
    type State = S;
    type Action = A;
    type Environment = E;

    fn reduce(&self, state: &mut S, action: A, env: &E) -> Effects<A> {
        let Ok((key, child_action)) = (self.extract)(action) else { return Effects::new() };
        let Some(element) = (self.elements)(state).get_mut(&key) else {
            tracing::warn!(for_each = self.name, key = ?key, "action for a key that is not in the collection");
            let missing = (self.on_missing)(key);
            return std::iter::once(Effect::run(async move { Some(missing) })).collect();
        };
        let effects = self.child.reduce(element, child_action, (self.env)(env));
        let scope = format!("{}/{key:?}", self.name);
        let embed = self.embed;
        effects
            .into_iter()
            .map(|e| {
                let key = key.clone();
                e.map_scoped(&scope, move |a| embed(key.clone(), a))
            })
            .collect()
    }
}

/// Runs `child` on an optional part of the parent's state, when it is `Some`. An action for an
/// absent child feeds back `on_none()` (a clear, testable outcome instead of a silent drop).
pub struct IfLet<R: Reducer, S, A, E> {
    name: &'static str,
    child: R,
    state: fn(&mut S) -> &mut Option<R::State>,
    env: fn(&E) -> &R::Environment,
    extract: fn(A) -> Result<R::Action, A>,
    embed: fn(R::Action) -> A,
    on_none: fn() -> A,
}

impl<R: Reducer, S, A, E> IfLet<R, S, A, E> {
    /// An `IfLet` named `name` (the scope of the child's cancellation ids).
    pub fn new(
        name: &'static str,
        child: R,
        state: fn(&mut S) -> &mut Option<R::State>,
        env: fn(&E) -> &R::Environment,
        extract: fn(A) -> Result<R::Action, A>,
        embed: fn(R::Action) -> A,
        on_none: fn() -> A,
    ) -> Self {
        Self { name, child, state, env, extract, embed, on_none }
    }
}

impl<R, S, A, E> Reducer for IfLet<R, S, A, E>
where
    R: Reducer,
    S: Send + 'static,
    A: Send + 'static,
    E: Send + Sync + 'static,
{
    type State = S;
    type Action = A;
    type Environment = E;

    fn reduce(&self, state: &mut S, action: A, env: &E) -> Effects<A> {
        let Ok(child_action) = (self.extract)(action) else { return Effects::new() };
        let Some(child_state) = (self.state)(state).as_mut() else {
            tracing::warn!(if_let = self.name, "action for an optional child that is absent");
            let none = (self.on_none)();
            return std::iter::once(Effect::run(async move { Some(none) })).collect();
        };
        lift(self.child.reduce(child_state, child_action, (self.env)(env)), self.name, self.embed)
    }
}

/// Runs `first`, then `second`, on the same state and action; their effects are concatenated (the
/// first's first). Build longer chains by nesting, or with [`combine`].
pub struct Combine<R1, R2> {
    first: R1,
    second: R2,
}

/// `first` then `second` on the same state (see [`Combine`]).
pub fn combine<R1, R2>(first: R1, second: R2) -> Combine<R1, R2>
where
    R1: Reducer,
    R2: Reducer<State = R1::State, Action = R1::Action, Environment = R1::Environment>,
{
    Combine { first, second }
}

impl<R1, R2> Reducer for Combine<R1, R2>
where
    R1: Reducer<Action: Clone>,
    R2: Reducer<State = R1::State, Action = R1::Action, Environment = R1::Environment>,
{
    type State = R1::State;
    type Action = R1::Action;
    type Environment = R1::Environment;

    fn reduce(&self, state: &mut Self::State, action: Self::Action, env: &Self::Environment) -> Effects<Self::Action> {
        let mut effects = self.first.reduce(state, action.clone(), env);
        effects.extend(self.second.reduce(state, action, env));
        effects
    }
}
