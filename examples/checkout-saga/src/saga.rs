//! The CheckoutSaga: drives one order through inventory and payment, and compensates on failure.
//!
//! ```text
//! OrderPlaced ──▶ Reserve stock ──▶ InventoryReserved ──▶ Capture payment ──▶ PaymentCaptured ──▶ Confirm order
//!                      │                                        │
//!                      ▼                                        ▼
//!        InventoryReservationFailed                      PaymentDeclined
//!                      │                                        │
//!                      ▼                                        ▼
//!          Cancel order (no charge)               Release stock + Cancel order
//! ```

use std::sync::Arc;

use composable_rust_core::{CodecError, CommandHandler, Effect, Effects, Reducer, Saga, SagaInput, SerializedEvent, smallvec};
use serde::{Deserialize, Serialize};

use crate::domain::inventory::{self, InventoryCommand, InventoryReleased, InventoryReservationFailed, InventoryReserved};
use crate::domain::order::{self, CancelReason, OrderCancelled, OrderCommand, OrderConfirmed, OrderLine, OrderPlaced};
use crate::domain::payment::{self, PaymentCaptured, PaymentCommand, PaymentDeclined};
use crate::domain::{INVENTORY_TOPIC, ORDER_TOPIC, PAYMENT_TOPIC};

/// Where a checkout is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckoutStep {
    /// Nothing seen yet.
    #[default]
    Started,
    /// Waiting for the stock reservation.
    ReservingStock,
    /// Waiting for the payment.
    TakingPayment,
    /// Waiting for the order confirmation.
    Confirming,
    /// Waiting for the order cancellation.
    Cancelling(CancelReason),
    /// Done: order confirmed.
    Confirmed,
    /// Done: order cancelled.
    Cancelled(CancelReason),
}

/// One checkout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckoutState {
    /// Order id.
    pub order_id: String,
    /// Step.
    pub step: CheckoutStep,
    /// The order line.
    pub line: Option<OrderLine>,
    /// The reserved stock was given back (payment declined).
    pub stock_released: bool,
}

/// The events the saga reacts to (recorded in the saga's stream, so serializable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutAction {
    /// An order was placed.
    OrderPlaced(OrderPlaced),
    /// Stock reserved.
    InventoryReserved(InventoryReserved),
    /// Not enough stock.
    InventoryReservationFailed(InventoryReservationFailed),
    /// Payment taken.
    PaymentCaptured(PaymentCaptured),
    /// Payment declined.
    PaymentDeclined(PaymentDeclined),
    /// Order confirmed.
    OrderConfirmed(OrderConfirmed),
    /// Order cancelled.
    OrderCancelled(OrderCancelled),
    /// Reserved stock given back.
    InventoryReleased(InventoryReleased),
}

/// Handles of the aggregates the saga commands.
#[derive(Clone)]
pub struct CheckoutEnv {
    /// Order aggregate.
    pub orders: Arc<dyn CommandHandler>,
    /// Inventory aggregate.
    pub inventory: Arc<dyn CommandHandler>,
    /// Payment aggregate.
    pub payments: Arc<dyn CommandHandler>,
}

/// The saga reducer.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckoutSaga;

fn cancel(env: &CheckoutEnv, order_id: &str, reason: CancelReason) -> Effect<CheckoutAction> {
    Effect::dispatch(Arc::clone(&env.orders), OrderCommand::Cancel { order_id: order_id.to_string(), reason }, Some(order_id.to_string()))
}

impl Reducer for CheckoutSaga {
    type State = CheckoutState;
    type Action = CheckoutAction;
    type Environment = CheckoutEnv;

