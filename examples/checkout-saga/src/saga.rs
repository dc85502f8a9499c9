//! The CheckoutSaga: drives one order through inventory and payment, and compensates on failure.
//!
//! ```text
//! OrderPlaced ──▶ Reserve stock ──▶ InventoryReserved ──▶ Capture payment ──▶ PaymentCaptured ──▶ Confirm order
//!                      │                                        │
//!                      ▼                                        ▼
//!        InventoryReservationFailed               PaymentDeclined (or the payment deadline)
//!                      │                                        │
//!                      ▼                                        ▼
//!          Cancel order (no charge)               Release stock + Cancel order
//! ```
//!
//! Capturing the payment also schedules the durable deadline `payment`
//! ([`CheckoutSaga::payment_timeout`]); the payment's answer cancels it. If the deadline fires first
//! (also after a restart: it is stored with the saga's step), the saga asks the Payment aggregate to
//! void the payment: the aggregate owns the truth, so an answer that was stored but not yet seen by
//! the saga wins the race (`PaymentCaptured` confirms as usual), and only a payment voided before any
//! answer compensates as for a declined card, with [`CancelReason::PaymentTimeout`].

use std::time::Duration;

use composable_rust::{CodecError, Dispatch, DomainEvent, Effect, Effects, Reducer, Saga, SagaInput, SerializedEvent, smallvec};
use serde::{Deserialize, Serialize};

use crate::domain::inventory::{self, InventoryCommand, InventoryEvent, InventoryReleased, InventoryReservationFailed, InventoryReserved};
use crate::domain::order::{self, CancelReason, OrderCancelled, OrderCommand, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced};
use crate::domain::payment::{self, PaymentCaptured, PaymentCommand, PaymentDeclined, PaymentEvent, PaymentVoided};
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
    /// The payment deadline fired: waiting for the Payment aggregate to void it (or for the answer
    /// that beat the void).
    VoidingPayment,
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
    /// The payment deadline fired: the provider did not answer in time.
    PaymentTimedOut,
    /// The payment was voided before the provider answered.
    PaymentVoided(PaymentVoided),
}

/// The name of the deadline that bounds the wait for the payment provider.
pub const PAYMENT_DEADLINE: &str = "payment";

/// The saga reducer. It needs no environment: the commands it dispatches are routed by the
/// runtime to the aggregate handlers registered for their types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutSaga {
    /// How long the saga waits for the payment provider's answer before cancelling the order and
    /// releasing its stock.
    pub payment_timeout: Duration,
}

impl CheckoutSaga {
    /// A saga that waits `payment_timeout` for each payment.
    pub fn new(payment_timeout: Duration) -> Self {
        Self { payment_timeout }
    }
}

impl Default for CheckoutSaga {
    /// Waits 30 s for each payment.
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

/// Compensates a checkout whose payment failed: gives the stock back, then cancels the order.
fn compensate(state: &mut CheckoutState, reason: CancelReason) -> Effects<CheckoutAction> {
    let id = state.order_id.clone();
    state.step = CheckoutStep::Cancelling(reason);
    let Some(line) = &state.line else { return smallvec![] };
    let release = command(InventoryCommand::Release { sku: line.sku.clone(), order_id: id.clone() }, &id);
    smallvec![release, cancel(&id, reason)]
}

fn cancel(order_id: &str, reason: CancelReason) -> Effect<CheckoutAction> {
    Dispatch::new(OrderCommand::Cancel { order_id: order_id.to_string(), reason }).correlated(order_id).into()
}

fn command<C: std::any::Any + Send + Sync + std::fmt::Debug + PartialEq>(command: C, order_id: &str) -> Effect<CheckoutAction> {
    Dispatch::new(command).correlated(order_id).into()
}

impl Reducer for CheckoutSaga {
    type State = CheckoutState;
    type Action = CheckoutAction;
    type Environment = ();

