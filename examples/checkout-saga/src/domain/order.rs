//! The Order aggregate: placed, then confirmed or cancelled.

use composable_rust_core::{Aggregate, CodecError, Effects, Reducer, SerializedEvent, Version, smallvec};
use serde::{Deserialize, Serialize};

use super::{DomainEnv, ORDER_TOPIC, persist_then_publish, stream_of};

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// Not enough stock.
    OutOfStock,
    /// The card was declined.
    PaymentDeclined,
}

/// Where an order is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, checkout in progress.
    Placed,
    /// Paid and confirmed.
    Confirmed,
    /// Cancelled.
    Cancelled(CancelReason),
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderState {
    /// Order id.
    pub id: String,
    /// Stream version.
    pub version: Version,
    /// Status.
    pub status: OrderStatus,
    /// The line ordered, once placed.
    pub line: Option<OrderLine>,
}

/// What was ordered and how it is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Product.
    pub sku: String,
    /// Units.
    pub quantity: u32,
    /// Total in cents.
    pub amount_cents: u64,
    /// Payment token.
    pub card_token: String,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place a new order.
    Place {
        /// Order id.
        order_id: String,
        /// The line.
        line: OrderLine,
    },
    /// Confirm a placed order.
    Confirm {
        /// Order id.
        order_id: String,
    },
    /// Cancel a placed order.
    Cancel {
        /// Order id.
        order_id: String,
        /// Why.
        reason: CancelReason,
    },
}

/// `OrderPlaced.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Order id.
    pub order_id: String,
    /// The line.
    pub line: OrderLine,
}

/// `OrderConfirmed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// Order id.
    pub order_id: String,
}

/// `OrderCancelled.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Order id.
    pub order_id: String,
    /// Why.
    pub reason: CancelReason,
}

/// Event type names.
pub mod event_types {
    /// Order placed.
    pub const PLACED: &str = "OrderPlaced.v1";
    /// Order confirmed.
    pub const CONFIRMED: &str = "OrderConfirmed.v1";
    /// Order cancelled.
    pub const CANCELLED: &str = "OrderCancelled.v1";
}

/// The Order reducer.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderAggregate;

impl Reducer for OrderAggregate {
    type State = OrderState;
    type Action = OrderCommand;
    type Environment = DomainEnv;

    fn reduce(&self, state: &mut OrderState, command: OrderCommand, env: &DomainEnv) -> Effects<OrderCommand> {
        let Some(stream) = stream_of(Self::AGGREGATE_TYPE, &Self::aggregate_id(&command)) else { return smallvec![] };
        let loaded = state.version;
        match (command, &state.status) {
            (OrderCommand::Place { order_id, line }, OrderStatus::New) => {
                let event = OrderPlaced { order_id: order_id.clone(), line: line.clone() };
                state.id.clone_from(&order_id);
                state.status = OrderStatus::Placed;
                state.line = Some(line);
                state.version = loaded.next();
                persist_then_publish(env, &stream, loaded, ORDER_TOPIC, event_types::PLACED, &event, &order_id).into_iter().collect()
            }
            (OrderCommand::Confirm { order_id }, OrderStatus::Placed) => {
                state.status = OrderStatus::Confirmed;
                state.version = loaded.next();
                persist_then_publish(env, &stream, loaded, ORDER_TOPIC, event_types::CONFIRMED, &OrderConfirmed { order_id: order_id.clone() }, &order_id)
                    .into_iter()
                    .collect()
            }
            (OrderCommand::Cancel { order_id, reason }, OrderStatus::Placed) => {
                state.status = OrderStatus::Cancelled(reason);
                state.version = loaded.next();
                persist_then_publish(
                    env,
                    &stream,
                    loaded,
                    ORDER_TOPIC,
                    event_types::CANCELLED,
                    &OrderCancelled { order_id: order_id.clone(), reason },
                    &order_id,
                )
                .into_iter()
                .collect()
            }
            (command, status) => {
                // Commands that do not fit the status (a duplicate place, a late cancel) change nothing.
                tracing::debug!(?command, ?status, "order command ignored");
                smallvec![]
            }
        }
    }
}

impl Aggregate for OrderAggregate {
    const AGGREGATE_TYPE: &'static str = "order";

    fn aggregate_id(command: &OrderCommand) -> String {
        match command {
            OrderCommand::Place { order_id, .. } | OrderCommand::Confirm { order_id } | OrderCommand::Cancel { order_id, .. } => order_id.clone(),
        }
    }

    fn initial_state(&self, id: &str) -> OrderState {
        OrderState { id: id.to_string(), ..OrderState::default() }
    }

    fn apply(&self, state: &mut OrderState, event: &SerializedEvent) -> Result<(), CodecError> {
        match event.event_type.as_str() {
            event_types::PLACED => {
                let e: OrderPlaced = event.decode_data()?;
                state.status = OrderStatus::Placed;
                state.line = Some(e.line);
            }
            event_types::CONFIRMED => state.status = OrderStatus::Confirmed,
            event_types::CANCELLED => state.status = OrderStatus::Cancelled(event.decode_data::<OrderCancelled>()?.reason),
            other => return Err(CodecError::UnknownEventType { event_type: other.to_string() }),
        }
        state.version = event.stream_version.unwrap_or(state.version.next());
        Ok(())
    }
}
