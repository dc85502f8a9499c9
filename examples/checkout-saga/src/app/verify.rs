//! Verification against the store: every order, payment and saga instance ended as planned, stock
//! balances, nothing was charged or stored twice, the outbox is drained.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use composable_rust::runtime::{AggregateHandler, ProjectionReader, SagaRunner};
use composable_rust::{DomainEvent, EventStore, GlobalPosition};

use super::config::{AppError, DISCONTINUED_SKU};
use super::scenario::{Expected, PlannedOrder};
use super::wiring::Wiring;
use crate::domain::inventory::{InventoryAggregate, InventoryEvent};
use crate::domain::order::{CancelReason, OrderEvent, OrderStatus};
use crate::domain::payment::{PaymentEvent, PaymentStatus};
use crate::projection::{OrderView, cancelled_status};
use crate::saga::{CheckoutSaga, CheckoutStep};

/// Orders by how they ended.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) confirmed: usize,
    pub(crate) out_of_stock: usize,
    pub(crate) declined: usize,
    pub(crate) timed_out: usize,
    /// Every order ended as planned.
    pub(crate) all_final: bool,
}

/// Loads every order, payment and saga instance from the store and checks each ended as planned.
pub(crate) async fn verify_orders(
    w: &Wiring,
    checker: &SagaRunner<CheckoutSaga>,
    plan: &[PlannedOrder],
    problems: &mut Vec<String>,
) -> Result<Tally, AppError> {
    let mut tally = Tally { all_final: true, ..Tally::default() };
    for o in plan {
        let order = w.orders.load(&o.order_id, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let payment = w.payments.load(&o.order_id, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let saga = checker.load_instance(&o.order_id).await.map_err(|e| AppError::Setup(e.to_string()))?;
        match order.status {
            OrderStatus::Confirmed => tally.confirmed += 1,
            OrderStatus::Cancelled(CancelReason::OutOfStock) => tally.out_of_stock += 1,
            OrderStatus::Cancelled(CancelReason::PaymentDeclined) => tally.declined += 1,
            OrderStatus::Cancelled(CancelReason::PaymentTimeout) => tally.timed_out += 1,
            _ => {}
        }
        let consistent = match o.expected {
            Expected::Confirmed => {
                order.status == OrderStatus::Confirmed
                    && payment.status == PaymentStatus::Captured
                    && payment.captured_cents == o.line.amount_cents
                    && saga.step == CheckoutStep::Confirmed
            }
            Expected::OutOfStock => {
                order.status == OrderStatus::Cancelled(CancelReason::OutOfStock)
                    && payment.status == PaymentStatus::None
                    && saga.step == CheckoutStep::Cancelled(CancelReason::OutOfStock)
            }
            Expected::Declined => {
                order.status == OrderStatus::Cancelled(CancelReason::PaymentDeclined)
                    && payment.status == PaymentStatus::Declined
                    && saga.step == CheckoutStep::Cancelled(CancelReason::PaymentDeclined)
                    && saga.stock_released
            }
            Expected::TimedOut => {
                order.status == OrderStatus::Cancelled(CancelReason::PaymentTimeout)
                    && payment.status == PaymentStatus::Voided
                    && saga.step == CheckoutStep::Cancelled(CancelReason::PaymentTimeout)
                    && saga.stock_released
            }
        };
        tally.all_final &= consistent;
        if !consistent && problems.len() < 20 {
            problems.push(format!("{}: expected {:?}, order {:?}, payment {:?}, saga {:?}", o.order_id, o.expected, order.status, payment.status, saga.step));
        }
    }
    Ok(tally)
}

/// The last global position and the number of events in the store, read page by page.
pub(crate) async fn head_position(store: &dyn EventStore) -> Result<(GlobalPosition, u64), composable_rust::EventStoreError> {
    let mut after = GlobalPosition(0);
    let mut count = 0u64;
    loop {
        let page = store.read_all(after, 4096).await?;
        let Some(last) = page.last() else { return Ok((after, count)) };
        after = last.position;
        count += page.len() as u64;
    }
}

/// Stock balances per SKU: restocked = available + reserved, and what this run reserved is exactly
/// what its confirmed orders bought (a persistent store also holds earlier runs' reservations).
pub(crate) async fn check_stock(
    plan: &[PlannedOrder],
    demand: &BTreeMap<String, u32>,
    inventory: &AggregateHandler<InventoryAggregate>,
    run: &str,
) -> Result<Vec<String>, AppError> {
    let mut problems = Vec::new();
    let mut skus: Vec<&String> = demand.keys().collect();
    let discontinued = DISCONTINUED_SKU.to_string();
    skus.push(&discontinued);
    for sku in skus {
        let state = inventory.load(sku, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let reserved: u32 = state.reservations.values().sum();
        if state.restocked != state.available + reserved {
            problems.push(format!("{sku}: restocked {} != available {} + reserved {reserved}", state.restocked, state.available));
        }
        let confirmed: BTreeMap<String, u32> =
            plan.iter().filter(|o| o.expected == Expected::Confirmed && &o.line.sku == sku).map(|o| (o.order_id.clone(), o.line.quantity)).collect();
        let prefix = format!("order-{run}-");
        let this_run: BTreeMap<String, u32> = state.reservations.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), *v)).collect();
        if this_run != confirmed {
            problems.push(format!("{sku}: {} reservations held, {} confirmed orders", state.reservations.len(), confirmed.len()));
        }
    }
    Ok(problems)
}

