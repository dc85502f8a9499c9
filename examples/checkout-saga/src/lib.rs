//! The checkout saga example: Order, Inventory and Payment aggregates driven by a CheckoutSaga over
//! the event bus, every state in the event store.

pub mod app;
pub mod dashboard;
pub mod domain;
pub mod projection;
pub mod saga;
