//! TestStore: exhaustive state assertions, received actions, virtual time, and failures that explain
//! themselves.

use std::time::Duration;

use composable_rust_core::{Effect, ExpectedVersion, Reducer, SerializedEvent, StreamId, Topic, smallvec};
use composable_rust_runtime::EffectRecord;
use composable_rust_testing::TestStore;

#[derive(Debug, Clone, PartialEq, Default)]
struct Search {
    query: String,
    results: Vec<String>,
    searching: bool,
    saved: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Type(String),
    Search,
    Results(Vec<String>),
    Save,
    Saved(u64),
    Cancel,
}

struct SearchReducer;

impl Reducer for SearchReducer {
    type State = Search;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut Search, action: Action, (): &()) -> composable_rust_core::Effects<Action> {
        match action {
            Action::Type(q) => {
                state.query = q;
                // Debounce: each keystroke restarts a 300 ms timer.
                smallvec![Effect::delay(Duration::from_millis(300), Action::Search).cancel_in_flight("debounce")]
            }
            Action::Search => {
                state.searching = true;
                let q = state.query.clone();
                smallvec![Effect::run(async move { Some(Action::Results(vec![format!("{q}-1"), format!("{q}-2")])) })]
            }
            Action::Results(r) => {
                state.searching = false;
                state.results = r;
                smallvec![]
            }
            Action::Save => {
                let event = SerializedEvent::new("SearchSaved.v1", state.query.clone().into_bytes(), None);
                smallvec![
                    Effect::append(StreamId::new("search-1").unwrap(), ExpectedVersion::Any, vec![event])
                        .publish_to(Topic::new("search.events").unwrap())
                        .on_success(|r| Action::Saved(r.next_expected_version.0))
                        .into()
                ]
            }
            Action::Saved(v) => {
                state.saved = u32::try_from(v).unwrap_or(u32::MAX);
                smallvec![]
            }
            Action::Cancel => smallvec![Effect::cancel("debounce")],
        }
    }
}

fn store() -> TestStore<SearchReducer> {
    TestStore::new(Search::default(), SearchReducer, ())
}

#[tokio::test]
async fn debounced_search_runs_on_virtual_time() {
    let mut s = store();
    s.send(Action::Type("ru".into()), |st| st.query = "ru".into());
    s.advance(Duration::from_millis(200)).await;
    s.send(Action::Type("rust".into()), |st| st.query = "rust".into());
    s.advance(Duration::from_millis(200)).await;
    // 400 ms after the first keystroke, but only 200 ms after the last: nothing yet.
    s.advance(Duration::from_millis(100)).await;
    s.receive(Action::Search, |st| st.searching = true).await;
    s.receive(Action::Results(vec!["rust-1".into(), "rust-2".into()]), |st| {
        st.searching = false;
        st.results = vec!["rust-1".into(), "rust-2".into()];
    })
    .await;
    s.finish().await;
}

#[tokio::test]
async fn store_and_bus_effects_are_recorded() {
    let mut s = store();
    s.send(Action::Type("x".into()), |st| st.query = "x".into());
    s.send(Action::Cancel, |_| {});
    s.send(Action::Save, |_| {});
    s.receive(Action::Saved(1), |st| st.saved = 1).await;
    s.settle().await;
    let log = s.effect_log();
    assert!(
        matches!(&log[0], EffectRecord::Append { stream_id, outcome: Ok(_), outbox, .. } if stream_id.as_str() == "search-1" && outbox.len() == 1),
        "{log:?}"
    );
    assert_eq!(s.published(), vec![("search.events".to_string(), "SearchSaved.v1".to_string())]);
    s.finish().await;
}

#[tokio::test]
#[should_panic(expected = "state differs from the expected state")]
async fn a_wrong_state_expectation_fails_with_a_diff() {
    let mut s = store();
    s.send(Action::Results(vec!["a".into()]), |st| st.results = vec!["b".into()]);
}

#[tokio::test]
#[should_panic(expected = "the next action fed back differs")]
async fn receiving_the_wrong_action_fails() {
    let mut s = store();
    s.send(Action::Search, |st| st.searching = true);
    s.receive(Action::Results(vec![]), |_| {}).await;
}

#[tokio::test]
#[should_panic(expected = "effect run(s) still running (1 waiting on the TestClock)")]
async fn ending_with_an_unfinished_delay_fails() {
    let mut s = store();
    s.send(Action::Type("r".into()), |st| st.query = "r".into());
    s.finish().await;
}

#[tokio::test]
#[should_panic(expected = "fed back but never received")]
async fn ending_with_unreceived_actions_fails() {
    let mut s = store();
    s.send(Action::Search, |st| st.searching = true);
    s.settle().await;
    s.finish().await;
}

#[tokio::test]
async fn non_exhaustive_mode_allows_unreceived_actions() {
    let mut s = store().non_exhaustive();
    s.send(Action::Search, |st| st.searching = true);
    s.settle().await;
    s.send(Action::Cancel, |_| {});
    s.finish().await;
}

