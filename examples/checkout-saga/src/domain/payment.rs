//! The Payment aggregate: one per order; captures or declines.

use composable_rust_core::{Aggregate, CodecError, Effects, Reducer, SerializedEvent, Version, smallvec};
use serde::{Deserialize, Serialize};

use super::{DomainEnv, PAYMENT_TOPIC, persist_then_publish, stream_of};

/// The card token the simulated payment provider always declines.
pub const DECLINED_CARD: &str = "tok_declined";

/// Payment status.
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

/// A payment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaymentState {
    /// Order id.
    pub order_id: String,
    /// Stream version.
    pub version: Version,
    /// Status.
    pub status: PaymentStatus,
    /// Amount captured.
    pub captured_cents: u64,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Capture the amount.
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

/// Event type names.
pub mod event_types {
    /// Captured.
    pub const CAPTURED: &str = "PaymentCaptured.v1";
    /// Declined.
    pub const DECLINED: &str = "PaymentDeclined.v1";
}

/// The Payment reducer.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentAggregate;

impl Reducer for PaymentAggregate {
    type State = PaymentState;
    type Action = PaymentCommand;
    type Environment = DomainEnv;

    fn reduce(&self, state: &mut PaymentState, command: PaymentCommand, env: &DomainEnv) -> Effects<PaymentCommand> {
        let PaymentCommand::Capture { order_id, amount_cents, card_token } = command;
        let Some(stream) = stream_of(Self::AGGREGATE_TYPE, &order_id) else { return smallvec![] };
        if state.status != PaymentStatus::None {
            return smallvec![];
        }
        let loaded = state.version;
        state.order_id.clone_from(&order_id);
        state.version = loaded.next();
        if card_token == DECLINED_CARD {
            state.status = PaymentStatus::Declined;
            let event = PaymentDeclined { order_id: order_id.clone(), reason: "card declined by issuer".into() };
            persist_then_publish(env, &stream, loaded, PAYMENT_TOPIC, event_types::DECLINED, &event, &order_id).into_iter().collect()
        } else {
            state.status = PaymentStatus::Captured;
            state.captured_cents = amount_cents;
            let event = PaymentCaptured { order_id: order_id.clone(), amount_cents };
            persist_then_publish(env, &stream, loaded, PAYMENT_TOPIC, event_types::CAPTURED, &event, &order_id).into_iter().collect()
        }
    }
}

impl Aggregate for PaymentAggregate {
    const AGGREGATE_TYPE: &'static str = "payment";

    fn aggregate_id(command: &PaymentCommand) -> String {
        let PaymentCommand::Capture { order_id, .. } = command;
        order_id.clone()
    }

    fn initial_state(&self, id: &str) -> PaymentState {
        PaymentState { order_id: id.to_string(), ..PaymentState::default() }
    }

    fn apply(&self, state: &mut PaymentState, event: &SerializedEvent) -> Result<(), CodecError> {
        match event.event_type.as_str() {
            event_types::CAPTURED => {
                state.status = PaymentStatus::Captured;
                state.captured_cents = event.decode_data::<PaymentCaptured>()?.amount_cents;
            }
            event_types::DECLINED => state.status = PaymentStatus::Declined,
            other => return Err(CodecError::UnknownEventType { event_type: other.to_string() }),
        }
        state.version = event.stream_version.unwrap_or(state.version.next());
        Ok(())
    }
}