    fn reduce(&self, state: &mut CheckoutState, action: CheckoutAction, env: &CheckoutEnv) -> Effects<CheckoutAction> {
        let id = state.order_id.clone();
        let correlation = Some(id.clone());
        match (action, &state.step) {
            (CheckoutAction::OrderPlaced(placed), CheckoutStep::Started) => {
                state.step = CheckoutStep::ReservingStock;
                let command = InventoryCommand::Reserve { sku: placed.line.sku.clone(), order_id: id, quantity: placed.line.quantity };
                state.line = Some(placed.line);
                smallvec![Effect::dispatch(Arc::clone(&env.inventory), command, correlation)]
            }
            (CheckoutAction::InventoryReserved(_), CheckoutStep::ReservingStock) => {
                state.step = CheckoutStep::TakingPayment;
                let Some(line) = &state.line else { return smallvec![] };
                let command = PaymentCommand::Capture { order_id: id, amount_cents: line.amount_cents, card_token: line.card_token.clone() };
                smallvec![Effect::dispatch(Arc::clone(&env.payments), command, correlation)]
            }
            (CheckoutAction::InventoryReservationFailed(_), CheckoutStep::ReservingStock) => {
                state.step = CheckoutStep::Cancelling(CancelReason::OutOfStock);
                smallvec![cancel(env, &id, CancelReason::OutOfStock)]
            }
            (CheckoutAction::PaymentCaptured(_), CheckoutStep::TakingPayment) => {
                state.step = CheckoutStep::Confirming;
                smallvec![Effect::dispatch(Arc::clone(&env.orders), OrderCommand::Confirm { order_id: id.clone() }, correlation)]
            }
            (CheckoutAction::PaymentDeclined(_), CheckoutStep::TakingPayment) => {
                state.step = CheckoutStep::Cancelling(CancelReason::PaymentDeclined);
                let Some(line) = &state.line else { return smallvec![] };
                // Compensate in order: give the stock back, then cancel the order.
                let release =
                    Effect::dispatch(Arc::clone(&env.inventory), InventoryCommand::Release { sku: line.sku.clone(), order_id: id.clone() }, correlation);
                smallvec![release, cancel(env, &id, CancelReason::PaymentDeclined)]
            }
            (CheckoutAction::OrderConfirmed(_), CheckoutStep::Confirming) => {
                state.step = CheckoutStep::Confirmed;
                smallvec![]
            }
            (CheckoutAction::OrderCancelled(c), CheckoutStep::Cancelling(_)) => {
                state.step = CheckoutStep::Cancelled(c.reason);
                smallvec![]
            }
            (CheckoutAction::InventoryReleased(_), _) => {
                state.stock_released = true;
                smallvec![]
            }
            (action, step) => {
                tracing::debug!(?action, ?step, order_id = %id, "event does not apply to this checkout step, ignored");
                smallvec![]
            }
        }
    }
}

impl Saga for CheckoutSaga {
    const NAME: &'static str = "checkout";

    fn topics(&self) -> Vec<String> {
        vec![ORDER_TOPIC.into(), INVENTORY_TOPIC.into(), PAYMENT_TOPIC.into()]
    }

    fn initial_state(&self, instance_id: &str) -> CheckoutState {
        CheckoutState { order_id: instance_id.to_string(), ..CheckoutState::default() }
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<CheckoutAction>>, CodecError> {
        let action = match event.event_type.as_str() {
            order::event_types::PLACED => CheckoutAction::OrderPlaced(event.decode_data()?),
            order::event_types::CONFIRMED => CheckoutAction::OrderConfirmed(event.decode_data()?),
            order::event_types::CANCELLED => CheckoutAction::OrderCancelled(event.decode_data()?),
            inventory::event_types::RESERVED => CheckoutAction::InventoryReserved(event.decode_data()?),
            inventory::event_types::RELEASED => CheckoutAction::InventoryReleased(event.decode_data()?),
            inventory::event_types::RESERVATION_FAILED => CheckoutAction::InventoryReservationFailed(event.decode_data()?),
            payment::event_types::CAPTURED => CheckoutAction::PaymentCaptured(event.decode_data()?),
            payment::event_types::DECLINED => CheckoutAction::PaymentDeclined(event.decode_data()?),
            _ => return Ok(None),
        };
        let instance_id = match &action {
            CheckoutAction::OrderPlaced(e) => e.order_id.clone(),
            CheckoutAction::OrderConfirmed(e) => e.order_id.clone(),
            CheckoutAction::OrderCancelled(e) => e.order_id.clone(),
            CheckoutAction::InventoryReserved(e) => e.order_id.clone(),
            CheckoutAction::InventoryReservationFailed(e) => e.order_id.clone(),
            CheckoutAction::PaymentCaptured(e) => e.order_id.clone(),
            CheckoutAction::PaymentDeclined(e) => e.order_id.clone(),
            CheckoutAction::InventoryReleased(e) => e.order_id.clone(),
        };
        Ok(Some(SagaInput { instance_id, action }))
    }

    fn is_complete(&self, state: &CheckoutState) -> bool {
        // A declined checkout is complete once its compensation (the stock release) is confirmed too.
        match state.step {
            CheckoutStep::Confirmed | CheckoutStep::Cancelled(CancelReason::OutOfStock) => true,
            CheckoutStep::Cancelled(CancelReason::PaymentDeclined) => state.stock_released,
            _ => false,
        }
    }
}
