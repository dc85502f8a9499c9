//! The Order aggregate: placed, then confirmed or cancelled.

use composable_rust::{Aggregate, DomainEvent, Topic};
use serde::{Deserialize, Serialize};

use super::{ORDER_TOPIC, topic};

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// Not enough stock.
    OutOfStock,
    /// The card was declined.
    PaymentDeclined,
    /// The payment provider did not answer in time (the saga's payment deadline fired).
    PaymentTimeout,
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

/// The events of an order (new variants go at the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// Placed.
    Placed(OrderPlaced),
    /// Confirmed.
    Confirmed(OrderConfirmed),
    /// Cancelled.
    Cancelled(OrderCancelled),
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

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed(_) => event_types::PLACED,
            OrderEvent::Confirmed(_) => event_types::CONFIRMED,
            OrderEvent::Cancelled(_) => event_types::CANCELLED,
        }
    }
}

/// Why an order command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A line with no units or no amount.
    #[error("order {order_id}: a line needs at least one unit and a positive amount")]
    EmptyLine {
        /// The order.
        order_id: String,
    },
    /// Confirming or cancelling an order that was never placed.
    #[error("order {order_id} was never placed")]
    NotPlaced {
        /// The order.
        order_id: String,
    },
}

/// The Order aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderAggregate;

impl Aggregate for OrderAggregate {
    const AGGREGATE_TYPE: &'static str = "order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Environment = ();

    fn aggregate_id(command: &OrderCommand) -> &str {
        match command {
            OrderCommand::Place { order_id, .. } | OrderCommand::Confirm { order_id } | OrderCommand::Cancel { order_id, .. } => order_id,
        }
    }

    fn initial_state(id: &str) -> OrderState {
        OrderState { id: id.to_string(), ..OrderState::default() }
    }

    fn handle(&self, state: &OrderState, command: OrderCommand, (): &()) -> Result<Vec<OrderEvent>, OrderError> {
        match (command, &state.status) {
            (OrderCommand::Place { order_id, line }, OrderStatus::New) => {
                if line.quantity == 0 || line.amount_cents == 0 {
                    return Err(OrderError::EmptyLine { order_id });
                }
                Ok(vec![OrderEvent::Placed(OrderPlaced { order_id, line })])
            }
            (OrderCommand::Confirm { order_id } | OrderCommand::Cancel { order_id, .. }, OrderStatus::New) => Err(OrderError::NotPlaced { order_id }),
            (OrderCommand::Confirm { order_id }, OrderStatus::Placed) => Ok(vec![OrderEvent::Confirmed(OrderConfirmed { order_id })]),
            (OrderCommand::Cancel { order_id, reason }, OrderStatus::Placed) => Ok(vec![OrderEvent::Cancelled(OrderCancelled { order_id, reason })]),
            (command, status) => {
                // A duplicate place, a late cancel: already decided, nothing to do.
                tracing::debug!(?command, ?status, "order command changes nothing");
                Ok(Vec::new())
            }
        }
    }

    fn apply(state: &mut OrderState, event: &OrderEvent) {
        match event {
            OrderEvent::Placed(e) => {
                state.status = OrderStatus::Placed;
                state.line = Some(e.line.clone());
            }
            OrderEvent::Confirmed(_) => state.status = OrderStatus::Confirmed,
            OrderEvent::Cancelled(e) => state.status = OrderStatus::Cancelled(e.reason),
        }
    }

    fn topic() -> Option<Topic> {
        topic(ORDER_TOPIC)
    }
}
