//! The three aggregates, given/when/then on their decisions, and once through the real
//! `AggregateHandler` to see each decision stored with its expected version, then published.

use std::sync::Arc;

use checkout_saga::domain::inventory::{
    InventoryAggregate, InventoryCommand, InventoryError, InventoryEvent, InventoryReleased, InventoryReservationFailed, InventoryReserved, InventoryState,
    StockAdded,
};
use checkout_saga::domain::order::{OrderAggregate, OrderCommand, OrderConfirmed, OrderError, OrderEvent, OrderLine, OrderPlaced, OrderStatus};
use checkout_saga::domain::payment::{DECLINED_CARD, PaymentAggregate, PaymentCaptured, PaymentCommand, PaymentDeclined, PaymentEvent};
use checkout_saga::domain::{ORDER_TOPIC, PAYMENT_TOPIC};
use composable_rust::runtime::{AggregateError, AggregateHandler, EffectObserver, EffectRecord, Executor};
use composable_rust::testing::{AggregateScenario, InMemoryEventBus, InMemoryEventStore};
use composable_rust::{Aggregate, EventBus, ExpectedVersion, SubscribeOptions, Version};
use futures::StreamExt;
use parking_lot::Mutex;

fn line(card: &str) -> OrderLine {
    OrderLine { sku: "sku-1".into(), quantity: 2, amount_cents: 2_000, card_token: card.into() }
}

fn placed(id: &str) -> OrderEvent {
    OrderEvent::Placed(OrderPlaced { order_id: id.into(), line: line("tok") })
}

#[test]
fn an_order_is_placed_then_confirmed_once() {
    AggregateScenario::new(OrderAggregate, (), "o-1").when(OrderCommand::Place { order_id: "o-1".into(), line: line("tok") }).then_events(&[placed("o-1")]);
    AggregateScenario::new(OrderAggregate, (), "o-1")
        .given([placed("o-1")])
        .when(OrderCommand::Confirm { order_id: "o-1".into() })
        .then_events(&[OrderEvent::Confirmed(OrderConfirmed { order_id: "o-1".into() })]);
    AggregateScenario::new(OrderAggregate, (), "o-1")
        .given([placed("o-1"), OrderEvent::Confirmed(OrderConfirmed { order_id: "o-1".into() })])
        .when(OrderCommand::Place { order_id: "o-1".into(), line: line("tok") })
        .then_nothing();
}

#[test]
fn an_order_with_an_empty_line_or_never_placed_is_rejected() {
    let empty = OrderLine { quantity: 0, ..line("tok") };
    AggregateScenario::new(OrderAggregate, (), "o-2")
        .when(OrderCommand::Place { order_id: "o-2".into(), line: empty })
        .then_rejected(&OrderError::EmptyLine { order_id: "o-2".into() });
    AggregateScenario::new(OrderAggregate, (), "o-3")
        .when(OrderCommand::Confirm { order_id: "o-3".into() })
        .then_rejected(&OrderError::NotPlaced { order_id: "o-3".into() });
}

