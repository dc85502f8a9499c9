//! `Store` guarantees: a panicking reducer or effect does not wedge it, `Effect::None` starts no
//! task, and a cancel reduced after an action finds the cancellable effect that action started.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{Effect, Reducer, smallvec};
use composable_rust_runtime::{DeadLetterSink, Executor, InMemoryDeadLetters, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// The reducer panics on it.
    Boom,
    /// Feeds `Pong` back through a `Run` effect.
    Ping,
    Pong,
    /// A `Run` effect that panics.
    PanickingEffect,
    /// Returns only `Effect::None`.
    Nothing,
    /// Starts a one-hour delay, cancellable as "timer".
    StartTimer,
    /// Cancels "timer".
    StopTimer,
    Fired,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    pongs: u32,
    fired: u32,
    reduced: u32,
}

struct R;

impl Reducer for R {
    type State = State;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut State, action: Action, (): &()) -> composable_rust_core::Effects<Action> {
        state.reduced += 1;
        match action {
            Action::Boom => panic!("the reducer blew up on Boom"),
            Action::Ping => smallvec![Effect::run(async { Some(Action::Pong) })],
            Action::Pong => {
                state.pongs += 1;
                smallvec![]
            }
            Action::PanickingEffect => smallvec![Effect::run(async { panic!("the effect blew up") })],
            Action::Nothing => smallvec![Effect::None],
            Action::StartTimer => smallvec![Effect::delay(Duration::from_secs(3600), Action::Fired).cancellable("timer")],
            Action::StopTimer => smallvec![Effect::cancel("timer")],
            Action::Fired => {
                state.fired += 1;
                smallvec![]
            }
        }
    }
}

fn store() -> (Store<R>, Arc<InMemoryDeadLetters>) {
    let dead_letters = Arc::new(InMemoryDeadLetters::default());
    let executor = Executor::builder().dead_letters(dead_letters.clone() as Arc<dyn DeadLetterSink>).build();
    (Store::with_executor(State::default(), R, (), executor), dead_letters)
}

#[tokio::test]
async fn a_panicking_reducer_does_not_wedge_the_store() {
    let (s, dead_letters) = store();
    let err = s.send(Action::Boom).unwrap_err();
    assert!(matches!(&err, StoreError::ReducerPanicked { message, .. } if message.contains("the reducer blew up on Boom")), "the sender is told: {err:?}");
    assert_eq!(dead_letters.total(), 1, "and it is dead-lettered");

    // Later sends are reduced and their effects run.
    s.send(Action::Ping).unwrap().finish().await;
    s.send(Action::Ping).unwrap().finish().await;
    assert_eq!(s.state().pongs, 2);
    assert_eq!(s.effects_in_flight(), 0);
}

#[tokio::test]
async fn a_panicking_run_effect_is_dead_lettered_and_the_store_keeps_serving() {
    let (s, dead_letters) = store();
    s.send(Action::PanickingEffect).unwrap().finish().await;
    let letters = dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].what.starts_with("run effect") && letters[0].error.contains("the effect blew up"), "{letters:?}");
    assert_eq!(s.effects_in_flight(), 0, "the panicked effect's task ended");

    s.send(Action::Ping).unwrap().finish().await;
    assert_eq!(s.state().pongs, 1, "the next action's effects ran");
}

#[tokio::test]
async fn a_reduce_returning_only_none_starts_no_task() {
    let (s, _) = store();
    let handle = s.send(Action::Nothing).unwrap();
    assert_eq!(s.effects_in_flight(), 0, "no effect task was started");
    assert!(handle.is_finished(), "nothing to wait for");
    handle.finish().await;
    assert_eq!(s.state().reduced, 1);
}

/// The effects of an action run on a task of their own; a cancel reduced right after it must find
/// the cancellable effect it started, even if that task has not run yet (another worker may run the
/// cancel's task first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_sent_right_after_the_action_finds_its_cancellable_effect() {
    for round in 0..300 {
        let (s, _) = store();
        let started = s.send(Action::StartTimer).unwrap();
        s.send(Action::StopTimer).unwrap().finish().await;
        let settled = tokio::time::timeout(Duration::from_secs(2), started.finish()).await;
        assert!(settled.is_ok(), "round {round}: the one-hour timer was not cancelled (the cancel ran before the timer was registered)");
        assert_eq!(s.state().fired, 0);
    }
}
