//! Deterministic unit tests of the three aggregates with `TestStore`.

use std::sync::Arc;

use checkout_saga::domain::inventory::{InventoryAggregate, InventoryCommand, InventoryState};
use checkout_saga::domain::order::{CancelReason, OrderAggregate, OrderCommand, OrderLine, OrderState, OrderStatus};
use checkout_saga::domain::payment::{DECLINED_CARD, PaymentAggregate, PaymentCommand, PaymentState, PaymentStatus};
use checkout_saga::domain::{DomainEnv, INVENTORY_TOPIC, ORDER_TOPIC, PAYMENT_TOPIC};
use composable_rust_core::{Aggregate, ExpectedVersion, Version};
use composable_rust_runtime::EffectRecord;
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore, TestStore};

fn env() -> DomainEnv {
    DomainEnv { store: Arc::new(InMemoryEventStore::new()), bus: Arc::new(InMemoryEventBus::new()) }
}

fn line(card: &str) -> OrderLine {
    OrderLine { sku: "sku-1".into(), quantity: 2, amount_cents: 2_000, card_token: card.into() }
}

/// `(stream, expected version, event types)` of the appends, and `(topic, event type)` of the publishes.
type AppendSeen = (String, ExpectedVersion, Vec<String>);

fn io(log: &[EffectRecord]) -> (Vec<AppendSeen>, Vec<(String, String)>) {
    let mut appends = Vec::new();
    let mut publishes = Vec::new();
    for r in log {
        match r {
            EffectRecord::Append { stream_id, expected_version, event_types, outcome: Ok(_), .. } => {
                appends.push((stream_id.to_string(), *expected_version, event_types.clone()));
            }
            EffectRecord::Publish { topic, event_type, outcome: Ok(()), .. } => publishes.push((topic.clone(), event_type.clone())),
            other => panic!("unexpected effect record {other:?}"),
        }
    }
    (appends, publishes)
}

#[tokio::test]
async fn an_order_is_placed_then_confirmed_and_each_step_is_persisted_then_published() {
    let mut store = TestStore::new(OrderAggregate.initial_state("o-1"), OrderAggregate, env());
    store.send(OrderCommand::Place { order_id: "o-1".into(), line: line("tok") }, |s| {
        s.status = OrderStatus::Placed;
        s.line = Some(line("tok"));
        s.version = Version(1);
    });
    store.send(OrderCommand::Confirm { order_id: "o-1".into() }, |s| {
        s.status = OrderStatus::Confirmed;
        s.version = Version(2);
    });
    store.send(OrderCommand::Cancel { order_id: "o-1".into(), reason: CancelReason::OutOfStock }, |_| {});
    store.settle().await;
    let (appends, publishes) = io(&store.effect_log());
    assert_eq!(
        appends,
        vec![
            ("order-o-1".into(), ExpectedVersion::NoStream, vec!["OrderPlaced.v1".into()]),
            ("order-o-1".into(), ExpectedVersion::Exact(Version(1)), vec!["OrderConfirmed.v1".into()]),
        ]
    );
    assert_eq!(publishes, vec![(ORDER_TOPIC.into(), "OrderPlaced.v1".into()), (ORDER_TOPIC.into(), "OrderConfirmed.v1".into())]);
    store.finish().await;
}

#[tokio::test]
async fn placing_twice_changes_nothing() {
    let placed = OrderState { id: "o-2".into(), version: Version(1), status: OrderStatus::Placed, line: Some(line("tok")) };
    let mut store = TestStore::new(placed, OrderAggregate, env());
    store.send(OrderCommand::Place { order_id: "o-2".into(), line: line("tok") }, |_| {});
    store.finish().await;
}

#[tokio::test]
async fn inventory_reserves_when_in_stock_refuses_otherwise_and_releases() {
    let mut store = TestStore::new(InventoryAggregate.initial_state("sku-1"), InventoryAggregate, env());
    store.send(InventoryCommand::Restock { sku: "sku-1".into(), quantity: 3 }, |s| {
        s.available = 3;
        s.restocked = 3;
        s.version = Version(1);
    });
    store.send(InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-1".into(), quantity: 2 }, |s| {
        s.available = 1;
        s.reservations.insert("o-1".into(), 2);
        s.version = Version(2);
    });
    store.send(InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-1".into(), quantity: 2 }, |_| {});
    store.send(InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-2".into(), quantity: 2 }, |s| s.version = Version(3));
    store.send(InventoryCommand::Release { sku: "sku-1".into(), order_id: "o-1".into() }, |s| {
        s.available = 3;
        s.reservations.clear();
        s.version = Version(4);
    });
    store.send(InventoryCommand::Release { sku: "sku-1".into(), order_id: "o-1".into() }, |_| {});
    store.settle().await;
    let (appends, publishes) = io(&store.effect_log());
    let types: Vec<String> = appends.iter().flat_map(|a| a.2.clone()).collect();
    assert_eq!(types, vec!["StockAdded.v1", "InventoryReserved.v1", "InventoryReservationFailed.v1", "InventoryReleased.v1"]);
    assert_eq!(
        publishes,
        vec![
            (INVENTORY_TOPIC.into(), "InventoryReserved.v1".into()),
            (INVENTORY_TOPIC.into(), "InventoryReservationFailed.v1".into()),
            (INVENTORY_TOPIC.into(), "InventoryReleased.v1".into()),
        ],
        "restocking is persisted but not published"
    );
    store.finish().await;
}

#[tokio::test]
async fn inventory_state_survives_a_snapshot_round_trip() {
    let state = InventoryState { sku: "sku-9".into(), version: Version(7), available: 4, reservations: [("o-1".to_string(), 2)].into(), restocked: 6 };
    let bytes = InventoryAggregate.snapshot(&state).expect("snapshots enabled").expect("encodes");
    assert_eq!(InventoryAggregate.restore(&bytes, Version(7)).expect("decodes"), state);
}

#[tokio::test]
async fn payment_captures_or_declines() {
    let mut store = TestStore::new(PaymentAggregate.initial_state("o-1"), PaymentAggregate, env());
    store.send(PaymentCommand::Capture { order_id: "o-1".into(), amount_cents: 2_000, card_token: "tok_ok".into() }, |s| {
        s.status = PaymentStatus::Captured;
        s.captured_cents = 2_000;
        s.version = Version(1);
    });
    store.send(PaymentCommand::Capture { order_id: "o-1".into(), amount_cents: 2_000, card_token: "tok_ok".into() }, |_| {});
    store.settle().await;
    assert_eq!(store.published(), vec![(PAYMENT_TOPIC.into(), "PaymentCaptured.v1".into())], "a second capture charges nothing");
    store.finish().await;

    let mut store = TestStore::new(PaymentState { order_id: "o-2".into(), ..PaymentState::default() }, PaymentAggregate, env());
    store.send(PaymentCommand::Capture { order_id: "o-2".into(), amount_cents: 500, card_token: DECLINED_CARD.into() }, |s| {
        s.status = PaymentStatus::Declined;
        s.version = Version(1);
    });
    store.settle().await;
    assert_eq!(store.published(), vec![(PAYMENT_TOPIC.into(), "PaymentDeclined.v1".into())]);
    store.finish().await;
}
