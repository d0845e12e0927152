//! The core's counters, kept as plain values (exposition is the driver's job).

use std::collections::BTreeMap;

/// Client telemetry (wire-spec section 2 names where the spec has them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTelemetry {
    /// `tagger_receives`: responses received, keep-alives included.
    pub receives: u64,
    /// `tagger_client_stream_errors`: attempts that failed or streams lost.
    pub stream_errors: u64,
    /// `tagger_updated_entities`: entity changes applied to the mirror.
    pub updated_entities: u64,
    /// Complete snapshots swapped into the mirror.
    pub snapshots: u64,
    /// Streams resumed without a snapshot.
    pub resumes: u64,
    /// Events skipped, by reason (malformed, or a known prefix not
    /// subscribed to: see [`keeps`](super::keeps)).
    pub rejected_events: BTreeMap<&'static str, u64>,
}

impl ClientTelemetry {
    pub(crate) fn count_rejected(&mut self, reason: &'static str) {
        *self.rejected_events.entry(reason).or_default() += 1;
    }
}
