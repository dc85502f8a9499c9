//! The in-memory store is also a [`ReadModelStore`]: projections' documents and checkpoints under one
//! lock, so a commit (documents and checkpoint) is atomic, as on the SQL stores.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use composable_rust_core::read_model::validate_commit;
use composable_rust_core::{Checkpoint, DocChange, GlobalPosition, ReadModelError, ReadModelStore};

use crate::InMemoryEventStore;

/// Every projection's state.
#[derive(Default)]
pub(crate) struct ReadModels {
    projections: HashMap<String, Model>,
    leases: HashMap<String, (String, DateTime<Utc>)>,
}

#[derive(Default)]
struct Model {
    docs: BTreeMap<String, Bytes>,
    checkpoint: Option<(GlobalPosition, DateTime<Utc>)>,
}

#[async_trait]
impl ReadModelStore for InMemoryEventStore {
    async fn commit(&self, projection: &str, expected: GlobalPosition, to: GlobalPosition, changes: Vec<DocChange>) -> Result<(), ReadModelError> {
        validate_commit(projection, expected, to, &changes)?;
        let mut models = self.models.lock();
        let model = models.projections.entry(projection.to_string()).or_default();
        let actual = model.checkpoint.map_or(GlobalPosition(0), |c| c.0);
        if actual != expected {
            return Err(ReadModelError::CheckpointMoved { projection: projection.to_string(), expected, actual });
        }
        for change in changes {
            match change {
                DocChange::Put { key, value } => {
                    model.docs.insert(key, value);
                }
                DocChange::Delete { key } => {
                    model.docs.remove(&key);
                }
            }
        }
        model.checkpoint = Some((to, Utc::now()));
        Ok(())
    }

    async fn checkpoint(&self, projection: &str) -> Result<Checkpoint, ReadModelError> {
        let models = self.models.lock();
        let stored = models.projections.get(projection).and_then(|m| m.checkpoint);
        Ok(Checkpoint { position: stored.map_or(GlobalPosition(0), |c| c.0), updated_at: stored.map(|c| c.1) })
    }

    async fn get(&self, projection: &str, key: &str) -> Result<Option<Bytes>, ReadModelError> {
        Ok(self.models.lock().projections.get(projection).and_then(|m| m.docs.get(key).cloned()))
    }

    async fn list(&self, projection: &str, prefix: &str, limit: usize) -> Result<Vec<(String, Bytes)>, ReadModelError> {
        let models = self.models.lock();
        let Some(model) = models.projections.get(projection) else { return Ok(Vec::new()) };
        Ok(model.docs.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadModelError> {
        self.models.lock().projections.remove(projection);
        Ok(())
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), ReadModelError> {
        if live == shadow || live.is_empty() || shadow.is_empty() {
            return Err(ReadModelError::InvalidRequest { reason: format!("swap of {live:?} with {shadow:?}: two different, non-empty names") });
        }
        let mut models = self.models.lock();
        let built = models.projections.remove(shadow).unwrap_or_default();
        models.projections.insert(live.to_string(), built);
        Ok(())
    }

    async fn try_lease(&self, projection: &str, worker: &str, now: DateTime<Utc>, lease: std::time::Duration) -> Result<bool, ReadModelError> {
        let mut models = self.models.lock();
        let until = chrono::Duration::from_std(lease).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let free = models.leases.get(projection).is_none_or(|(holder, until)| holder == worker || *until <= now);
        if free {
            models.leases.insert(projection.to_string(), (worker.to_string(), until));
        }
        Ok(free)
    }
}
