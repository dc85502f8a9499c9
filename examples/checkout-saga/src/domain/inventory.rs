//! The Inventory aggregate: one per SKU; stock is reserved per order and released on compensation.
//! It takes a snapshot every 50 events, since every order of a SKU lands in the same stream.

use std::collections::BTreeMap;

use bytes::Bytes;
use composable_rust::{Aggregate, CodecError, DomainEvent, Topic, decode_payload, encode_payload};
use serde::{Deserialize, Serialize};

use super::{INVENTORY_TOPIC, topic};

/// Stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InventoryState {
    /// The SKU.
    pub sku: String,
    /// Units not reserved.
    pub available: u32,
    /// Units reserved, by order.
    pub reservations: BTreeMap<String, u32>,
    /// Units ever added.
    pub restocked: u32,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Add stock.
    Restock {
        /// The SKU.
        sku: String,
        /// Units.
        quantity: u32,
    },
    /// Reserve units for an order.
    Reserve {
        /// The SKU.
        sku: String,
        /// The order.
        order_id: String,
        /// Units.
        quantity: u32,
    },
    /// Give an order's reservation back.
    Release {
        /// The SKU.
        sku: String,
        /// The order.
        order_id: String,
    },
}

/// `StockAdded.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdded {
    /// Units.
    pub quantity: u32,
}

/// `InventoryReserved.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReserved {
    /// The order.
    pub order_id: String,
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
}

/// `InventoryReservationFailed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReservationFailed {
    /// The order.
    pub order_id: String,
    /// The SKU.
    pub sku: String,
    /// Units asked for.
    pub requested: u32,
    /// Units there were.
    pub available: u32,
}

/// `InventoryReleased.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    /// The order.
    pub order_id: String,
    /// The SKU.
    pub sku: String,
    /// Units given back.
    pub quantity: u32,
}

/// The events of a SKU's stock (new variants go at the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryEvent {
    /// Stock added.
    StockAdded(StockAdded),
    /// Reserved.
    Reserved(InventoryReserved),
    /// Not enough stock.
    ReservationFailed(InventoryReservationFailed),
    /// Released.
    Released(InventoryReleased),
}

/// Event type names.
pub mod event_types {
    /// Stock added.
    pub const STOCK_ADDED: &str = "StockAdded.v1";
    /// Reserved.
    pub const RESERVED: &str = "InventoryReserved.v1";
    /// Not enough stock.
    pub const RESERVATION_FAILED: &str = "InventoryReservationFailed.v1";
    /// Released.
    pub const RELEASED: &str = "InventoryReleased.v1";
}

impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> &'static str {
        match self {
            InventoryEvent::StockAdded(_) => event_types::STOCK_ADDED,
            InventoryEvent::Reserved(_) => event_types::RESERVED,
            InventoryEvent::ReservationFailed(_) => event_types::RESERVATION_FAILED,
            InventoryEvent::Released(_) => event_types::RELEASED,
        }
    }
}

/// Why an inventory command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// Restocking nothing.
    #[error("restock of {sku}: the quantity must be positive")]
    ZeroRestock {
        /// The SKU.
        sku: String,
    },
}

/// The Inventory aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryAggregate;

impl Aggregate for InventoryAggregate {
    const AGGREGATE_TYPE: &'static str = "inventory";
    type State = InventoryState;
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;
    type Environment = ();

    fn aggregate_id(command: &InventoryCommand) -> &str {
        match command {
            InventoryCommand::Restock { sku, .. } | InventoryCommand::Reserve { sku, .. } | InventoryCommand::Release { sku, .. } => sku,
        }
    }

    fn initial_state(id: &str) -> InventoryState {
        InventoryState { sku: id.to_string(), ..InventoryState::default() }
    }

    fn handle(&self, state: &InventoryState, command: InventoryCommand, (): &()) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { sku, quantity } => {
                if quantity == 0 {
                    return Err(InventoryError::ZeroRestock { sku });
                }
                Ok(vec![InventoryEvent::StockAdded(StockAdded { quantity })])
            }
            InventoryCommand::Reserve { sku, order_id, quantity } => {
                if state.reservations.contains_key(&order_id) {
                    return Ok(Vec::new());
                }
                if quantity > 0 && quantity <= state.available {
                    Ok(vec![InventoryEvent::Reserved(InventoryReserved { order_id, sku, quantity })])
                } else {
                    Ok(vec![InventoryEvent::ReservationFailed(InventoryReservationFailed { order_id, sku, requested: quantity, available: state.available })])
                }
            }
            InventoryCommand::Release { sku, order_id } => Ok(state
                .reservations
                .get(&order_id)
                .map(|&quantity| InventoryEvent::Released(InventoryReleased { order_id, sku, quantity }))
                .into_iter()
                .collect()),
        }
    }

    fn apply(state: &mut InventoryState, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockAdded(e) => {
                state.available += e.quantity;
                state.restocked += e.quantity;
            }
            InventoryEvent::Reserved(e) => {
                state.available -= e.quantity.min(state.available);
                state.reservations.insert(e.order_id.clone(), e.quantity);
            }
            InventoryEvent::ReservationFailed(_) => {}
            InventoryEvent::Released(e) => {
                if state.reservations.remove(&e.order_id).is_some() {
                    state.available += e.quantity;
                }
            }
        }
    }

    fn topic() -> Option<Topic> {
        topic(INVENTORY_TOPIC)
    }

    fn encode_state(state: &InventoryState) -> Option<Result<Bytes, CodecError>> {
        Some(encode_payload(state))
    }

    fn decode_state(bytes: &[u8]) -> Result<InventoryState, CodecError> {
        decode_payload(bytes)
    }

    fn snapshot_every() -> u64 {
        50
    }
}
