//! Conformance suites every backend runs: plain async functions parameterised by a factory, so a
//! backend's test calls `run_all` (or single cases) against its own instance.
//!
//! Cases use fresh random stream ids and topics, so they can run against a shared database or
//! broker without cleaning it first.

pub mod deadlines;
pub mod event_bus;
pub mod event_store;
pub mod read_model;

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
