//! Streaming effects over virtual time, the debounce helper, and failures reported at the test's own
//! line.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{Clock, Effect, Effects, Reducer, smallvec};
use composable_rust_testing::{TestClock, TestStore};
use futures::FutureExt;

#[derive(Debug, Clone, PartialEq, Default)]
struct Feed {
    prices: Vec<u32>,
    searches: Vec<String>,
    query: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Subscribe,
    Price(u32),
    Type(String),
    Search,
}

struct FeedReducer;

struct Env {
    clock: Arc<dyn Clock>,
}

impl Reducer for FeedReducer {
    type State = Feed;
    type Action = Action;
    type Environment = Env;

    fn reduce(&self, state: &mut Feed, action: Action, env: &Env) -> Effects<Action> {
        match action {
            Action::Subscribe => {
                // Three prices, one a second, on the environment's clock.
                let clock = Arc::clone(&env.clock);
                let prices = futures::stream::unfold(0u32, move |n| {
                    let clock = Arc::clone(&clock);
                    async move {
                        if n == 3 {
                            return None;
                        }
                        clock.sleep(Duration::from_secs(1)).await;
                        Some((Action::Price(100 + n), n + 1))
                    }
                });
                smallvec![Effect::stream(prices).cancellable("prices")]
            }
            Action::Price(p) => {
                state.prices.push(p);
                smallvec![]
            }
            Action::Type(q) => {
                state.query = q;
                smallvec![Effect::debounce("search", Duration::from_millis(300), Action::Search)]
            }
            Action::Search => {
                state.searches.push(state.query.clone());
                smallvec![]
            }
        }
    }
}

fn store() -> TestStore<FeedReducer> {
    let clock = TestClock::new();
    TestStore::with_clock(Feed::default(), FeedReducer, Env { clock: Arc::new(clock.clone()) }, clock)
}

#[tokio::test]
async fn a_stream_sends_three_actions_over_virtual_time_in_order() {
    let mut store = store();
    store.send(Action::Subscribe, |_| {});
    for (n, price) in [100, 101, 102].into_iter().enumerate() {
        store.advance(Duration::from_secs(1)).await;
        store.receive(Action::Price(price), |s| s.prices = (100..=price).collect()).await;
        assert_eq!(store.state().prices.len(), n + 1);
    }
    store.finish().await;
}

#[tokio::test]
async fn a_debounced_search_fires_once_for_a_burst_of_typing() {
    let mut store = store();
    for q in ["r", "ru", "rus", "rust"] {
        store.send(Action::Type(q.into()), |s| s.query = q.into());
        store.advance(Duration::from_millis(100)).await;
    }
    store.advance(Duration::from_millis(300)).await;
    store.receive(Action::Search, |s| s.searches = vec!["rust".into()]).await;
    store.advance(Duration::from_secs(5)).await;
    store.finish().await;
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string())).unwrap_or_default()
}

#[tokio::test]
async fn a_failing_send_reports_the_tests_own_file_and_line() {
    let mut store = store().non_exhaustive();
    let line = line!() + 1;
    let failed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        store.send(Action::Price(7), |s| s.prices = vec![8]);
    }));
    let text = message(&*failed.expect_err("the expected state is wrong"));
    assert!(text.starts_with(&format!("{}:{}:", file!(), line + 1)), "the message names the test's line: {text}");
    assert!(text.contains("state differs"), "{text}");
}

#[tokio::test]
async fn a_failing_receive_reports_the_tests_own_file_and_line() {
    let mut store = store().non_exhaustive();
    store.send(Action::Type("x".into()), |s| s.query = "x".into());
    store.advance(Duration::from_millis(300)).await;
    let line = line!() + 2;
    let failed = AssertUnwindSafe(async {
        store.receive(Action::Price(1), |_| {}).await;
    })
    .catch_unwind()
    .await;
    let Err(panic) = failed else { panic!("the wrong action is expected") };
    let text = message(&*panic);
    assert!(text.starts_with(&format!("{}:{line}:", file!())), "the message names the test's line: {text}");
    assert!(text.contains("differs from the expected one"), "{text}");
}

struct Greeter;

impl Reducer for Greeter {
    type State = Vec<String>;
    type Action = String;
    type Environment = String;

    fn reduce(&self, greetings: &mut Vec<String>, name: String, greeting: &String) -> Effects<String> {
        greetings.push(format!("{greeting}, {name}"));
        smallvec![]
    }
}

#[tokio::test]
async fn the_environment_can_be_changed_mid_test() {
    let mut store = TestStore::new(Vec::new(), Greeter, "hello".to_string());
    store.send("ada".into(), |g| g.push("hello, ada".into()));
    *store.environment_mut() = "bonjour".into();
    store.send("alan".into(), |g| g.push("bonjour, alan".into()));
    store.finish().await;
}

/// Refreshes at most once a second, however often asked: the first request wins.
struct Refresher;

impl Reducer for Refresher {
    type State = u32;
    type Action = bool;
    type Environment = ();

    /// `false`: a request; `true`: the refresh itself.
    fn reduce(&self, refreshes: &mut u32, refresh: bool, (): &()) -> Effects<bool> {
        if refresh {
            *refreshes += 1;
            smallvec![]
        } else {
            smallvec![Effect::throttle("refresh", Duration::from_secs(1), true)]
        }
    }
}

#[tokio::test]
async fn a_throttle_lets_the_first_request_of_each_window_through() {
    let mut store = TestStore::new(0, Refresher, ());
    store.send(false, |_| {});
    store.receive(true, |n| *n = 1).await;
    for _ in 0..3 {
        store.send(false, |_| {});
        store.advance(Duration::from_millis(200)).await;
    }
    store.advance(Duration::from_millis(500)).await; // the first window is over
    store.send(false, |_| {});
    store.receive(true, |n| *n = 2).await;
    store.advance(Duration::from_secs(1)).await;
    store.finish().await;
}
