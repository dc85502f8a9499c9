//! The order summary: a read model kept from the order and inventory streams by the read side
//! (`composable_rust::runtime::ProjectionRunner`), each event applied once.
//!
//! Documents: `order/{id}` (status and amount of each order), `status/{status}` (orders per
//! status), `revenue` (cents of confirmed orders), `stock/{sku}` (units available).

use std::collections::BTreeMap;

use async_trait::async_trait;
use composable_rust::runtime::{Projection, ProjectionError, ProjectionReader, View};
use composable_rust::{DomainEvent, EventFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::domain::inventory::InventoryEvent;
use crate::domain::order::{CancelReason, OrderEvent};

/// One order as the summary knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// `placed`, `confirmed`, `cancelled_out_of_stock`, `cancelled_payment_declined`,
    /// `cancelled_payment_timeout`.
    pub status: String,
    /// The order's amount.
    pub amount_cents: u64,
}

/// The status name of a cancellation.
pub fn cancelled_status(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::OutOfStock => "cancelled_out_of_stock",
        CancelReason::PaymentDeclined => "cancelled_payment_declined",
        CancelReason::PaymentTimeout => "cancelled_payment_timeout",
    }
}

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSummary;

impl OrderSummary {
    fn moved(view_status: &mut BTreeMap<String, i64>, from: Option<&str>, to: &str) {
        if let Some(from) = from {
            *view_status.entry(from.to_string()).or_default() -= 1;
        }
        *view_status.entry(to.to_string()).or_default() += 1;
    }
}

#[async_trait]
impl Projection for OrderSummary {
    const NAME: &'static str = "checkout.order-summary";

    fn filter(&self) -> EventFilter {
        EventFilter::all().category("order").category("inventory")
    }

    async fn apply(&self, event: &RecordedEvent, view: &mut View<'_>) -> Result<(), ProjectionError> {
        let stream = event.event.stream_id.as_ref().map(|s| s.as_str().to_string()).unwrap_or_default();
        let bad = |e: composable_rust::CodecError| ProjectionError::event(Self::NAME, event, e);
        if let Some(sku) = stream.strip_prefix("inventory-") {
            let delta: i64 = match InventoryEvent::from_serialized(&event.event).map_err(bad)? {
                InventoryEvent::StockAdded(s) => i64::from(s.quantity),
                InventoryEvent::Reserved(r) => -i64::from(r.quantity),
                InventoryEvent::Released(r) => i64::from(r.quantity),
                InventoryEvent::ReservationFailed(_) => return Ok(()),
            };
            return view.update::<i64>(&format!("stock/{sku}"), |n| *n += delta).await;
        }
        let (id, to, amount) = match OrderEvent::from_serialized(&event.event).map_err(bad)? {
            OrderEvent::Placed(p) => (p.order_id, "placed", Some(p.line.amount_cents)),
            OrderEvent::Confirmed(c) => (c.order_id, "confirmed", None),
            OrderEvent::Cancelled(c) => (c.order_id, cancelled_status(c.reason), None),
        };
        let key = format!("order/{id}");
        let mut order: OrderView = view.get(&key).await?.unwrap_or_default();
        let from = (!order.status.is_empty()).then(|| order.status.clone());
        if from.as_deref() == Some(to) {
            return Ok(());
        }
        if let Some(a) = amount {
            order.amount_cents = a;
        }
        let mut counts = BTreeMap::new();
        Self::moved(&mut counts, from.as_deref(), to);
        for (status, delta) in counts {
            view.update::<i64>(&format!("status/{status}"), |n| *n += delta).await?;
        }
        if to == "confirmed" {
            let cents = order.amount_cents;
            view.update::<u64>("revenue", |r| *r += cents).await?;
        }
        order.status = to.to_string();
        view.put(&key, &order)
    }
}

/// The summary as `--json` prints it: every order in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SummaryReport {
    /// Orders per status.
    pub orders_by_status: BTreeMap<String, i64>,
    /// Cents of confirmed orders.
    pub revenue_cents: u64,
    /// Units available per SKU.
    pub stock: BTreeMap<String, i64>,
    /// The projection's checkpoint.
    pub checkpoint: u64,
}

/// Reads the summary's documents.
pub async fn read_summary(reader: &ProjectionReader<serde_json::Value>) -> Result<SummaryReport, ProjectionError> {
    let number = |v: &serde_json::Value| v.as_i64().unwrap_or_default();
    let mut report = SummaryReport::default();
    for (k, v) in reader.list("status/", 100).await? {
        let n = number(&v);
        if n != 0 {
            report.orders_by_status.insert(k.trim_start_matches("status/").to_string(), n);
        }
    }
    for (k, v) in reader.list("stock/", 10_000).await? {
        report.stock.insert(k.trim_start_matches("stock/").to_string(), number(&v));
    }
    report.revenue_cents = reader.get("revenue").await?.and_then(|v| v.as_u64()).unwrap_or_default();
    report.checkpoint = reader.status().await?.checkpoint.position.0;
    Ok(report)
}