/// The order summary agrees with the aggregates: each order's status, each SKU's stock.
pub(crate) async fn check_projection(
    w: &Wiring,
    reader: &ProjectionReader,
    plan: &[PlannedOrder],
    demand: &BTreeMap<String, u32>,
    problems: &mut Vec<String>,
) -> Result<(), AppError> {
    let failed = |e: composable_rust::runtime::ProjectionError| AppError::Store(e.to_string());
    let mut wrong = 0;
    for o in plan {
        let order = w.orders.load(&o.order_id, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state;
        let truth = match order.status {
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled(reason) => cancelled_status(reason),
            _ => "placed",
        };
        let seen: Option<OrderView> = reader.get(&format!("order/{}", o.order_id)).await.map_err(failed)?.and_then(|v| serde_json::from_value(v).ok());
        if seen.as_ref().map(|v| v.status.as_str()) != Some(truth) || seen.as_ref().map(|v| v.amount_cents) != Some(o.line.amount_cents) {
            wrong += 1;
            if wrong <= 5 {
                problems.push(format!("projection: {} is {seen:?}, the aggregate says {truth}", o.order_id));
            }
        }
    }
    let discontinued = DISCONTINUED_SKU.to_string();
    for sku in demand.keys().chain(std::iter::once(&discontinued)) {
        let truth = w.inventory.load(sku, None).await.map_err(|e| AppError::Setup(e.to_string()))?.state.available;
        let seen = reader.get(&format!("stock/{sku}")).await.map_err(failed)?.and_then(|v| v.as_i64()).unwrap_or_default();
        if seen != i64::from(truth) {
            problems.push(format!("projection: stock of {sku} is {seen}, the inventory says {truth}"));
        }
    }
    if wrong > 5 {
        problems.push(format!("projection: {wrong} orders differ from their aggregates"));
    }
    Ok(())
}

/// Invariants that must hold under any injected faults.
#[derive(Debug, Default)]
pub(crate) struct Invariants {
    pub(crate) double_charges: usize,
    pub(crate) duplicate_events: usize,
    pub(crate) outbox_pending: usize,
}

/// Reads each order's, payment's and SKU's stream and counts decisions stored twice (two
/// captures, two reservations of one order, ...); drains the outbox and counts what is left.
pub(crate) async fn check_invariants(w: &Wiring, plan: &[PlannedOrder], problems: &mut Vec<String>) -> Result<Invariants, AppError> {
    let store = &*w.store;
    let read = |stream: String| async move {
        let id = composable_rust::StreamId::new(stream).map_err(|e| AppError::Setup(e.to_string()))?;
        composable_rust::event_store::read_stream_to_end(store, &id, composable_rust::Version(1)).await.map_err(|e| AppError::Store(e.to_string()))
    };
    let mut inv = Invariants::default();
    let mut skus: HashSet<String> = HashSet::new();
    for o in plan {
        skus.insert(o.line.sku.clone());
        let mut kinds: HashMap<&'static str, usize> = HashMap::new();
        for e in read(format!("order-{}", o.order_id)).await? {
            let event = OrderEvent::from_serialized(&e).map_err(|e| AppError::Store(e.to_string()))?;
            *kinds.entry(event.event_type()).or_default() += 1;
        }
        let mut captures = 0;
        for e in read(format!("payment-{}", o.order_id)).await? {
            let event = PaymentEvent::from_serialized(&e).map_err(|e| AppError::Store(e.to_string()))?;
            captures += usize::from(matches!(event, PaymentEvent::Captured(_)));
            *kinds.entry(event.event_type()).or_default() += 1;
        }
        if captures > 1 {
            inv.double_charges += 1;
            problems.push(format!("{} was charged {captures} times", o.order_id));
        }
        inv.duplicate_events += kinds.values().map(|n| n.saturating_sub(1)).sum::<usize>();
    }
    for sku in skus {
        let mut per_order: HashMap<(String, &'static str), usize> = HashMap::new();
        for e in read(format!("inventory-{sku}")).await? {
            let event = InventoryEvent::from_serialized(&e).map_err(|e| AppError::Store(e.to_string()))?;
            let order = match &event {
                InventoryEvent::Reserved(r) => r.order_id.clone(),
                InventoryEvent::ReservationFailed(r) => r.order_id.clone(),
                InventoryEvent::Released(r) => r.order_id.clone(),
                InventoryEvent::StockAdded(_) => continue,
            };
            *per_order.entry((order, event.event_type())).or_default() += 1;
        }
        inv.duplicate_events += per_order.values().map(|n| n.saturating_sub(1)).sum::<usize>();
    }
    if inv.duplicate_events > 0 {
        problems.push(format!("{} decisions were stored twice", inv.duplicate_events));
    }
    // Whatever the outbox still holds is published now; anything left after that is a problem.
    for _ in 0..10 {
        let report = w.relay_now().await.map_err(|e| AppError::Store(e.to_string()))?;
        if report.failed == 0 && report.deferred == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inv.outbox_pending = store.pending_publications(10_000).await.map_err(|e| AppError::Store(e.to_string()))?.len();
    if inv.outbox_pending > 0 {
        problems.push(format!("{} outbox entries were never published", inv.outbox_pending));
    }
    Ok(inv)
}
