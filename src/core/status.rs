//! What a client is doing, as the core knows it: [`ClientCore::status`](super::ClientCore::status).

use std::time::{Duration, Instant};

use super::{ClientTelemetry, ConnectionState, LossReason};

/// A client's state, counters and last failure.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStatus {
    /// Where the current connection is.
    pub state: ConnectionState,
    /// What the core counted since it started.
    pub telemetry: ClientTelemetry,
    /// Entities received for a snapshot not yet complete (progress).
    pub staged_entities: usize,
    /// Entities in the mirror.
    pub mirrored_entities: usize,
    /// The server speaks this project's extensions (atomic snapshots, resume).
    pub extension_aware: bool,
    /// The interval the next backoff delay is drawn around.
    pub backoff_interval: Duration,
    /// While backing off: the delay drawn for this wait (the `retry_in` of
    /// the last [`Event::ConnectionLost`](super::Event::ConnectionLost)).
    pub retry_delay: Option<Duration>,
    /// When the last message (keep-alives included) arrived, on the clock
    /// the core is fed (its driver's `now`); `None` before the first.
    /// Operators alert on its age.
    pub last_message_at: Option<Instant>,
    /// Why the last connection was lost, until the next sync.
    pub last_error: Option<LossReason>,
}
