//! The Payment aggregate: one per order; captures or declines.

use composable_rust::{Aggregate, DomainEvent, Topic};
use serde::{Deserialize, Serialize};

use super::{PAYMENT_TOPIC, topic};

/// The card token the fake payment provider always declines.
pub const DECLINED_CARD: &str = "tok_declined";

/// The card token for which the fake payment provider never answers: the capture is accepted and
/// nothing is ever decided (no event), so only the saga's payment deadline ends the checkout.
pub const SLOW_CARD: &str = "tok_slow";

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
    /// Given up before the provider answered: any later capture is refused.
    Voided,
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
    /// Give up waiting for the provider (the saga's payment deadline fired). Decided here, where
    /// the payment's truth lives: if it was captured or declined meanwhile, that answer stands and
    /// nothing is recorded; otherwise it is voided and a late answer can no longer charge.
    Void {
        /// Order id.
        order_id: String,
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

/// `PaymentVoided.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoided {
    /// Order id.
    pub order_id: String,
}

/// The events of a payment (new variants go at the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// Captured.
    Captured(PaymentCaptured),
    /// Declined.
    Declined(PaymentDeclined),
    /// Voided: the checkout gave up waiting for the provider.
    Voided(PaymentVoided),
}

/// Event type names.
pub mod event_types {
    /// Payment captured.
    pub const CAPTURED: &str = "PaymentCaptured.v1";
    /// Payment declined.
    pub const DECLINED: &str = "PaymentDeclined.v1";
    /// Payment voided.
    pub const VOIDED: &str = "PaymentVoided.v1";
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PaymentEvent::Captured(_) => event_types::CAPTURED,
            PaymentEvent::Declined(_) => event_types::DECLINED,
            PaymentEvent::Voided(_) => event_types::VOIDED,
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
        match command {
            PaymentCommand::Capture { order_id, .. } | PaymentCommand::Void { order_id } => order_id,
        }
    }

    fn initial_state(id: &str) -> PaymentState {
        PaymentState { order_id: id.to_string(), ..PaymentState::default() }
    }

    fn handle(&self, state: &PaymentState, command: PaymentCommand, (): &()) -> Result<Vec<PaymentEvent>, PaymentError> {
        if state.status != PaymentStatus::None {
            // Already decided: capturing again would charge twice, and a void after an answer
            // leaves the answer standing.
            return Ok(Vec::new());
        }
        let (order_id, amount_cents, card_token) = match command {
            PaymentCommand::Void { order_id } => return Ok(vec![PaymentEvent::Voided(PaymentVoided { order_id })]),
            PaymentCommand::Capture { order_id, amount_cents, card_token } => (order_id, amount_cents, card_token),
        };
        if amount_cents == 0 {
            return Err(PaymentError::ZeroAmount { order_id });
        }
        if card_token == SLOW_CARD {
            // The provider never answers: nothing to record.
            return Ok(Vec::new());
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
            PaymentEvent::Voided(_) => state.status = PaymentStatus::Voided,
        }
    }

    fn topic() -> Option<Topic> {
        topic(PAYMENT_TOPIC)
    }
}