#[test]
fn inspect_reads_nested_effects_in_order_without_running_them() {
    use composable_rust_core::inspect;
    let mut state = Search { query: "q".into(), ..Search::default() };
    let saved = SearchReducer.reduce(&mut state, Action::Save, &()).into_vec();
    let nested: Vec<Effect<Action>> =
        vec![Effect::Parallel(vec![Effect::Sequential(saved).cancellable("save"), Effect::delay(Duration::from_secs(1), Action::Search)])];
    assert_eq!(inspect::kinds(&nested), vec!["append", "delay"]);
    let appends = inspect::appends(&nested);
    assert_eq!((appends[0].stream_id.as_str(), appends[0].expected_version, appends[0].events.len()), ("search-1", ExpectedVersion::Any, 1));
    // The publish is part of the append (its outbox intent), no longer a separate effect.
    assert_eq!(appends[0].publish_to, vec![Topic::new("search.events").unwrap()]);
    assert!(inspect::publishes(&nested).is_empty(), "no publish of an unstored event");
}

/// Small reducer for the failure-reporting tests below.
#[derive(Debug, Clone, PartialEq)]
enum Timer {
    Start,
    Fired,
    Stop,
    Explode,
    ExplodeBesideARejection,
}

#[derive(Debug, Clone, PartialEq)]
struct Refused;

struct Timers;

impl Reducer for Timers {
    type State = u32;
    type Action = Timer;
    type Environment = ();

    fn reduce(&self, fired: &mut u32, action: Timer, (): &()) -> composable_rust_core::Effects<Timer> {
        match action {
            Timer::Start => smallvec![Effect::delay(Duration::from_secs(30), Timer::Fired).cancellable("timer")],
            Timer::Fired => {
                *fired += 1;
                smallvec![]
            }
            Timer::Stop => smallvec![Effect::cancel("timer")],
            Timer::Explode => smallvec![Effect::run(async { panic!("kaboom in an effect") })],
            Timer::ExplodeBesideARejection => {
                smallvec![Effect::Parallel(vec![Effect::dispatch(Refused), Effect::run(async { panic!("kaboom beside a rejection") })])]
            }
        }
    }
}

/// Refuses every command.
struct Refuser;

#[async_trait::async_trait]
impl composable_rust_core::CommandHandler for Refuser {
    fn name(&self) -> &'static str {
        "refuser"
    }

    async fn handle(&self, _: &composable_rust_core::CommandEnvelope) -> Result<composable_rust_core::CommandOutcome, composable_rust_core::DispatchError> {
        Err(composable_rust_core::DispatchError::Failed { target: "refuser".into(), reason: "refused (test)".into(), retryable: false })
    }
}

async fn finish_message(s: TestStore<Timers>) -> String {
    use futures::FutureExt;
    let panic = std::panic::AssertUnwindSafe(s.finish()).catch_unwind().await.expect_err("finish must fail");
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string())).unwrap_or_default()
}

#[tokio::test]
async fn finish_fails_and_names_a_panicking_effect() {
    let mut s = TestStore::new(0, Timers, ());
    s.send(Timer::Explode, |_| {});
    let message = finish_message(s).await;
    assert!(message.contains("an effect panicked") && message.contains("kaboom in an effect"), "{message}");
}

#[tokio::test]
async fn finish_names_a_panicking_effect_even_when_a_sibling_failed_first() {
    let mut s = TestStore::new(0, Timers, ());
    s.commands().register::<Refused>(std::sync::Arc::new(Refuser)).unwrap();
    s.send(Timer::ExplodeBesideARejection, |_| {});
    let message = finish_message(s).await;
    assert!(message.contains("kaboom beside a rejection"), "{message}");
}

#[tokio::test]
async fn a_cancelled_delay_leaves_the_test_clock() {
    let mut s = TestStore::new(0, Timers, ());
    s.send(Timer::Start, |_| {});
    s.settle().await;
    assert_eq!(s.clock().pending_sleepers(), 1);
    s.send(Timer::Stop, |_| {});
    s.settle().await;
    assert_eq!(s.clock().pending_sleepers(), 0, "the cancelled delay's sleep is deregistered");
    s.advance(Duration::from_secs(60)).await;
    s.finish().await;
}

#[tokio::test]
async fn a_cancel_sent_right_after_the_action_cancels_its_delay() {
    // No settle in between: the delay's task has not run when the cancel is reduced.
    let mut s = TestStore::new(0, Timers, ());
    s.send(Timer::Start, |_| {});
    s.send(Timer::Stop, |_| {});
    s.advance(Duration::from_secs(60)).await;
    assert_eq!(s.clock().pending_sleepers(), 0);
    s.finish().await;
}

#[tokio::test]
#[should_panic(expected = "delay of 30s feeding back Fired")]
async fn receive_fails_at_once_on_virtual_time_naming_the_running_effect() {
    let mut s = TestStore::new(0, Timers, ());
    s.send(Timer::Start, |_| {});
    // The 30 s delay is not due on the TestClock: receive must fail now (not wait on the wall
    // clock), naming what is still running.
    s.receive(Timer::Fired, |n| *n += 1).await;
}
