//! Running cancellable effects by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use composable_rust_core::{CancelInFlight, EffectId};
use futures::future::{AbortHandle, AbortRegistration};
use parking_lot::Mutex;

/// Abort handles of running cancellable effects, by id.
#[derive(Debug, Default)]
pub struct CancellationRegistry {
    next: AtomicU64,
    running: Mutex<HashMap<EffectId, Vec<(u64, AbortHandle)>>>,
}

impl CancellationRegistry {
    /// Registers a new run under `id`. With [`CancelInFlight::Cancel`] earlier runs are aborted
    /// first; with [`CancelInFlight::Skip`] and a run in flight, the new run is aborted before it
    /// starts (and not registered).
    pub fn register(&self, id: &EffectId, mode: CancelInFlight) -> (u64, AbortRegistration) {
        let (handle, registration) = AbortHandle::new_pair();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let mut running = self.running.lock();
        if mode == CancelInFlight::Skip && running.get(id).is_some_and(|runs| !runs.is_empty()) {
            handle.abort();
            return (token, registration);
        }
        let entry = running.entry(id.clone()).or_default();
        if mode == CancelInFlight::Cancel {
            for (_, h) in entry.drain(..) {
                h.abort();
            }
        }
        entry.push((token, handle));
        (token, registration)
    }

    /// Forgets a finished run.
    pub fn finished(&self, id: &EffectId, token: u64) {
        let mut running = self.running.lock();
        if let Some(entry) = running.get_mut(id) {
            entry.retain(|(t, _)| *t != token);
            if entry.is_empty() {
                running.remove(id);
            }
        }
    }

    /// Aborts every run under `id`; returns how many.
    pub fn cancel(&self, id: &EffectId) -> usize {
        let handles = self.running.lock().remove(id).unwrap_or_default();
        for (_, h) in &handles {
            h.abort();
        }
        handles.len()
    }
}
