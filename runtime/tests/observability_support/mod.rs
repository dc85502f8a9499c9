//! A small shop for the observability tests: an `order` aggregate (place, ship) publishing to
//! `shop.orders`, and a `shipping` saga that answers every placed order with a `Ship` command.
//!
//! Order ids steer the saga: `*-noship` orders are refused shipping by the aggregate (a business
//! rejection the saga handles with `on_error`); `lost-*` orders make the saga dispatch a command no
//! handler takes, followed by a publish (so the dispatch fails, the publish is skipped, and the step
//! is dead-lettered).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{
    Aggregate, CodecError, Dispatch, DomainEvent, Effect, Effects, EventMetadata, Reducer, Saga, SagaInput, SerializedEvent, Topic, smallvec,
};
use composable_rust_runtime::{AggregateHandler, Executor, InMemoryDeadLetters, SagaRunner, SagaRunnerHandle};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore};
use serde::{Deserialize, Serialize};

pub const TOPIC: &str = "shop.orders";

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place { id: String },
    Ship { id: String },
}

/// A command nobody handles.
#[derive(Debug, Clone, PartialEq)]
pub struct Lost {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    Placed { id: String },
    Shipped { id: String },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "OrderPlaced.v1",
            OrderEvent::Shipped { .. } => "OrderShipped.v1",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("order {0} cannot be shipped")]
    CannotShip(String),
}

pub struct Order;

impl Aggregate for Order {
    const AGGREGATE_TYPE: &'static str = "order";
    type State = bool;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Environment = ();

    fn aggregate_id(command: &OrderCommand) -> &str {
        match command {
            OrderCommand::Place { id } | OrderCommand::Ship { id } => id,
        }
    }

    fn initial_state(_id: &str) -> bool {
        false
    }

    fn handle(&self, _placed: &bool, command: OrderCommand, (): &()) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { id } => Ok(vec![OrderEvent::Placed { id }]),
            OrderCommand::Ship { id } if id.ends_with("-noship") => Err(OrderError::CannotShip(id)),
            OrderCommand::Ship { id } => Ok(vec![OrderEvent::Shipped { id }]),
        }
    }

    fn apply(placed: &mut bool, event: &OrderEvent) {
        if let OrderEvent::Placed { .. } = event {
            *placed = true;
        }
    }

    fn topic() -> Option<Topic> {
        Some(Topic::new(TOPIC).unwrap())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShippingAction {
    Placed(String),
    Shipped(String),
    ShipRefused(String),
}

pub struct Shipping;

impl Reducer for Shipping {
    type State = u32;
    type Action = ShippingAction;
    type Environment = ();

    fn reduce(&self, steps: &mut u32, action: ShippingAction, (): &()) -> Effects<ShippingAction> {
        *steps += 1;
        match action {
            ShippingAction::Placed(id) if id.starts_with("lost-") => smallvec![
                Effect::dispatch(Lost { id: id.clone() }),
                Effect::publish(Topic::new("shop.notes").unwrap(), SerializedEvent::new("Note.v1", id.into_bytes(), None)),
            ],
            ShippingAction::Placed(id) => {
                let refused = id.clone();
                smallvec![Dispatch::new(OrderCommand::Ship { id }).on_error(move |_| ShippingAction::ShipRefused(refused)).into()]
            }
            ShippingAction::Shipped(_) | ShippingAction::ShipRefused(_) => smallvec![],
        }
    }
}

impl Saga for Shipping {
    const NAME: &'static str = "shipping";

    fn topics(&self) -> Vec<String> {
        vec![TOPIC.into()]
    }

    fn initial_state(&self, _instance_id: &str) -> u32 {
        0
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<ShippingAction>>, CodecError> {
        if !event.event_type.starts_with("Order") {
            return Ok(None);
        }
        Ok(Some(match event.decode_data::<OrderEvent>()? {
            OrderEvent::Placed { id } => SagaInput { instance_id: id.clone(), action: ShippingAction::Placed(id) },
            OrderEvent::Shipped { id } => SagaInput { instance_id: id.clone(), action: ShippingAction::Shipped(id) },
        }))
    }
}

/// The shop on the in-memory store and bus.
pub struct Shop {
    pub store: Arc<InMemoryEventStore>,
    pub bus: Arc<InMemoryEventBus>,
    pub dead_letters: Arc<InMemoryDeadLetters>,
    pub executor: Executor,
    pub orders: Arc<AggregateHandler<Order>>,
}

impl Shop {
    pub fn new() -> Self {
        let store = Arc::new(InMemoryEventStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let dead_letters = Arc::new(InMemoryDeadLetters::default());
        let executor = Executor::builder().store(store.clone()).bus(bus.clone()).dead_letters(dead_letters.clone()).build();
        let orders = AggregateHandler::new(Order, (), executor.clone()).register().unwrap();
        Self { store, bus, dead_letters, executor, orders }
    }

    pub async fn spawn_shipping(&self) -> SagaRunnerHandle {
        SagaRunner::new(Shipping, (), self.executor.clone()).spawn().await.unwrap()
    }

    pub async fn place(&self, id: &str) {
        self.orders.send(OrderCommand::Place { id: id.into() }).await.unwrap();
    }
}

/// Waits until `done` holds (a liveness bound, not a timing goal: 20 s).
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 20 s");
}

/// An event like the aggregate publishes, for replaying one by hand.
pub fn placed(id: &str) -> SerializedEvent {
    OrderEvent::Placed { id: id.into() }.to_serialized(Some(EventMetadata::now())).unwrap()
}
