//! A counter: the smallest reducer, and its exhaustive test.
//! Run: `cargo run -p composable-rust-basics --example counter`.

use std::time::Duration;

use composable_rust_core::{Effect, Effects, Reducer, smallvec};

#[derive(Debug, Clone, PartialEq, Default)]
struct Counter {
    count: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Increment,
    Decrement,
    /// Increments once a second has passed.
    IncrementLater,
}

struct CounterReducer;

impl Reducer for CounterReducer {
    type State = Counter;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut Counter, action: Action, (): &()) -> Effects<Action> {
        match action {
            Action::Increment => state.count += 1,
            Action::Decrement => state.count -= 1,
            Action::IncrementLater => return smallvec![Effect::delay(Duration::from_secs(1), Action::Increment)],
        }
        smallvec![]
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = composable_rust_runtime::Store::new(Counter::default(), CounterReducer, ());
    for action in [Action::Increment, Action::Increment, Action::Decrement, Action::IncrementLater] {
        store.send(action).expect("the store is running").finish().await;
    }
    println!("count = {}", store.state().count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_testing::TestStore;

    #[tokio::test]
    async fn counts_and_increments_later_on_virtual_time() {
        let mut store = TestStore::new(Counter::default(), CounterReducer, ());
        store.send(Action::Increment, |s| s.count = 1);
        store.send(Action::Decrement, |s| s.count = 0);
        store.send(Action::IncrementLater, |_| {});
        store.advance(Duration::from_secs(1)).await;
        store.receive(Action::Increment, |s| s.count = 1).await;
        store.finish().await;
    }
}
