//! The outbox: an event stored while the bus was down is not lost. The append and its publish intent
//! are one atomic write; the process "crashes" before publishing, and the relay started by the next
//! process publishes what the outbox still holds.
//! Run: `cargo run -p composable-rust-basics --example outbox_after_crash`.

use std::sync::Arc;

use composable_rust_core::{Effect, EventBus, EventStore, ExpectedVersion, SerializedEvent, StreamId, Topic};
use composable_rust_memory::{InMemoryEventBus, InMemoryEventStore};
use composable_rust_runtime::outbox::relay_pending;
use composable_rust_runtime::{ExecutionScope, Executor, Feedback};

/// Stores one event meant for `orders`, with no bus at all: the publish cannot happen (as if the
/// process died right after the write).
async fn store_without_publishing(store: Arc<dyn EventStore>) {
    let executor = Executor::builder().store(store).build();
    let event = SerializedEvent::new("OrderPlaced.v1", b"order-1".to_vec(), None);
    let append =
        Effect::<()>::append(StreamId::new("order-1").expect("valid"), ExpectedVersion::NoStream, vec![event]).publish_to(Topic::new("orders").expect("valid"));
    let feedback: Feedback<()> = Arc::new(|_, ()| {});
    executor.run(vec![append.into()], &feedback, &ExecutionScope::default()).await.expect("stored");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    store_without_publishing(Arc::clone(&store)).await;
    println!("pending after the crash: {}", store.pending_publications(10).await.expect("readable").len());
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryEventBus::new());
    let report = relay_pending(Arc::clone(&store), bus).await.expect("relayed");
    println!("relay published {}", report.published);
}

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_core::SubscribeOptions;
    use futures::StreamExt;

    #[tokio::test]
    async fn the_next_process_publishes_what_the_crashed_one_stored() {
        let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
        store_without_publishing(Arc::clone(&store)).await;
        assert_eq!(store.pending_publications(10).await.unwrap().len(), 1, "the intent was stored with the event");

        let bus = Arc::new(InMemoryEventBus::new());
        let mut orders = bus.subscribe_with(&["orders"], SubscribeOptions::exclusive()).await.unwrap();
        let report = relay_pending(Arc::clone(&store), bus.clone()).await.unwrap();
        assert_eq!(report.published, 1);
        let delivered = orders.next().await.unwrap().unwrap();
        assert_eq!(delivered.event().event_type, "OrderPlaced.v1");
        assert!(store.pending_publications(10).await.unwrap().is_empty(), "marked published");
    }
}
