//! [`DualEventBus`]: two buses behind one, for migrating from one to the other (for example from
//! the in-memory bus to Zenoh or NATS) and rolling back, by configuration only.
//!
//! Guarantees:
//! - the **mode** says where publishes go and where subscriptions read from:
//!   [`DualMode::PrimaryOnly`] → [`DualMode::Dual`] (publish to both, read from the side named) →
//!   [`DualMode::SecondaryOnly`]; going back is the same switch in reverse;
//! - in dual mode the *read side* is published first and must succeed (its failure is the publish's
//!   failure); the other side follows the [`SecondaryPolicy`]: `BestEffort` logs and counts its
//!   failures ([`DualEventBus::mirror_failures`]), `Required` makes them the publish's failure too;
//! - a mode change ([`DualEventBus::set_mode`]) applies to the next publish and the next subscribe;
//!   existing subscriptions keep reading where they were created.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use composable_rust_core::{EventBus, EventBusError, EventStream, SerializedEvent, SubscribeOptions};
use parking_lot::RwLock;

/// Which of the two buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The bus migrated from.
    Primary,
    /// The bus migrated to.
    Secondary,
}

/// What a failed publish to the non-read side of a dual bus means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondaryPolicy {
    /// Logged and counted; the publish succeeds.
    BestEffort,
    /// The publish fails.
    Required,
}

/// Where publishes go and subscriptions read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DualMode {
    /// Only the primary bus (before the migration, or after a rollback).
    PrimaryOnly,
    /// Publish to both; subscribe from `read_from`.
    Dual {
        /// The side subscriptions read from (published first, must succeed).
        read_from: Side,
        /// What a failure on the other side means.
        mirror: SecondaryPolicy,
    },
    /// Only the secondary bus (migration finished).
    SecondaryOnly,
}

/// Why a mode string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dual bus mode {0:?}: use primary, dual-read-primary, dual-read-secondary or secondary, optionally followed by :required")]
pub struct DualModeParseError(String);

impl FromStr for DualMode {
    type Err = DualModeParseError;

    /// `primary`, `dual-read-primary`, `dual-read-secondary`, `secondary`; the dual modes take an
    /// optional `:required` (default best effort), e.g. `dual-read-secondary:required`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mode, policy) = s.split_once(':').map_or((s, None), |(m, p)| (m, Some(p)));
        let mirror = match policy {
            None | Some("best-effort") => SecondaryPolicy::BestEffort,
            Some("required") => SecondaryPolicy::Required,
            Some(_) => return Err(DualModeParseError(s.to_string())),
        };
        match mode {
            "primary" if policy.is_none() => Ok(DualMode::PrimaryOnly),
            "secondary" if policy.is_none() => Ok(DualMode::SecondaryOnly),
            "dual-read-primary" => Ok(DualMode::Dual { read_from: Side::Primary, mirror }),
            "dual-read-secondary" => Ok(DualMode::Dual { read_from: Side::Secondary, mirror }),
            _ => Err(DualModeParseError(s.to_string())),
        }
    }
}

/// Two buses behind one [`EventBus`].
pub struct DualEventBus {
    primary: Arc<dyn EventBus>,
    secondary: Arc<dyn EventBus>,
    mode: RwLock<DualMode>,
    mirror_failures: AtomicU64,
}

impl fmt::Debug for DualEventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualEventBus")
            .field("primary", &self.primary.backend())
            .field("secondary", &self.secondary.backend())
            .field("mode", &*self.mode.read())
            .finish_non_exhaustive()
    }
}

impl DualEventBus {
    /// Wraps `primary` and `secondary`, starting in `mode`.
    pub fn new(primary: Arc<dyn EventBus>, secondary: Arc<dyn EventBus>, mode: DualMode) -> Self {
        Self { primary, secondary, mode: RwLock::new(mode), mirror_failures: AtomicU64::new(0) }
    }

    /// The current mode.
    pub fn mode(&self) -> DualMode {
        *self.mode.read()
    }

    /// Switches (or rolls back) to `mode` for the next publish and subscribe.
    pub fn set_mode(&self, mode: DualMode) {
        tracing::info!(from = ?self.mode(), to = ?mode, "dual bus mode changed");
        *self.mode.write() = mode;
    }

    /// Best-effort publishes to the non-read side that failed.
    pub fn mirror_failures(&self) -> u64 {
        self.mirror_failures.load(Ordering::Relaxed)
    }

    fn side(&self, side: Side) -> &Arc<dyn EventBus> {
        match side {
            Side::Primary => &self.primary,
            Side::Secondary => &self.secondary,
        }
    }
}

#[async_trait]
impl EventBus for DualEventBus {
    async fn publish(&self, topic: &str, event: &SerializedEvent) -> Result<(), EventBusError> {
        match self.mode() {
            DualMode::PrimaryOnly => self.primary.publish(topic, event).await,
            DualMode::SecondaryOnly => self.secondary.publish(topic, event).await,
            DualMode::Dual { read_from, mirror } => {
                self.side(read_from).publish(topic, event).await?;
                let other = match read_from {
                    Side::Primary => Side::Secondary,
                    Side::Secondary => Side::Primary,
                };
                match (self.side(other).publish(topic, event).await, mirror) {
                    (Ok(()), _) => Ok(()),
                    (Err(e), SecondaryPolicy::Required) => Err(e),
                    (Err(e), SecondaryPolicy::BestEffort) => {
                        self.mirror_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, side = ?other, topic, "dual bus: mirror publish failed (best effort)");
                        Ok(())
                    }
                }
            }
        }
    }

    async fn subscribe_with(&self, topics: &[&str], options: SubscribeOptions) -> Result<EventStream, EventBusError> {
        let side = match self.mode() {
            DualMode::PrimaryOnly => Side::Primary,
            DualMode::SecondaryOnly => Side::Secondary,
            DualMode::Dual { read_from, .. } => read_from,
        };
        self.side(side).subscribe_with(topics, options).await
    }

    fn backend(&self) -> &'static str {
        "dual"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_configuration_strings() {
        assert_eq!("primary".parse(), Ok(DualMode::PrimaryOnly));
        assert_eq!("secondary".parse(), Ok(DualMode::SecondaryOnly));
        assert_eq!("dual-read-primary".parse(), Ok(DualMode::Dual { read_from: Side::Primary, mirror: SecondaryPolicy::BestEffort }));
        assert_eq!("dual-read-secondary:required".parse(), Ok(DualMode::Dual { read_from: Side::Secondary, mirror: SecondaryPolicy::Required }));
        assert!("primary:required".parse::<DualMode>().is_err());
        assert!("both".parse::<DualMode>().is_err());
    }
}
