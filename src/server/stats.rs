//! Server telemetry as plain atomic counters; exposition (Prometheus) is left
//! to the caller, which reads a [`ServerStats`] snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::domain::Cardinality;
use crate::origin::OriginResult;

/// A point-in-time copy of the server's counters and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// `tagger_server_stream_errors`: streams that ended on a failed or
    /// timed-out send or an eviction (a client closing its stream is normal).
    pub stream_errors: u64,
    /// `tagger_subscribers` (gauge): streams currently open.
    pub subscribers: u64,
    /// `tagger_sends`: responses handed to the transport, keep-alives included.
    pub sends: u64,
    /// `tagger_events{cardinality}`: events sent, by subscriber cardinality.
    pub events: EventsByCardinality,
    /// Keep-alives (empty responses) among `sends`.
    pub keepalives: u64,
    /// Snapshots sent to the end.
    pub snapshots_sent: u64,
    /// Snapshots being produced now, holding a slot (gauge; at most
    /// `max_concurrent_snapshots`).
    pub snapshots_in_flight: u64,
    /// Streams waiting for a snapshot slot, to start or to go on (gauge).
    pub snapshots_waiting: u64,
    /// Snapshots started whose client has not taken the last chunk; they
    /// wait for it without a slot (gauge).
    pub snapshots_stalled: u64,
    /// Resume requests answered with only the missed changes.
    pub resumes_accepted: u64,
    /// Resume requests answered with a snapshot (other epoch, revision out of the log).
    pub resumes_refused: u64,
    /// Subscribers dropped because their buffer was full.
    pub subscribers_evicted: u64,
    /// Requests refused for a missing or wrong token.
    pub auth_failures: u64,
    /// Requests refused at a limit: `max_subscriptions` for tagger streams,
    /// `max_unauthenticated_requests` for health and reflection.
    pub requests_refused: u64,
    /// Source problems reported (an entities file turned unreadable or
    /// invalid; the last good state is kept).
    pub source_errors: u64,
    /// Items a source skipped (the host source: processes that exited
    /// mid-read, unreadable files, malformed lines), summed over its scans.
    pub source_skipped: u64,
    /// `tagger_server_origin_requests{result}`: origin requests
    /// (`TaggerGenerateContainerIDFromOriginInfo`), by how they were answered.
    pub origin_requests: OriginRequests,
    /// Of `origin_requests`, those answered from the cache.
    pub origin_cache_hits: u64,
    /// Relay only (`serve --upstream`): the upstream stream is open. While
    /// it is not, the last mirrored state keeps being served.
    pub upstream_connected: bool,
    /// Relay only: the store reflects the upstream (synced, not merely
    /// connected).
    pub upstream_synced: bool,
    /// Current store revision (gauge).
    pub store_revision: u64,
    /// Entities in the store (gauge).
    pub store_entities: u64,
    /// Of those, entities whose prefix is not in the table (gauge).
    pub store_unknown_prefix_entities: u64,
}

/// Events sent, one counter per cardinality label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsByCardinality {
    /// Events sent to `low` subscribers.
    pub low: u64,
    /// Events sent to `orchestrator` subscribers.
    pub orchestrator: u64,
    /// Events sent to `high` subscribers.
    pub high: u64,
}

impl EventsByCardinality {
    /// The counter of `cardinality`.
    pub fn get(&self, cardinality: Cardinality) -> u64 {
        match cardinality {
            Cardinality::Low => self.low,
            Cardinality::Orchestrator => self.orchestrator,
            Cardinality::High => self.high,
        }
    }
}

/// Origin requests answered, one counter per [`OriginResult`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginRequests([u64; OriginResult::ALL.len()]);

impl OriginRequests {
    /// The requests answered with `result`.
    pub fn get(&self, result: OriginResult) -> u64 {
        self.0[result.index()]
    }
}

/// The live counters behind [`ServerStats`].
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    pub stream_errors: AtomicU64,
    pub subscribers: AtomicU64,
    pub sends: AtomicU64,
    pub events: [AtomicU64; 3],
    pub keepalives: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_in_flight: AtomicU64,
    pub snapshots_waiting: AtomicU64,
    pub snapshots_stalled: AtomicU64,
    pub resumes_accepted: AtomicU64,
    pub resumes_refused: AtomicU64,
    pub subscribers_evicted: AtomicU64,
    pub auth_failures: AtomicU64,
    pub requests_refused: AtomicU64,
    pub source_errors: AtomicU64,
    pub source_skipped: AtomicU64,
    pub origin_requests: [AtomicU64; OriginResult::ALL.len()],
    pub origin_cache_hits: AtomicU64,
    pub upstream_connected: AtomicBool,
    pub upstream_synced: AtomicBool,
}

/// Counter increments need no ordering with other memory: readers only want
/// eventually consistent numbers.
pub(crate) fn increment(counter: &AtomicU64) {
    add(counter, 1);
}

pub(crate) fn add(counter: &AtomicU64, amount: usize) {
    counter.fetch_add(amount as u64, Ordering::Relaxed);
}

impl Telemetry {
    pub fn count_events(&self, cardinality: Cardinality, count: usize) {
        let index = match cardinality {
            Cardinality::Low => 0,
            Cardinality::Orchestrator => 1,
            Cardinality::High => 2,
        };
        self.events[index].fetch_add(count as u64, Ordering::Relaxed);
    }

    pub fn read(&self, store: &super::store::Store) -> ServerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerStats {
            stream_errors: get(&self.stream_errors),
            subscribers: get(&self.subscribers),
            sends: get(&self.sends),
            events: EventsByCardinality {
                low: get(&self.events[0]),
                orchestrator: get(&self.events[1]),
                high: get(&self.events[2]),
            },
            keepalives: get(&self.keepalives),
            snapshots_sent: get(&self.snapshots_sent),
            snapshots_in_flight: get(&self.snapshots_in_flight),
            snapshots_waiting: get(&self.snapshots_waiting),
            snapshots_stalled: get(&self.snapshots_stalled),
            resumes_accepted: get(&self.resumes_accepted),
            resumes_refused: get(&self.resumes_refused),
            subscribers_evicted: get(&self.subscribers_evicted),
            auth_failures: get(&self.auth_failures),
            requests_refused: get(&self.requests_refused),
            source_errors: get(&self.source_errors),
            source_skipped: get(&self.source_skipped),
            origin_requests: OriginRequests(self.origin_requests.each_ref().map(get)),
            origin_cache_hits: get(&self.origin_cache_hits),
            upstream_connected: self.upstream_connected.load(Ordering::Relaxed),
            upstream_synced: self.upstream_synced.load(Ordering::Relaxed),
            store_revision: store.revision(),
            store_entities: store.len() as u64,
            store_unknown_prefix_entities: store.unknown_prefix_entities(),
        }
    }
}

/// Holds a gauge up for as long as it lives, so every exit path (errors,
/// cancellation, panics) brings the gauge back down.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub fn raise(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
