//! The Inventory aggregate: one per SKU; stock is reserved per order and released on compensation.
//! It takes a snapshot every 50 events, since every order of a SKU lands in the same stream.

use std::collections::BTreeMap;

use bytes::Bytes;
use composable_rust_core::{Aggregate, CodecError, Effects, Reducer, SerializedEvent, Version, decode_payload, encode_payload, smallvec};
use serde::{Deserialize, Serialize};

use super::{DomainEnv, INVENTORY_TOPIC, persist_then_publish, stream_of};

/// Stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InventoryState {
    /// SKU.
    pub sku: String,
    /// Stream version.
    pub version: Version,
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
    /// Add stock (setup; not published).
    Restock {
        /// SKU.
        sku: String,
        /// Units.
        quantity: u32,
    },
    /// Reserve units for an order.
    Reserve {
        /// SKU.
        sku: String,
        /// Order.
        order_id: String,
        /// Units.
        quantity: u32,
    },
    /// Release an order's reservation (compensation).
    Release {
        /// SKU.
        sku: String,
        /// Order.
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
    /// Order.
    pub order_id: String,
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
}

/// `InventoryReservationFailed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReservationFailed {
    /// Order.
    pub order_id: String,
    /// SKU.
    pub sku: String,
    /// Units asked.
    pub requested: u32,
    /// Units available then.
    pub available: u32,
}

/// `InventoryReleased.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    /// Order.
    pub order_id: String,
    /// SKU.
    pub sku: String,
    /// Units back in stock.
    pub quantity: u32,
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

/// The Inventory reducer.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryAggregate;

impl Reducer for InventoryAggregate {
    type State = InventoryState;
    type Action = InventoryCommand;
    type Environment = DomainEnv;

    fn reduce(&self, state: &mut InventoryState, command: InventoryCommand, env: &DomainEnv) -> Effects<InventoryCommand> {
        let Some(stream) = stream_of(Self::AGGREGATE_TYPE, &Self::aggregate_id(&command)) else { return smallvec![] };
        let loaded = state.version;
        match command {
            InventoryCommand::Restock { sku, quantity } => {
                state.available += quantity;
                state.restocked += quantity;
                state.version = loaded.next();
                // Restocking is internal: persisted, not published.
                let [append, _publish] = persist_then_publish(env, &stream, loaded, INVENTORY_TOPIC, event_types::STOCK_ADDED, &StockAdded { quantity }, &sku);
                smallvec![append]
            }
            InventoryCommand::Reserve { sku, order_id, quantity } => {
                if state.reservations.contains_key(&order_id) {
                    return smallvec![];
                }
                state.version = loaded.next();
                if quantity > 0 && quantity <= state.available {
                    state.available -= quantity;
                    state.reservations.insert(order_id.clone(), quantity);
                    let event = InventoryReserved { order_id: order_id.clone(), sku, quantity };
                    persist_then_publish(env, &stream, loaded, INVENTORY_TOPIC, event_types::RESERVED, &event, &order_id).into_iter().collect()
                } else {
                    let event = InventoryReservationFailed { order_id: order_id.clone(), sku, requested: quantity, available: state.available };
                    persist_then_publish(env, &stream, loaded, INVENTORY_TOPIC, event_types::RESERVATION_FAILED, &event, &order_id).into_iter().collect()
                }
            }
            InventoryCommand::Release { sku, order_id } => {
                let Some(quantity) = state.reservations.remove(&order_id) else { return smallvec![] };
                state.available += quantity;
                state.version = loaded.next();
                let event = InventoryReleased { order_id: order_id.clone(), sku, quantity };
                persist_then_publish(env, &stream, loaded, INVENTORY_TOPIC, event_types::RELEASED, &event, &order_id).into_iter().collect()
            }
        }
    }
}

impl Aggregate for InventoryAggregate {
    const AGGREGATE_TYPE: &'static str = "inventory";

    fn aggregate_id(command: &InventoryCommand) -> String {
        match command {
            InventoryCommand::Restock { sku, .. } | InventoryCommand::Reserve { sku, .. } | InventoryCommand::Release { sku, .. } => sku.clone(),
        }
    }

    fn initial_state(&self, id: &str) -> InventoryState {
        InventoryState { sku: id.to_string(), ..InventoryState::default() }
    }

    fn apply(&self, state: &mut InventoryState, event: &SerializedEvent) -> Result<(), CodecError> {
        match event.event_type.as_str() {
            event_types::STOCK_ADDED => {
                let e: StockAdded = event.decode_data()?;
                state.available += e.quantity;
                state.restocked += e.quantity;
            }
            event_types::RESERVED => {
                let e: InventoryReserved = event.decode_data()?;
                state.available -= e.quantity.min(state.available);
                state.reservations.insert(e.order_id, e.quantity);
            }
            event_types::RESERVATION_FAILED => {}
            event_types::RELEASED => {
                let e: InventoryReleased = event.decode_data()?;
                if state.reservations.remove(&e.order_id).is_some() {
                    state.available += e.quantity;
                }
            }
            other => return Err(CodecError::UnknownEventType { event_type: other.to_string() }),
        }
        state.version = event.stream_version.unwrap_or(state.version.next());
        Ok(())
    }

    fn snapshot(&self, state: &InventoryState) -> Option<Result<Bytes, CodecError>> {
        Some(encode_payload(state))
    }

    fn restore(&self, bytes: &[u8], version: Version) -> Result<InventoryState, CodecError> {
        let mut state: InventoryState = decode_payload(bytes)?;
        state.version = version;
        Ok(state)
    }

    fn snapshot_every(&self) -> u64 {
        50
    }
}
