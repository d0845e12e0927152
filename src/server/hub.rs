//! [`StoreHandle`]: the shared, cloneable front of the [`Store`] that sources
//! write to and streams subscribe to.
//!
//! Applying events and fanning the resulting changes out happen under one
//! short lock, and so does subscribing, so a new subscriber's snapshot (or
//! resume point) and its first live change are always consecutive: nothing is
//! missed or sent twice. Fan-out never waits: each subscriber has a bounded
//! buffer of change batches, and a subscriber whose buffer is full is evicted
//! (it will reconnect and resync) instead of blocking the sources or growing
//! memory.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot, watch};

use super::frames::ChangeBatch;
use super::stats::{ServerStats, Telemetry, increment};
use super::store::{PrefixFilter, Snapshot, Store, StoredEntity};
use crate::domain::{Entity, EntityEvent, EntityId};

/// Why the hub ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its buffer was full: the subscriber does not keep up.
    Evicted,
    /// The server is shutting down.
    Shutdown,
}

/// Cloneable handle on the store; what sources feed and the service reads.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

struct Shared {
    /// parking_lot's, for [`MutexGuard::unlock_fair`]; it does not poison,
    /// and the store needs no poisoning: it is only mutated through
    /// `Store::apply`, which leaves it consistent at every step.
    state: Mutex<State>,
    telemetry: Telemetry,
    /// Flips to true once, at shutdown; streams waiting for a snapshot slot
    /// (not yet subscribed) watch it.
    closed: watch::Sender<bool>,
}

struct State {
    store: Store,
    subscribers: Vec<Slot>,
    /// The id of the next subscription.
    next_id: u64,
    closed: bool,
}

/// The hub's end of one subscription.
struct Slot {
    id: u64,
    batches: mpsc::Sender<ChangeBatch>,
    stop: oneshot::Sender<Stop>,
}

impl Slot {
    fn end(self, reason: Stop) {
        // The subscriber may already be gone; then nobody needs the reason.
        let _ = self.stop.send(reason);
    }
}

/// The stream's end of one subscription: live change batches, and the
/// reason if the hub ends it. Dropping it unsubscribes.
pub(crate) struct Subscription {
    pub batches: mpsc::Receiver<ChangeBatch>,
    pub stop: oneshot::Receiver<Stop>,
    /// Held to the end, though the other fields are moved out.
    pub _registration: Registration,
}

/// Removes its subscription's slot from the hub when dropped, so a stream
/// that ended leaves nothing behind even if no change ever comes to find
/// its channel closed.
pub(crate) struct Registration {
    hub: StoreHandle,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub
            .state()
            .subscribers
            .retain(|slot| slot.id != self.id);
    }
}

