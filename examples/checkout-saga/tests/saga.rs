//! The CheckoutSaga, given/when/then: which commands each event leads to, including compensation.

use checkout_saga::domain::inventory::{InventoryCommand, InventoryReleased, InventoryReservationFailed, InventoryReserved};
use checkout_saga::domain::order::OrderEvent;
use checkout_saga::domain::order::{CancelReason, OrderCancelled, OrderCommand, OrderConfirmed, OrderLine, OrderPlaced};
use checkout_saga::domain::payment::{PaymentCaptured, PaymentCommand, PaymentDeclined, PaymentVoided};
use checkout_saga::saga::{CheckoutAction, CheckoutSaga, CheckoutState, CheckoutStep, PAYMENT_DEADLINE};
use composable_rust::testing::SagaScenario;
use composable_rust::{DomainEvent, Due, Saga, SerializedEvent};
use std::time::Duration;

fn line() -> OrderLine {
    OrderLine { sku: "sku-1".into(), quantity: 2, amount_cents: 2_500, card_token: "tok".into() }
}

fn placed() -> CheckoutAction {
    CheckoutAction::OrderPlaced(OrderPlaced { order_id: "o-1".into(), line: line() })
}

fn reserved() -> CheckoutAction {
    CheckoutAction::InventoryReserved(InventoryReserved { order_id: "o-1".into(), sku: "sku-1".into(), quantity: 2 })
}

fn scenario() -> SagaScenario<CheckoutSaga> {
    SagaScenario::new(CheckoutSaga::default(), (), "o-1")
}

#[test]
fn a_placed_order_reserves_stock() {
    scenario()
        .when(placed())
        .expect_commands(&[InventoryCommand::Reserve { sku: "sku-1".into(), order_id: "o-1".into(), quantity: 2 }])
        .expect_state(&CheckoutState { order_id: "o-1".into(), step: CheckoutStep::ReservingStock, line: Some(line()), stock_released: false });
}

#[test]
fn reserved_stock_leads_to_payment_then_confirmation() {
    scenario().given([placed()]).when(reserved()).expect_commands(&[(PaymentCommand::Capture {
        order_id: "o-1".into(),
        amount_cents: 2_500,
        card_token: "tok".into(),
    })]);
    let captured = CheckoutAction::PaymentCaptured(PaymentCaptured { order_id: "o-1".into(), amount_cents: 2_500 });
    scenario().given([placed(), reserved()]).when(captured.clone()).expect_commands(&[OrderCommand::Confirm { order_id: "o-1".into() }]);
    scenario()
        .given([placed(), reserved(), captured])
        .when(CheckoutAction::OrderConfirmed(OrderConfirmed { order_id: "o-1".into() }))
        .expect_no_commands()
        .check_state(|s| assert!(CheckoutSaga::default().is_complete(s)));
}

#[test]
fn a_declined_payment_releases_stock_before_cancelling() {
    let declined = CheckoutAction::PaymentDeclined(PaymentDeclined { order_id: "o-1".into(), reason: "no".into() });
    let outcome = scenario().given([placed(), reserved()]).when(declined.clone());
    outcome.expect_commands(&[InventoryCommand::Release { sku: "sku-1".into(), order_id: "o-1".into() }]);
    outcome.expect_commands(&[OrderCommand::Cancel { order_id: "o-1".into(), reason: CancelReason::PaymentDeclined }]);
    assert_eq!(outcome.kinds(), vec!["cancel_deadline", "dispatch", "dispatch"], "the payment deadline ends; release, then cancel, in this order");

    let cancelled = CheckoutAction::OrderCancelled(OrderCancelled { order_id: "o-1".into(), reason: CancelReason::PaymentDeclined });
    let released = CheckoutAction::InventoryReleased(InventoryReleased { order_id: "o-1".into(), sku: "sku-1".into(), quantity: 2 });
    scenario()
        .given([placed(), reserved(), declined.clone(), cancelled.clone()])
        .when(released.clone())
        .check_state(|s| assert!(CheckoutSaga::default().is_complete(s)));
    scenario()
        .given([placed(), reserved(), declined])
        .when(cancelled)
        .check_state(|s| assert!(!CheckoutSaga::default().is_complete(s), "not complete until the release is confirmed"));
}

#[test]
fn out_of_stock_cancels_without_charging() {
    let failed =
        CheckoutAction::InventoryReservationFailed(InventoryReservationFailed { order_id: "o-1".into(), sku: "sku-1".into(), requested: 2, available: 0 });
    let outcome = scenario().given([placed()]).when(failed);
    outcome.expect_commands(&[OrderCommand::Cancel { order_id: "o-1".into(), reason: CancelReason::OutOfStock }]);
    outcome.expect_commands::<PaymentCommand>(&[]);
}

