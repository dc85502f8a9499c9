//! The three aggregates of the checkout, each a typed aggregate whose state lives in its event
//! stream: `handle` decides, `apply` evolves, the runtime stores and publishes.

pub mod inventory;
pub mod order;
pub mod payment;

use composable_rust::Topic;

/// Topic of order events.
pub const ORDER_TOPIC: &str = "order.events";
/// Topic of inventory events.
pub const INVENTORY_TOPIC: &str = "inventory.events";
/// Topic of payment events.
pub const PAYMENT_TOPIC: &str = "payment.events";

/// `name` as a topic (the constants above are valid topic names).
pub(crate) fn topic(name: &str) -> Option<Topic> {
    Topic::new(name).ok()
}