    fn reduce(&self, state: &mut CheckoutState, action: CheckoutAction, (): &()) -> Effects<CheckoutAction> {
        let id = state.order_id.clone();
        match (action, &state.step) {
            (CheckoutAction::OrderPlaced(placed), CheckoutStep::Started) => {
                state.step = CheckoutStep::ReservingStock;
                let reserve = InventoryCommand::Reserve { sku: placed.line.sku.clone(), order_id: id.clone(), quantity: placed.line.quantity };
                state.line = Some(placed.line);
                smallvec![command(reserve, &id)]
            }
            (CheckoutAction::InventoryReserved(_), CheckoutStep::ReservingStock) => {
                state.step = CheckoutStep::TakingPayment;
                let Some(line) = &state.line else { return smallvec![] };
                let capture = PaymentCommand::Capture { order_id: id.clone(), amount_cents: line.amount_cents, card_token: line.card_token.clone() };
                // Stored with this step: a restart does not lose it.
                smallvec![Effect::deadline_after(PAYMENT_DEADLINE, self.payment_timeout, CheckoutAction::PaymentTimedOut), command(capture, &id)]
            }
            (CheckoutAction::InventoryReservationFailed(_), CheckoutStep::ReservingStock) => {
                state.step = CheckoutStep::Cancelling(CancelReason::OutOfStock);
                smallvec![cancel(&id, CancelReason::OutOfStock)]
            }
            (CheckoutAction::PaymentCaptured(_), CheckoutStep::TakingPayment | CheckoutStep::VoidingPayment) => {
                state.step = CheckoutStep::Confirming;
                smallvec![Effect::cancel_deadline(PAYMENT_DEADLINE), command(OrderCommand::Confirm { order_id: id.clone() }, &id)]
            }
            (CheckoutAction::PaymentDeclined(_), CheckoutStep::TakingPayment | CheckoutStep::VoidingPayment) => {
                let mut effects = compensate(state, CancelReason::PaymentDeclined);
                effects.insert(0, Effect::cancel_deadline(PAYMENT_DEADLINE));
                effects
            }
            (CheckoutAction::PaymentTimedOut, CheckoutStep::TakingPayment) => {
                // The answer may be stored and on its way: the aggregate decides.
                state.step = CheckoutStep::VoidingPayment;
                smallvec![command(PaymentCommand::Void { order_id: id.clone() }, &id)]
            }
            (CheckoutAction::PaymentVoided(_), CheckoutStep::VoidingPayment) => compensate(state, CancelReason::PaymentTimeout),
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
        let known = |types: &[&str]| types.contains(&event.event_type.as_str());
        let action = if known(&[order::event_types::PLACED, order::event_types::CONFIRMED, order::event_types::CANCELLED]) {
            match OrderEvent::from_serialized(event)? {
                OrderEvent::Placed(e) => CheckoutAction::OrderPlaced(e),
                OrderEvent::Confirmed(e) => CheckoutAction::OrderConfirmed(e),
                OrderEvent::Cancelled(e) => CheckoutAction::OrderCancelled(e),
            }
        } else if known(&[inventory::event_types::RESERVED, inventory::event_types::RESERVATION_FAILED, inventory::event_types::RELEASED]) {
            match InventoryEvent::from_serialized(event)? {
                InventoryEvent::Reserved(e) => CheckoutAction::InventoryReserved(e),
                InventoryEvent::ReservationFailed(e) => CheckoutAction::InventoryReservationFailed(e),
                InventoryEvent::Released(e) => CheckoutAction::InventoryReleased(e),
                InventoryEvent::StockAdded(_) => return Ok(None),
            }
        } else if known(&[payment::event_types::CAPTURED, payment::event_types::DECLINED, payment::event_types::VOIDED]) {
            match PaymentEvent::from_serialized(event)? {
                PaymentEvent::Captured(e) => CheckoutAction::PaymentCaptured(e),
                PaymentEvent::Declined(e) => CheckoutAction::PaymentDeclined(e),
                PaymentEvent::Voided(e) => CheckoutAction::PaymentVoided(e),
            }
        } else {
            return Ok(None);
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
            CheckoutAction::PaymentVoided(e) => e.order_id.clone(),
            // Fed back by the deadline, never decoded from the bus.
            CheckoutAction::PaymentTimedOut => return Ok(None),
        };
        Ok(Some(SagaInput { instance_id, action }))
    }

    fn is_complete(&self, state: &CheckoutState) -> bool {
        // A declined checkout is complete once its compensation (the stock release) is confirmed too.
        match state.step {
            CheckoutStep::Confirmed | CheckoutStep::Cancelled(CancelReason::OutOfStock) => true,
            CheckoutStep::Cancelled(CancelReason::PaymentDeclined | CancelReason::PaymentTimeout) => state.stock_released,
            _ => false,
        }
    }
}
