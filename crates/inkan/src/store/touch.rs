//! Coalesced `last_used`: a request records its grant's use in memory, and a
//! background task writes all of them in one batch per `store.touch_interval`.
//! So `last_used` never costs a store write per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{SharedStore, StoreResult};

struct Inner {
    store: SharedStore,
    /// Grant id → latest use. A std `Mutex`: it is held for a map insert or
    /// a swap, never across an `.await`.
    pending: Mutex<HashMap<String, i64>>,
}

impl Inner {
    fn take(&self) -> HashMap<String, i64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn flush(&self) -> StoreResult<()> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        let updates: Vec<(String, i64)> = batch.into_iter().collect();
        if let Err(e) = self.store.touch_grants(&updates).await {
            // Put the batch back so the next flush retries it; newer uses
            // recorded meanwhile win.
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, at) in updates {
                let slot = pending.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Records grant use cheaply and writes it to the store in batches.
pub struct Toucher {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Toucher {
    /// Starts the background flusher (needs a tokio runtime).
    pub fn spawn(store: SharedStore, interval: Duration) -> Toucher {
        let inner = Arc::new(Inner {
            store,
            pending: Mutex::new(HashMap::new()),
        });
        let worker = inner.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = worker.flush().await {
                    tracing::warn!(error = %e, "could not record grant use; will retry");
                }
            }
        });
        Toucher { inner, task }
    }

    /// Notes that `grant_id` was used at `now`. Synchronous and cheap.
    pub fn touch(&self, grant_id: &str, now: i64) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(grant_id) {
            Some(at) => *at = (*at).max(now),
            None => {
                pending.insert(grant_id.to_owned(), now);
            }
        }
    }

    /// Writes everything recorded so far (at shutdown, and in tests).
    pub async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }

    /// How many grants wait for the next flush.
    pub fn pending(&self) -> usize {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for Toucher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
