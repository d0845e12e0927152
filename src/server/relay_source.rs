//! The relay source (`serve --upstream`): mirrors another tagger (ours or a
//! Datadog Agent) with the client driver and feeds the mirror into this
//! server's store, so many consumers can fan out from one origin stream.
//!
//! The upstream is asked for everything (HIGH cardinality, every prefix of
//! the table and any other the configuration names) so the relay can serve
//! any subscriber's cardinality and prefixes itself.
//! While the upstream is away the store keeps its last state, and the
//! `upstream_connected`/`upstream_synced` stats say so.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast::error::RecvError;

use super::hub::StoreHandle;
use crate::client::{ClientConfig, ClientError, RemoteTagger};
use crate::core::{ConnectionState, Event};
use crate::domain::{Cardinality, Entity, EntityId, KNOWN_PREFIXES, diff_entities};
use crate::mirror::{EntityChange, MirrorReader};

/// A relay: the client mirroring the upstream.
pub(crate) struct RelaySource {
    tagger: RemoteTagger,
}

impl RelaySource {
    /// Starts mirroring the upstream. The store starts empty and fills when
    /// the first sync lands; the server does not wait for an upstream that
    /// may be away.
    pub fn start(mut config: ClientConfig) -> Result<Self, ClientError> {
        config.core.cardinality = Cardinality::High;
        config.core.prefixes = upstream_prefixes(&config.core.prefixes);
        Ok(Self {
            tagger: RemoteTagger::start(config)?,
        })
    }

    /// Copies the mirror's changes into `store`, forever.
    pub async fn run(self, store: StoreHandle) -> Infallible {
        let mirror = self.tagger.mirror();
        let mut events = self.tagger.subscribe();
        let mut status = self.tagger.status();
        // The first sync may have happened before we subscribed.
        reconcile(&mirror, &store);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(Event::EntitiesChanged(changes)) => copy_changes(&mirror, &store, &changes),
                    // A (re)sync may have dropped entities deleted while we were
                    // away, and a lagging receiver missed changes: either way,
                    // compare everything.
                    Ok(Event::Synced { .. }) | Err(RecvError::Lagged(_)) => reconcile(&mirror, &store),
                    Ok(Event::ConnectionLost { .. }) => {}
                    // The driver ended (the tagger is stopping): serve the last state.
                    Err(RecvError::Closed) => return std::future::pending().await,
                },
                changed = status.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let state = status.borrow_and_update().state;
                    let telemetry = store.telemetry();
                    telemetry.upstream_connected.store(
                        matches!(state, ConnectionState::Syncing | ConnectionState::Synced),
                        Ordering::Relaxed,
                    );
                    telemetry
                        .upstream_synced
                        .store(state == ConnectionState::Synced, Ordering::Relaxed);
                }
            }
        }
    }
}

/// What the relay asks its upstream for: every prefix of the table, then
/// the `extra` ones not in it (a newer Agent's, which it filters out unless
/// asked for them by name).
fn upstream_prefixes(extra: &[String]) -> Vec<String> {
    let mut prefixes: Vec<String> = KNOWN_PREFIXES.iter().map(|p| (*p).to_owned()).collect();
    for prefix in extra {
        if !prefixes.contains(prefix) {
            prefixes.push(prefix.clone());
        }
    }
    prefixes
}

/// Applies the current mirror state of the changed entities. Reading the
/// mirror (not replaying the event) keeps the store right even when events
/// are coalesced or arrive after a later change.
fn copy_changes(mirror: &MirrorReader, store: &StoreHandle, changes: &[EntityChange]) {
    let ids = changes.iter().map(|change| &change.id);
    let in_store = ids
        .clone()
        .filter_map(|id| Some((id.clone(), store.entity(id)?.entity().clone())))
        .collect();
    let in_mirror = ids
        .filter_map(|id| Some((id.clone(), mirror.entity(id.as_str())?)))
        .collect();
    apply_difference(store, &in_store, &in_mirror);
}

/// Makes the store equal to the whole mirror.
fn reconcile(mirror: &MirrorReader, store: &StoreHandle) {
    let in_store = by_id(store.entities());
    let in_mirror = by_id(mirror.list());
    apply_difference(store, &in_store, &in_mirror);
}

fn by_id(entities: Vec<Entity>) -> BTreeMap<EntityId, Entity> {
    entities.into_iter().map(|e| (e.id.clone(), e)).collect()
}

fn apply_difference(
    store: &StoreHandle,
    in_store: &BTreeMap<EntityId, Entity>,
    in_mirror: &BTreeMap<EntityId, Entity>,
) {
    let events = diff_entities(in_store, in_mirror);
    if !events.is_empty() {
        store.apply(events);
    }
}
