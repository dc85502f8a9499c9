//! `Effect::map` lifts a child reducer's effects into its parent's action type; store reads run as
//! effects (a `Run` future reading the store the environment holds) and feed their results back.

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{Effect, EventStore, ExpectedVersion, Reducer, SerializedEvent, StreamId, Version, smallvec};
use composable_rust_runtime::Store;
use composable_rust_testing::InMemoryEventStore;

#[derive(Debug, Clone, PartialEq)]
enum Child {
    Ping,
    Pong(u32),
}

#[derive(Debug, Clone, PartialEq)]
enum Parent {
    Child(Child),
    Load,
    Loaded(Vec<u64>),
}

struct Env {
    store: Arc<dyn EventStore>,
}

/// A child reducer written against its own action type.
fn child(action: &Child) -> Vec<Effect<Child>> {
    match action {
        Child::Ping => vec![Effect::run(async { Some(Child::Pong(1)) }), Effect::delay(Duration::from_millis(1), Child::Pong(2))],
        Child::Pong(_) => vec![],
    }
}

struct ParentReducer;

impl Reducer for ParentReducer {
    type State = Vec<String>;
    type Action = Parent;
    type Environment = Env;

    fn reduce(&self, log: &mut Vec<String>, action: Parent, env: &Env) -> composable_rust_core::Effects<Parent> {
        log.push(format!("{action:?}"));
        match action {
            Parent::Child(c) => child(&c).into_iter().map(|e| e.map(Parent::Child)).collect(),
            Parent::Load => {
                // Effects carry no store handles; a read is a `Run` future over the environment's store.
                let store = Arc::clone(&env.store);
                smallvec![Effect::run(async move {
                    let events = store.read_stream(&StreamId::new("s-1").unwrap(), Version(2), 100).await.ok()?;
                    Some(Parent::Loaded(events.iter().map(|e| e.stream_version.unwrap().0).collect()))
                })]
            }
            Parent::Loaded(_) => smallvec![],
        }
    }
}

#[tokio::test]
async fn mapped_child_effects_feed_parent_actions_back() {
    let store = Store::new(Vec::new(), ParentReducer, Env { store: Arc::new(InMemoryEventStore::new()) });
    store.send(Parent::Child(Child::Ping)).unwrap().finish().await;
    assert_eq!(store.state(), vec!["Child(Ping)", "Child(Pong(1))", "Child(Pong(2))"]);
}

#[tokio::test]
async fn load_events_feeds_the_events_back() {
    let es = Arc::new(InMemoryEventStore::new());
    let events = (0..4).map(|i| SerializedEvent::new("E.v1", vec![i], None)).collect();
    es.append(composable_rust_core::AppendRequest::new(StreamId::new("s-1").unwrap(), ExpectedVersion::NoStream, events)).await.unwrap();
    let store = Store::new(Vec::new(), ParentReducer, Env { store: es });
    store.send(Parent::Load).unwrap().finish().await;
    assert_eq!(store.state(), vec!["Load", "Loaded([2, 3, 4])"]);
}
