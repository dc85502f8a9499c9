//! A todo list: each todo is a child reducer run with `ForEach`; every edit restarts a 500 ms
//! debounced save of that todo, so typing fast saves once, and one todo's save never cancels another's.
//! Run: `cargo run -p composable-rust-basics --example todos`.

use std::collections::BTreeMap;
use std::time::Duration;

use composable_rust_core::{Effect, Effects, ForEach, Reducer, smallvec};

#[derive(Debug, Clone, PartialEq, Default)]
struct Todo {
    title: String,
    saved: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum TodoAction {
    Edit(String),
    Save,
}

struct TodoReducer;

impl Reducer for TodoReducer {
    type State = Todo;
    type Action = TodoAction;
    type Environment = Duration;

    fn reduce(&self, todo: &mut Todo, action: TodoAction, debounce: &Duration) -> Effects<TodoAction> {
        match action {
            TodoAction::Edit(title) => {
                todo.title = title;
                smallvec![Effect::delay(*debounce, TodoAction::Save).cancel_in_flight("save")]
            }
            TodoAction::Save => {
                todo.saved = Some(todo.title.clone());
                smallvec![]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Todos {
    items: BTreeMap<u32, Todo>,
    unknown: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Todo(u32, TodoAction),
    Unknown(u32),
}

fn todo(a: Action) -> Result<(u32, TodoAction), Action> {
    if let Action::Todo(id, t) = a { Ok((id, t)) } else { Err(a) }
}

fn todos() -> impl Reducer<State = Todos, Action = Action, Environment = Duration> {
    composable_rust_core::combine(
        ForEach::new("todos", TodoReducer, |s: &mut Todos| &mut s.items, |d: &Duration| d, todo, Action::Todo, Action::Unknown),
        Unknowns,
    )
}

/// Records actions for todos that do not exist.
struct Unknowns;

impl Reducer for Unknowns {
    type State = Todos;
    type Action = Action;
    type Environment = Duration;

    fn reduce(&self, state: &mut Todos, action: Action, _: &Duration) -> Effects<Action> {
        if let Action::Unknown(id) = action {
            state.unknown.push(id);
        }
        smallvec![]
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let items = [(1, Todo::default()), (2, Todo::default())].into();
    let store = composable_rust_runtime::Store::new(Todos { items, ..Todos::default() }, todos(), Duration::from_millis(50));
    for title in ["b", "bu", "buy milk"] {
        let _ = store.send(Action::Todo(1, TodoAction::Edit(title.into())));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("saved: {:?}", store.state().items[&1].saved);
}

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_testing::TestStore;

    #[tokio::test]
    async fn fast_edits_save_once_and_todos_debounce_independently() {
        let items = [(1, Todo::default()), (2, Todo::default())].into();
        let mut store = TestStore::new(Todos { items, ..Todos::default() }, todos(), Duration::from_millis(500));
        let edit = |id: u32, t: &str| Action::Todo(id, TodoAction::Edit(t.into()));
        store.send(edit(1, "b"), |s| s.items.get_mut(&1).unwrap().title = "b".into());
        store.send(edit(2, "call"), |s| s.items.get_mut(&2).unwrap().title = "call".into());
        store.advance(Duration::from_millis(300)).await;
        store.send(edit(1, "buy milk"), |s| s.items.get_mut(&1).unwrap().title = "buy milk".into());
        store.advance(Duration::from_millis(200)).await; // todo 2's timer (started at 0) is due
        store.receive(Action::Todo(2, TodoAction::Save), |s| s.items.get_mut(&2).unwrap().saved = Some("call".into())).await;
        store.advance(Duration::from_millis(300)).await; // todo 1's last edit + 500 ms
        store.receive(Action::Todo(1, TodoAction::Save), |s| s.items.get_mut(&1).unwrap().saved = Some("buy milk".into())).await;
        store.send(edit(9, "x"), |_| {});
        store.receive(Action::Unknown(9), |s| s.unknown.push(9)).await;
        store.finish().await;
    }
}