#[test]
fn inventory_reserves_when_in_stock_refuses_otherwise_and_releases() {
    let stocked = InventoryEvent::StockAdded(StockAdded { quantity: 3 });
    let reserved = InventoryEvent::Reserved(InventoryReserved { order_id: "o-1".into(), sku: "sku-1".into(), quantity: 2 });
    AggregateScenario::new(InventoryAggregate, (), "sku-1")
        .given([stocked.clone()])
        .when(InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-1".into(), quantity: 2 })
        .then_events(std::slice::from_ref(&reserved))
        .then_state(&InventoryState { sku: "sku-1".into(), available: 1, reservations: [("o-1".to_string(), 2)].into(), restocked: 3 });
    AggregateScenario::new(InventoryAggregate, (), "sku-1")
        .given([stocked.clone(), reserved.clone()])
        .when(InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-1".into(), quantity: 2 })
        .then_nothing();
    AggregateScenario::new(InventoryAggregate, (), "sku-1")
        .given([stocked.clone(), reserved.clone()])
        .when(InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-2".into(), quantity: 2 })
        .then_events(&[InventoryEvent::ReservationFailed(InventoryReservationFailed {
            order_id: "o-2".into(),
            sku: "sku-1".into(),
            requested: 2,
            available: 1,
        })]);
    AggregateScenario::new(InventoryAggregate, (), "sku-1")
        .given([stocked.clone(), reserved.clone()])
        .when(InventoryCommand::Release { sku: "sku-1".into(), order_id: "o-1".into() })
        .then_events(&[InventoryEvent::Released(InventoryReleased { order_id: "o-1".into(), sku: "sku-1".into(), quantity: 2 })])
        .then_state(&InventoryState { sku: "sku-1".into(), available: 3, reservations: [].into(), restocked: 3 });
    AggregateScenario::new(InventoryAggregate, (), "sku-1")
        .given([stocked])
        .when(InventoryCommand::Restock { sku: "sku-1".into(), quantity: 0 })
        .then_rejected(&InventoryError::ZeroRestock { sku: "sku-1".into() });
}

#[test]
fn inventory_state_survives_a_snapshot_round_trip() {
    let state = InventoryState { sku: "sku-9".into(), available: 4, reservations: [("o-1".to_string(), 2)].into(), restocked: 6 };
    let bytes = InventoryAggregate::encode_state(&state).expect("snapshots enabled").expect("encodes");
    assert_eq!(InventoryAggregate::decode_state(&bytes).expect("decodes"), state);
}

#[test]
fn payment_captures_once_or_declines() {
    let capture = PaymentCommand::Capture { order_id: "o-1".into(), amount_cents: 2_000, card_token: "tok_ok".into() };
    let captured = PaymentEvent::Captured(PaymentCaptured { order_id: "o-1".into(), amount_cents: 2_000 });
    AggregateScenario::new(PaymentAggregate, (), "o-1").when(capture.clone()).then_events(std::slice::from_ref(&captured));
    AggregateScenario::new(PaymentAggregate, (), "o-1").given([captured]).when(capture).then_nothing();
    AggregateScenario::new(PaymentAggregate, (), "o-2")
        .when(PaymentCommand::Capture { order_id: "o-2".into(), amount_cents: 500, card_token: DECLINED_CARD.into() })
        .then_events(&[PaymentEvent::Declined(PaymentDeclined { order_id: "o-2".into(), reason: "card declined by issuer".into() })]);
}

/// A void decides the race with a late answer: before any answer it voids (and a later capture
/// charges nothing); after one it records nothing.
#[test]
fn a_void_wins_only_before_the_answer() {
    use checkout_saga::domain::payment::{PaymentVoided, SLOW_CARD};
    let void = PaymentCommand::Void { order_id: "o-1".into() };
    let voided = PaymentEvent::Voided(PaymentVoided { order_id: "o-1".into() });
    let captured = PaymentEvent::Captured(PaymentCaptured { order_id: "o-1".into(), amount_cents: 2_000 });
    AggregateScenario::new(PaymentAggregate, (), "o-1").when(void.clone()).then_events(std::slice::from_ref(&voided));
    AggregateScenario::new(PaymentAggregate, (), "o-1")
        .given([voided])
        .when(PaymentCommand::Capture { order_id: "o-1".into(), amount_cents: 2_000, card_token: "tok_ok".into() })
        .then_nothing();
    AggregateScenario::new(PaymentAggregate, (), "o-1").given([captured]).when(void).then_nothing();
    AggregateScenario::new(PaymentAggregate, (), "o-1")
        .when(PaymentCommand::Capture { order_id: "o-1".into(), amount_cents: 2_000, card_token: SLOW_CARD.into() })
        .then_nothing();
}

#[derive(Default)]
struct Log(Mutex<Vec<EffectRecord>>);

impl EffectObserver for Log {
    fn observe(&self, record: EffectRecord) {
        self.0.lock().push(record);
    }
}

#[tokio::test]
async fn each_decision_is_stored_with_its_expected_version_then_published() {
    let bus = Arc::new(InMemoryEventBus::new());
    let mut orders_topic = bus.subscribe_with(&[ORDER_TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    let log = Arc::new(Log::default());
    let executor = Executor::builder().store(Arc::new(InMemoryEventStore::new())).bus(bus.clone()).observer(log.clone()).build();
    let orders = AggregateHandler::new(OrderAggregate, (), executor.clone());
    orders.send(OrderCommand::Place { order_id: "o-1".into(), line: line("tok") }).await.unwrap();
    orders.send(OrderCommand::Confirm { order_id: "o-1".into() }).await.unwrap();
    orders.send(OrderCommand::Place { order_id: "o-1".into(), line: line("tok") }).await.unwrap();
    let rejected = orders.send(OrderCommand::Confirm { order_id: "o-9".into() }).await;
    assert!(matches!(rejected, Err(AggregateError::Rejected(OrderError::NotPlaced { .. }))), "{rejected:?}");

    let appends: Vec<(ExpectedVersion, Vec<String>)> = log
        .0
        .lock()
        .iter()
        .filter_map(|r| match r {
            EffectRecord::Append { expected_version, event_types, outcome: Ok(_), .. } => Some((*expected_version, event_types.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        appends,
        vec![(ExpectedVersion::NoStream, vec!["OrderPlaced.v1".to_string()]), (ExpectedVersion::Exact(Version(1)), vec!["OrderConfirmed.v1".to_string()])]
    );
    for expected in ["OrderPlaced.v1", "OrderConfirmed.v1"] {
        let delivery = orders_topic.next().await.unwrap().unwrap();
        assert_eq!(delivery.event().event_type, expected);
        assert!(delivery.event().stream_version.is_some(), "the published event is the stored one");
    }
    let state = orders.load("o-1", None).await.unwrap().state;
    assert_eq!(state.status, OrderStatus::Confirmed);

    let payments = AggregateHandler::new(PaymentAggregate, (), executor);
    payments.send(PaymentCommand::Capture { order_id: "o-1".into(), amount_cents: 10, card_token: "t".into() }).await.unwrap();
    let published: Vec<String> = log
        .0
        .lock()
        .iter()
        .filter_map(|r| match r {
            EffectRecord::Publish { topic, outcome: Ok(()), stored: true, .. } => Some(topic.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![ORDER_TOPIC.to_string(), ORDER_TOPIC.to_string(), PAYMENT_TOPIC.to_string()]);
}
