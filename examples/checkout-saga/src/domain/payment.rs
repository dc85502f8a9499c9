//! The Payment aggregate: one per order; captures or declines.

use composable_rust::{Aggregate, DomainEvent, Topic};
use serde::{Deserialize, Serialize};

use super::{PAYMENT_TOPIC, topic};

/// The card token the fake payment provider always declines.
pub const DECLINED_CARD: &str = "tok_declined";

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaymentStatus {
    /// Nothing happened yet.
    #[default]
    None,
    /// Money taken.
    Captured,
    /// Card declined.
    Declined,
}

/// One order's payment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaymentState {
    /// Order id.
    pub order_id: String,
    /// Status.
    pub status: PaymentStatus,
    /// Amount captured.
    pub captured_cents: u64,
    /// How many captures succeeded (more than one would be a double charge).
    pub captures: u32,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Take the money.
    Capture {
        /// Order id.
        order_id: String,
        /// Amount.
        amount_cents: u64,
        /// Card token.
        card_token: String,
    },
}

/// `PaymentCaptured.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    /// Order id.
    pub order_id: String,
    /// Amount.
    pub amount_cents: u64,
}

/// `PaymentDeclined.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// Order id.
    pub order_id: String,
    /// Why.
    pub reason: String,
}

/// The events of a payment (new variants go at the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// Captured.
    Captured(PaymentCaptured),
    /// Declined.
    Declined(PaymentDeclined),
}

/// Event type names.
pub mod event_types {
    /// Payment captured.
    pub const CAPTURED: &str = "PaymentCaptured.v1";
    /// Payment declined.
    pub const DECLINED: &str = "PaymentDeclined.v1";
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PaymentEvent::Captured(_) => event_types::CAPTURED,
            PaymentEvent::Declined(_) => event_types::DECLINED,
        }
    }
}

/// Why a payment command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// Capturing nothing.
    #[error("payment for {order_id}: the amount must be positive")]
    ZeroAmount {
        /// The order.
        order_id: String,
    },
}

/// The Payment aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentAggregate;

impl Aggregate for PaymentAggregate {
    const AGGREGATE_TYPE: &'static str = "payment";
    type State = PaymentState;
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Environment = ();

    fn aggregate_id(command: &PaymentCommand) -> &str {
        let PaymentCommand::Capture { order_id, .. } = command;
        order_id
    }

    fn initial_state(id: &str) -> PaymentState {
        PaymentState { order_id: id.to_string(), ..PaymentState::default() }
    }

    fn handle(&self, state: &PaymentState, command: PaymentCommand, (): &()) -> Result<Vec<PaymentEvent>, PaymentError> {
        let PaymentCommand::Capture { order_id, amount_cents, card_token } = command;
        if state.status != PaymentStatus::None {
            // Already decided: capturing again would charge twice.
            return Ok(Vec::new());
        }
        if amount_cents == 0 {
            return Err(PaymentError::ZeroAmount { order_id });
        }
        if card_token == DECLINED_CARD {
            Ok(vec![PaymentEvent::Declined(PaymentDeclined { order_id, reason: "card declined by issuer".into() })])
        } else {
            Ok(vec![PaymentEvent::Captured(PaymentCaptured { order_id, amount_cents })])
        }
    }

    fn apply(state: &mut PaymentState, event: &PaymentEvent) {
        match event {
            PaymentEvent::Captured(e) => {
                state.status = PaymentStatus::Captured;
                state.captured_cents += e.amount_cents;
                state.captures += 1;
            }
            PaymentEvent::Declined(_) => state.status = PaymentStatus::Declined,
        }
    }

    fn topic() -> Option<Topic> {
        topic(PAYMENT_TOPIC)
    }
}