#[test]
fn events_out_of_step_are_ignored() {
    scenario().when(reserved()).expect_no_commands().check_state(|s| assert_eq!(s.step, CheckoutStep::Started));
    scenario().given([placed()]).when(placed()).expect_no_commands();
}

#[test]
fn bus_events_decode_to_actions_keyed_by_order_id() {
    let event = OrderEvent::Placed(OrderPlaced { order_id: "o-9".into(), line: line() }).to_serialized(None).unwrap();
    let input = CheckoutSaga::default().decode(&event).unwrap().unwrap();
    assert_eq!(input.instance_id, "o-9");
    assert!(CheckoutSaga::default().decode(&SerializedEvent::new("StockAdded.v1", vec![], None)).unwrap().is_none(), "types the saga ignores");
    assert!(CheckoutSaga::default().decode(&SerializedEvent::new("OrderPlaced.v1", vec![1, 2], None)).is_err(), "garbage payload of a known type");
}

#[test]
fn taking_payment_schedules_the_payment_deadline_and_its_answer_cancels_it() {
    let saga = CheckoutSaga::new(Duration::from_millis(500));
    SagaScenario::new(saga, (), "o-1").given([placed()]).when(reserved()).expect_deadline(
        PAYMENT_DEADLINE,
        Due::After(Duration::from_millis(500)),
        &CheckoutAction::PaymentTimedOut,
    );
    let captured = CheckoutAction::PaymentCaptured(PaymentCaptured { order_id: "o-1".into(), amount_cents: 2_500 });
    SagaScenario::new(saga, (), "o-1").given([placed(), reserved()]).when(captured.clone()).expect_deadline_cancelled(PAYMENT_DEADLINE);
    let answered = SagaScenario::new(saga, (), "o-1").given([placed(), reserved(), captured]);
    assert!(answered.pending_deadlines().is_empty());
    answered.when_time_passes(Duration::from_secs(60)).expect_no_commands().check_state(|s| assert_eq!(s.step, CheckoutStep::Confirming));
}

#[test]
fn a_payment_that_never_answers_is_voided_by_its_deadline_then_compensated() {
    let saga = CheckoutSaga::new(Duration::from_millis(500));
    let waiting = SagaScenario::new(saga, (), "o-1").given([placed(), reserved()]);
    waiting.when_time_passes(Duration::from_millis(499)).expect_no_commands();
    SagaScenario::new(saga, (), "o-1")
        .given([placed(), reserved()])
        .when_time_passes(Duration::from_millis(500))
        .expect_commands(&[PaymentCommand::Void { order_id: "o-1".into() }])
        .check_state(|s| assert_eq!(s.step, CheckoutStep::VoidingPayment));
    let voided = CheckoutAction::PaymentVoided(PaymentVoided { order_id: "o-1".into() });
    let outcome = SagaScenario::new(saga, (), "o-1").given([placed(), reserved(), CheckoutAction::PaymentTimedOut]).when(voided.clone());
    outcome.expect_commands(&[InventoryCommand::Release { sku: "sku-1".into(), order_id: "o-1".into() }]);
    outcome.expect_commands(&[OrderCommand::Cancel { order_id: "o-1".into(), reason: CancelReason::PaymentTimeout }]);
    let cancelled = CheckoutAction::OrderCancelled(OrderCancelled { order_id: "o-1".into(), reason: CancelReason::PaymentTimeout });
    let released = CheckoutAction::InventoryReleased(InventoryReleased { order_id: "o-1".into(), sku: "sku-1".into(), quantity: 2 });
    SagaScenario::new(saga, (), "o-1")
        .given([placed(), reserved(), CheckoutAction::PaymentTimedOut, voided, cancelled])
        .when(released)
        .check_state(|s| assert!(saga.is_complete(s), "complete once the stock is back"));
}

/// The deadline fired while the capture was stored but not yet seen by the saga: the void finds the
/// payment captured and records nothing; the capture, arriving next, confirms the order.
#[test]
fn a_capture_that_beat_the_void_confirms_the_order() {
    let saga = CheckoutSaga::new(Duration::from_millis(500));
    let captured = CheckoutAction::PaymentCaptured(PaymentCaptured { order_id: "o-1".into(), amount_cents: 2_500 });
    SagaScenario::new(saga, (), "o-1")
        .given([placed(), reserved(), CheckoutAction::PaymentTimedOut])
        .when(captured)
        .expect_commands(&[OrderCommand::Confirm { order_id: "o-1".into() }])
        .check_state(|s| assert_eq!(s.step, CheckoutStep::Confirming));
}