impl StoreHandle {
    /// Wraps `store`; the handle (and its clones) now own it.
    pub fn new(store: Store) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    store,
                    subscribers: Vec::new(),
                    next_id: 0,
                    closed: false,
                }),
                telemetry: Telemetry::default(),
                closed: watch::Sender::new(false),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock()
    }

    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    /// Applies `events` to the store and queues the effective changes for
    /// every subscriber. Returns how many changes there were.
    pub fn apply(&self, events: impl IntoIterator<Item = EntityEvent>) -> usize {
        let mut state = self.state();
        let changes = state.store.apply(events);
        if changes.is_empty() {
            MutexGuard::unlock_fair(state);
            return 0;
        }
        let count = changes.len();
        let batch = ChangeBatch::new(changes.into());
        let telemetry = &self.shared.telemetry;
        let subscribers = std::mem::take(&mut state.subscribers);
        state.subscribers = subscribers
            .into_iter()
            .filter_map(|slot| match slot.batches.try_send(batch.clone()) {
                Ok(()) => Some(slot),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    increment(&telemetry.subscribers_evicted);
                    tracing::warn!(
                        "evicting a tagger subscriber that does not keep up (its buffer is full); it will have to reconnect and resync"
                    );
                    slot.end(Stop::Evicted);
                    None
                }
                Err(mpsc::error::TrySendError::Closed(_)) => None,
            })
            .collect();
        // Handed to a waiting thread, if any: a source applying batch after
        // batch (a large entities file) would otherwise take the lock back
        // before a waiting fetch or subscription wakes up, for seconds.
        MutexGuard::unlock_fair(state);
        count
    }

    /// The entity as the store holds it now (full cardinality).
    pub fn entity(&self, id: &EntityId) -> Option<Arc<StoredEntity>> {
        self.state().store.get(id).cloned()
    }

    /// Every entity of the store now (full cardinality), for sources that
    /// reconcile against it.
    pub fn entities(&self) -> Vec<Entity> {
        let snapshot = self.state().store.snapshot(&PrefixFilter::all());
        snapshot
            .entities
            .iter()
            .map(|stored| stored.entity().clone())
            .collect()
    }

    /// The identity of the store instance behind this handle.
    pub fn epoch(&self) -> super::store::Epoch {
        self.state().store.epoch().clone()
    }

    pub fn revision(&self) -> u64 {
        self.state().store.revision()
    }

    /// The matching entities as the store holds them now: what a checker
    /// compares a client's mirror with (simulations, tests).
    pub fn snapshot(&self, filter: &PrefixFilter) -> Snapshot {
        self.state().store.snapshot(filter)
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> ServerStats {
        self.shared.telemetry.read(&self.state().store)
    }

    /// Subscribes to live changes, starting with a snapshot of the matching
    /// entities. `None` once the hub is closed.
    pub(crate) fn subscribe_with_snapshot(
        &self,
        filter: &PrefixFilter,
        buffer: usize,
    ) -> Option<(Snapshot, Subscription)> {
        let mut state = self.state();
        if state.closed {
            return None;
        }
        let snapshot = state.store.snapshot(filter);
        Some((snapshot, self.register(&mut state, buffer)))
    }

    /// Subscribes to live changes after `revision` of `epoch`, starting with
    /// the logged changes since then. Refused when the store cannot replay
    /// from there (the caller falls back to a snapshot) or the hub is closed.
    pub(crate) fn subscribe_resuming(
        &self,
        epoch: &str,
        revision: u64,
        buffer: usize,
    ) -> Result<Resumed, ResumeRefused> {
        let mut state = self.state();
        if state.closed {
            return Err(ResumeRefused::Closed);
        }
        let changes = state
            .store
            .changes_since(epoch, revision)
            .ok_or(ResumeRefused::NotInLog)?;
        Ok(Resumed {
            changes: ChangeBatch::new(changes.into()),
            revision: state.store.revision(),
            subscription: self.register(&mut state, buffer),
        })
    }

    /// Ends every subscription (clients are told the server is shutting
    /// down) and refuses new ones: a closed handle stays closed.
    pub fn close(&self) {
        let subscribers = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.subscribers)
        };
        for slot in subscribers {
            slot.end(Stop::Shutdown);
        }
        self.shared.closed.send_replace(true);
    }

    fn register(&self, state: &mut State, buffer: usize) -> Subscription {
        // A zero-capacity mpsc channel panics; one batch is the least buffer.
        let (batches_tx, batches) = mpsc::channel(buffer.max(1));
        let (stop_tx, stop) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.push(Slot {
            id,
            batches: batches_tx,
            stop: stop_tx,
        });
        Subscription {
            batches,
            stop,
            _registration: Registration {
                hub: self.clone(),
                id,
            },
        }
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub(crate) async fn closed(&self) {
        let mut closed = self.shared.closed.subscribe();
        // An error means the sender is gone, which cannot happen while `self`
        // holds it; either way there is nothing left to wait for.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

/// A subscription that resumes: the missed changes, the store revision
/// they lead to, and the live changes after it.
pub(crate) struct Resumed {
    pub changes: ChangeBatch,
    pub revision: u64,
    pub subscription: Subscription,
}

/// Why a resume was not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeRefused {
    /// The epoch differs or the revision is outside the change log.
    NotInLog,
    /// The hub is closed.
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Epoch;

    fn added(id: &str) -> EntityEvent {
        EntityEvent::Added(Entity::new(EntityId::parse(id).unwrap()))
    }

    fn handle() -> StoreHandle {
        StoreHandle::new(Store::new(Epoch::from_seed(3), 10))
    }

    #[test]
    fn subscribers_get_changes_after_their_snapshot() {
        let hub = handle();
        hub.apply([added("host://a")]);
        let (snapshot, mut sub) = hub
            .subscribe_with_snapshot(&PrefixFilter::all(), 4)
            .unwrap();
        assert_eq!((snapshot.revision, snapshot.entities.len()), (1, 1));
        assert_eq!(hub.apply([added("host://b")]), 1);
        assert_eq!(hub.apply([added("host://b")]), 0);
        let batch = sub.batches.try_recv().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].revision, 2);
        assert!(sub.batches.try_recv().is_err());
    }

    #[test]
    fn a_full_buffer_evicts_only_that_subscriber() {
        let hub = handle();
        let (_, mut slow) = hub
            .subscribe_with_snapshot(&PrefixFilter::all(), 1)
            .unwrap();
        let (_, mut fast) = hub
            .subscribe_with_snapshot(&PrefixFilter::all(), 8)
            .unwrap();
        hub.apply([added("host://a")]);
        hub.apply([added("host://b")]);
        assert_eq!(hub.stats().subscribers_evicted, 1);
        // The slow one keeps what was queued, then learns it was evicted.
        assert!(slow.batches.try_recv().is_ok());
        assert!(matches!(
            slow.batches.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(slow.stop.try_recv().unwrap(), Stop::Evicted);
        assert_eq!(fast.batches.try_recv().unwrap()[0].revision, 1);
        assert_eq!(fast.batches.try_recv().unwrap()[0].revision, 2);
    }

    #[test]
    fn resume_replays_the_log_or_refuses() {
        let hub = handle();
        hub.apply([added("host://a"), added("host://b")]);
        let epoch = hub.epoch();
        let resumed = hub.subscribe_resuming(epoch.as_str(), 1, 4).unwrap();
        assert_eq!(resumed.changes.len(), 1);
        assert_eq!(resumed.changes[0].revision, 2);
        assert_eq!(resumed.revision, 2);
        assert_eq!(
            hub.subscribe_resuming("stale", 1, 4).err(),
            Some(ResumeRefused::NotInLog)
        );
    }

    #[test]
    fn a_dropped_subscription_leaves_the_hub() {
        let hub = handle();
        let (_, kept) = hub
            .subscribe_with_snapshot(&PrefixFilter::all(), 4)
            .unwrap();
        let (_, dropped) = hub
            .subscribe_with_snapshot(&PrefixFilter::all(), 4)
            .unwrap();
        assert_eq!(hub.state().subscribers.len(), 2);
        drop(dropped);
        let ids: Vec<u64> = hub.state().subscribers.iter().map(|s| s.id).collect();
        assert_eq!(ids, [kept._registration.id]);
    }

    #[test]
    fn close_ends_subscriptions_and_refuses_new_ones() {
        let hub = handle();
        let (_, mut sub) = hub
            .subscribe_with_snapshot(&PrefixFilter::all(), 4)
            .unwrap();
        hub.close();
        assert!(matches!(
            sub.batches.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(sub.stop.try_recv().unwrap(), Stop::Shutdown);
        assert!(
            hub.subscribe_with_snapshot(&PrefixFilter::all(), 4)
                .is_none()
        );
        let epoch = hub.epoch();
        assert_eq!(
            hub.subscribe_resuming(epoch.as_str(), 0, 4).err(),
            Some(ResumeRefused::Closed)
        );
    }
}
