//! The sans-IO client core: one remote-tagger connection as a pure state machine.
//!
//! It owns connect, receive, keep-alive, receive timeout, backoff and resync,
//! and fills the [`MirrorWriter`]. It never reads a clock, never spawns, never
//! touches a socket: time (`now`) and randomness (the seed in [`CoreConfig`])
//! are inputs, so the production driver, the simulations, proptest and the
//! fuzzer all run exactly the same transitions.
//!
//! # The backoff rule
//!
//! One backoff covers every failure (a failed open, a lost stream, a
//! watchdog timeout, a protocol violation) and grows with each. It goes back
//! to its initial interval only once a stream has stayed open for
//! [`BackoffConfig::reset_after`] (30 s by default) after its first good
//! message: a message that moved the sync forward, not a keep-alive nor
//! headers. The spec resets on the good message itself; a server that
//! fails right after each snapshot then made clients resync in a loop.
//! The reset is the [`Timer::BackoffReset`] timer, so the backoff interval
//! a status shows is always the one the next failure draws from; a failure
//! at or after that deadline resets first, whichever input a driver handles
//! first.

mod backoff;
mod loss;
mod status;
mod telemetry;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

pub use backoff::{Backoff, BackoffConfig};
pub use loss::{
    AuthTokenError, AuthTokenProblem, ConnectError, GrpcStatus, LossReason, ProtocolViolation,
    StatusCode, StreamEnd, TlsFileError, TlsFileProblem, TransportError, TransportErrorKind,
};
pub use status::ClientStatus;
pub use telemetry::ClientTelemetry;

use bytes::Bytes;

use crate::defaults;
use crate::domain::{Cardinality, EntityId, KNOWN_PREFIXES};
use crate::mirror::{EntityChange, MirrorReader, MirrorWriter};
use crate::proto::encoded::EncodedStreamTagsResponse;
use crate::proto::model::StreamTagsRequest;
use crate::wire::{DecodedEvent, decode_event};

/// The [`ClientTelemetry::rejected_events`] reason of a well-formed event
/// of a known prefix the client did not subscribe to (see [`keeps`]).
pub const UNREQUESTED_PREFIX: &str = "unrequested_prefix";

/// Whether a client that requested `requested` keeps a well-formed event of
/// `id`. A requested prefix, yes. A prefix of [`KNOWN_PREFIXES`] it did not
/// request is the server breaking the filter: rejected and counted as
/// [`UNREQUESTED_PREFIX`]. A prefix outside the table can only come from a
/// server newer than it (older ones do not have the prefix, and a server
/// that filters sends only what was asked): kept, and counted by the
/// mirror ([`MirrorReader::unknown_prefix_entities`]), so nothing a newer
/// Agent sends is lost.
pub fn keeps(requested: &[String], id: &EntityId) -> bool {
    !id.has_known_prefix() || requested.iter().any(|prefix| prefix == id.prefix())
}

/// Identifies one connect attempt. Every attempt gets a fresh one; inputs
/// that carry another attempt's id change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// What the core is configured with. Everything it needs is here: no
/// environment, no clock, no global RNG.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// How many tags the server sends per entity.
    pub cardinality: Cardinality,
    /// Entity-ID prefixes to subscribe to, known or not. Always sent
    /// explicitly: an empty list means "nothing" to older servers and
    /// "everything" to newer ones, so the core sends every known prefix
    /// when this is empty. What the core keeps of what arrives: [`keeps`].
    pub prefixes: Vec<String>,
    /// `<flavor>:<uuid>`, unique per client.
    pub streaming_id: String,
    /// How long a stream may stay silent (not even a keep-alive) before the
    /// core drops it.
    pub receive_timeout: Duration,
    /// How long to wait between attempts.
    pub backoff: BackoffConfig,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

impl CoreConfig {
    /// Spec defaults (HIGH cardinality, every known prefix, 10 min watchdog).
    pub fn new(streaming_id: impl Into<String>, seed: u64) -> Self {
        Self {
            cardinality: Cardinality::High,
            prefixes: Vec::new(),
            streaming_id: streaming_id.into(),
            receive_timeout: defaults::RECEIVE_TIMEOUT,
            backoff: BackoffConfig::default(),
            seed,
        }
    }

    /// The prefixes actually requested: the configured ones, or all known ones.
    pub fn requested_prefixes(&self) -> Vec<String> {
        if self.prefixes.is_empty() {
            KNOWN_PREFIXES.iter().map(|p| (*p).to_owned()).collect()
        } else {
            self.prefixes.clone()
        }
    }
}

/// What the driver must do. Exhaustive on purpose: a driver executes every
/// command, so a new one must not compile away unnoticed.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one command per attempt: boxing buys nothing
pub enum Command {
    /// Open a `TaggerStreamEntities` stream for attempt `id` with this request
    /// (the driver adds the bearer token, read afresh for every stream).
    OpenStream {
        /// The attempt this stream is for: report its outcome with the same id.
        id: ConnectionId,
        /// The request to send, prefixes, cardinality and resume point
        /// included.
        request: StreamTagsRequest,
    },
    /// Drop the stream (or the pending open) of attempt `id`.
    CloseStream {
        /// The attempt whose stream to drop.
        id: ConnectionId,
    },
}

/// What the application sees.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The mirror now reflects the server: a snapshot completed, a resume was
    /// accepted, or (against a plain Datadog server) the first batch landed.
    Synced {
        /// The server took up the stream where the mirror was: no snapshot was
        /// needed.
        resumed: bool,
        /// Entities in the mirror once synced.
        entities: usize,
    },
    /// Entities changed in the mirror; query it for their tags.
    EntitiesChanged(Vec<EntityChange>),
    /// The attempt failed or the stream was lost; the next attempt starts
    /// after `retry_in`. The mirror keeps serving its last content.
    ConnectionLost {
        /// The attempt that ended.
        id: ConnectionId,
        /// Why it ended.
        reason: LossReason,
        /// The backoff delay before the next attempt.
        retry_in: Duration,
    },
}

/// The core's named timers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Waiting out the backoff before the next connect attempt.
    Reconnect,
    /// The stream has been silent; at the deadline it is dropped.
    ReceiveWatchdog,
    /// The stream has stayed up [`BackoffConfig::reset_after`] since its
    /// first good message: the backoff goes back to its initial interval.
    BackoffReset,
}

/// The next deadline and which timer it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// When the timer fires, on the clock the core is fed.
    pub at: Instant,
    /// Which timer it is, for traces: [`ClientCore::handle_timeout`] works out
    /// the rest.
    pub timer: Timer,
}

/// Where a connection is, for traces and metrics. Exhaustive: these four
/// are the whole of the core's states (see [`ClientCore`]), and a status
/// display names each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Waiting out the backoff before the next attempt.
    BackingOff,
    /// Open requested, no response headers yet.
    Connecting,
    /// Headers or messages received, not synced yet.
    Syncing,
    /// The mirror reflects the server and follows its changes.
    Synced,
}

/// The server state the mirror holds, which a reconnect can resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The server's epoch: its store's identity, changed by a restart.
    pub epoch: String,
    /// The last revision of that epoch the mirror has applied.
    pub revision: u64,
}

/// The client core. See the module docs for what it owns.
///
/// # Call order
///
/// Create it with [`ClientCore::new`]; it immediately wants to connect. Then,
/// whenever something happens, call the matching `handle_*` with the current
/// time, and after any handle: drain [`poll_command`](Self::poll_command) until
/// `None` and execute the commands in order, then drain
/// [`poll_event`](Self::poll_event) until `None`, then read
/// [`poll_timeout`](Self::poll_timeout) and call
/// [`handle_timeout`](Self::handle_timeout) when it is reached. Do the same
/// right after `new`. There is always a timeout.
///
/// [`status`](Self::status) gives all of it at once, for a status display.
///
/// Every input that names a [`ConnectionId`] other than the current attempt's
/// is stale (a race between the driver's futures) and changes nothing.
pub struct ClientCore {
    config: CoreConfig,
    prefixes: Vec<String>,
    backoff: Backoff,
    next_id: u64,
    state: State,
    mirror: MirrorWriter,
    resume_point: Option<ResumePoint>,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    telemetry: ClientTelemetry,
    /// When the last message of a current stream arrived.
    last_message_at: Option<Instant>,
    /// Why the last connection was lost, until the next sync.
    last_error: Option<LossReason>,
}

#[derive(Debug)]
enum State {
    BackingOff {
        until: Instant,
        /// The delay drawn for this wait.
        retry_in: Duration,
    },
    Open {
        id: ConnectionId,
        /// Response headers were received; not a proof of life (a Go server
        /// sends them only with its first message).
        headers_received: bool,
        /// The watchdog fires this long after the open or the last message.
        last_activity: Instant,
        sync: SyncPhase,
        health: StreamHealth,
    },
}

/// How far an open stream is from earning a backoff reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamHealth {
    /// No good message yet.
    Unproven,
    /// The first good message arrived at `since`; the backoff resets if the
    /// stream is still up `reset_after` later.
    Proving { since: Instant },
    /// The backoff was reset for this stream.
    Proven,
}

#[derive(Debug)]
enum SyncPhase {
    /// Nothing but keep-alives so far.
    AwaitingFirstBatch,
    /// An extension-aware server is sending a snapshot: the mirror stages
    /// it aside so readers never see it half-filled.
    Staging { epoch: String },
    /// Synced; live changes are applied as they come. `epoch` is `None`
    /// against a plain Datadog server.
    Live { epoch: Option<String> },
}

impl ClientCore {
    /// A core that wants to connect at once; drain its commands now.
    pub fn new(now: Instant, config: CoreConfig, mirror: MirrorWriter) -> Self {
        let mut core = Self {
            prefixes: config.requested_prefixes(),
            backoff: Backoff::new(config.backoff.clone(), config.seed),
            config,
            next_id: 1,
            state: State::BackingOff {
                until: now,
                retry_in: Duration::ZERO,
            },
            mirror,
            resume_point: None,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            telemetry: ClientTelemetry::default(),
            last_message_at: None,
            last_error: None,
        };
        core.open(now);
        core
    }

    /// The driver's connection for attempt `id` delivered response headers.
    /// Not a good message: neither the backoff nor the watchdog moves.
    pub fn handle_connected(&mut self, _now: Instant, id: ConnectionId) {
        if let State::Open {
            id: current,
            headers_received,
            ..
        } = &mut self.state
            && *current == id
        {
            *headers_received = true;
        }
    }

    /// Attempt `id` could not open its stream (connect, TLS, auth...).
    pub fn handle_connect_failed(&mut self, now: Instant, id: ConnectionId, error: ConnectError) {
        if self.is_current(id) {
            self.fail(now, LossReason::ConnectFailed(error));
        }
    }

    /// Attempt `id`'s stream ended, cleanly or with an error: either way the
    /// stream is gone, so back off and reconnect.
    pub fn handle_stream_closed(&mut self, now: Instant, id: ConnectionId, end: StreamEnd) {
        if self.is_current(id) {
            self.fail(now, LossReason::StreamClosed(end));
        }
    }

    /// A response arrived on attempt `id`'s stream. The driver hands over
    /// the events still encoded (read in place, see [`crate::wire`]); a
    /// decoded `StreamTagsResponse` converts into that form.
    pub fn handle_response(
        &mut self,
        now: Instant,
        id: ConnectionId,
        response: impl Into<EncodedStreamTagsResponse>,
    ) {
        let mut response = response.into();
        if !self.is_current(id) {
            return;
        }
        self.telemetry.receives += 1;
        self.last_message_at = Some(now);
        let State::Open {
            last_activity,
            headers_received,
            ..
        } = &mut self.state
        else {
            unreachable!("is_current holds only for an open stream")
        };
        *last_activity = now;
        *headers_received = true;
        let wire_events = std::mem::take(&mut response.events);
        let events = self.decode(&wire_events);
        let marked = response.snapshot_complete || response.resumed;
        if events.is_empty() && !marked {
            return; // keep-alive
        }
        if let Err(violation) = self.apply(response, events) {
            self.commands.push_back(Command::CloseStream { id });
            self.fail(now, LossReason::ProtocolViolation(violation));
            return;
        }
        // A message that moved the sync forward: the link works. Whether the
        // server does too shows only if the stream lasts (see the module docs).
        if let State::Open { health, .. } = &mut self.state
            && *health == StreamHealth::Unproven
        {
            *health = StreamHealth::Proving { since: now };
        }
        self.reset_backoff_if_proven(now);
    }

    /// Time passed; fires whichever timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.poll_timeout();
        if now < timeout.at {
            return;
        }
        match (timeout.timer, &self.state) {
            (Timer::Reconnect, _) => self.open(now),
            (Timer::ReceiveWatchdog, State::Open { id, .. }) => {
                let id = *id;
                self.commands.push_back(Command::CloseStream { id });
                let silent_for = self.config.receive_timeout;
                self.fail(now, LossReason::ReceiveTimeout { silent_for });
            }
            (Timer::BackoffReset, State::Open { .. }) => self.reset_backoff_if_proven(now),
            (Timer::ReceiveWatchdog | Timer::BackoffReset, State::BackingOff { .. }) => {
                unreachable!("the watchdog and the reset run only for an open stream")
            }
        }
    }

    /// The next thing the driver must do, in order; `None` when there is
    /// nothing left.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next event for the application, in order; `None` when there is
    /// nothing left.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next deadline: a core always waits for something. Of two timers
    /// due at once, the backoff reset comes first.
    #[must_use]
    pub fn poll_timeout(&self) -> Timeout {
        match &self.state {
            State::BackingOff { until, .. } => Timeout {
                at: *until,
                timer: Timer::Reconnect,
            },
            State::Open {
                last_activity,
                health,
                ..
            } => {
                let watchdog = Timeout {
                    at: *last_activity + self.config.receive_timeout,
                    timer: Timer::ReceiveWatchdog,
                };
                match health {
                    StreamHealth::Proving { since } => {
                        let reset = Timeout {
                            at: *since + self.config.backoff.reset_after,
                            timer: Timer::BackoffReset,
                        };
                        if reset.at <= watchdog.at {
                            reset
                        } else {
                            watchdog
                        }
                    }
                    StreamHealth::Unproven | StreamHealth::Proven => watchdog,
                }
            }
        }
    }

    /// A reader of the mirror this core fills (one per thread).
    pub fn mirror(&self) -> MirrorReader {
        self.mirror.reader()
    }

    /// Whether the mirror reflects the server now.
    pub fn is_synced(&self) -> bool {
        self.connection_state() == ConnectionState::Synced
    }

    /// Everything a status display shows, at once.
    pub fn status(&self) -> ClientStatus {
        ClientStatus {
            state: self.connection_state(),
            telemetry: self.telemetry.clone(),
            staged_entities: self.staged_entities(),
            mirrored_entities: self.mirror.len(),
            extension_aware: self.resume_point.is_some(),
            backoff_interval: self.backoff_interval(),
            retry_delay: match self.state {
                State::BackingOff { retry_in, .. } => Some(retry_in),
                State::Open { .. } => None,
            },
            last_message_at: self.last_message_at,
            last_error: self.last_error.clone(),
        }
    }

    /// Where the current attempt is (see [`ConnectionState`]).
    pub fn connection_state(&self) -> ConnectionState {
        match &self.state {
            State::BackingOff { .. } => ConnectionState::BackingOff,
            State::Open {
                sync: SyncPhase::Live { .. },
                ..
            } => ConnectionState::Synced,
            State::Open {
                headers_received: false,
                ..
            } => ConnectionState::Connecting,
            State::Open { .. } => ConnectionState::Syncing,
        }
    }

    /// The attempt the core is on, if a stream is open or being opened.
    pub fn current_connection(&self) -> Option<ConnectionId> {
        match &self.state {
            State::Open { id, .. } => Some(*id),
            State::BackingOff { .. } => None,
        }
    }

    /// The server state the mirror holds, if the server is extension-aware.
    pub fn resume_point(&self) -> Option<&ResumePoint> {
        self.resume_point.as_ref()
    }

    /// Entities staged for a snapshot that is not complete yet (progress).
    pub fn staged_entities(&self) -> usize {
        self.mirror.staged_len()
    }

    /// The interval the next backoff delay will be drawn around.
    pub fn backoff_interval(&self) -> Duration {
        self.backoff.interval()
    }

    /// What the core counted: responses, stream errors, applied changes,
    /// snapshots, resumes, rejected events.
    pub fn telemetry(&self) -> &ClientTelemetry {
        &self.telemetry
    }

    /// What the core was created with.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    fn is_current(&self, id: ConnectionId) -> bool {
        matches!(self.state, State::Open { id: current, .. } if current == id)
    }

    /// Starts a new attempt with a fresh id.
    fn open(&mut self, now: Instant) {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        let (resume_revision, resume_epoch) = match &self.resume_point {
            Some(point) => (point.revision, point.epoch.clone()),
            None => (0, String::new()),
        };
        let request = StreamTagsRequest {
            cardinality: self.config.cardinality.to_proto() as i32,
            include_filter: None,
            exclude_filter: None,
            prefixes: self.prefixes.clone(),
            streaming_id: self.config.streaming_id.clone(),
            resume_revision,
            resume_epoch,
        };
        self.commands.push_back(Command::OpenStream { id, request });
        self.state = State::Open {
            id,
            headers_received: false,
            last_activity: now,
            sync: SyncPhase::AwaitingFirstBatch,
            health: StreamHealth::Unproven,
        };
    }

    /// Resets the backoff if the open stream has been up `reset_after`
    /// since its first good message (once per stream).
    fn reset_backoff_if_proven(&mut self, now: Instant) {
        if let State::Open { health, .. } = &mut self.state
            && let StreamHealth::Proving { since } = *health
            && now >= since + self.config.backoff.reset_after
        {
            *health = StreamHealth::Proven;
            self.backoff.reset();
        }
    }

    /// The current attempt is over: back off. The mirror keeps its content.
    fn fail(&mut self, now: Instant, reason: LossReason) {
        // A stream that lasted its reset period earned the reset, even if
        // its failure reached us before the reset's timeout did.
        self.reset_backoff_if_proven(now);
        let State::Open { id, .. } = self.state else {
            return;
        };
        // Whatever the stream staged is not a snapshot any more; every
        // attempt but the first starts here, so the next one stages afresh.
        self.mirror.discard_staged();
        self.telemetry.stream_errors += 1;
        let retry_in = self.backoff.next_delay();
        self.state = State::BackingOff {
            until: now + retry_in,
            retry_in,
        };
        self.last_error = Some(reason.clone());
        self.events.push_back(Event::ConnectionLost {
            id,
            reason,
            retry_in,
        });
    }

    /// Converts a response's events, skipping (and counting) what is malformed
    /// or of a known prefix outside the subscription (see [`keeps`]), and
    /// reducing tags to our cardinality in case the server sent more than
    /// asked.
    fn decode<'a>(&mut self, wire_events: &'a [Bytes]) -> Vec<DecodedEvent<'a>> {
        let mut events = Vec::with_capacity(wire_events.len());
        for event in wire_events {
            let reason = match decode_event(event) {
                Ok(mut event) if keeps(&self.prefixes, &event.id) => {
                    event.reduce(self.config.cardinality);
                    events.push(event);
                    continue;
                }
                Ok(event) => {
                    let id = &event.id;
                    tracing::debug!(%id, "skipping an event outside the subscription");
                    UNREQUESTED_PREFIX
                }
                Err(error) => {
                    tracing::warn!(reason = error.reason(), %error, "skipping a malformed event");
                    error.reason()
                }
            };
            self.telemetry.count_rejected(reason);
        }
        events
    }

    /// Applies a non-keep-alive response according to the sync phase.
    fn apply(
        &mut self,
        response: EncodedStreamTagsResponse,
        events: Vec<DecodedEvent<'_>>,
    ) -> Result<(), ProtocolViolation> {
        let State::Open { sync, .. } = &mut self.state else {
            unreachable!("responses are applied only on an open stream")
        };
        let epoch = response.server_epoch;
        match sync {
            SyncPhase::AwaitingFirstBatch if epoch.is_empty() => {
                // A plain Datadog server: its first non-empty batch replaces
                // the store; later chunks of its snapshot are merged as they come.
                if events.is_empty() {
                    return Ok(());
                }
                *sync = SyncPhase::Live { epoch: None };
                self.resume_point = None;
                self.mirror.stage(events);
                self.swap_in();
            }
            SyncPhase::AwaitingFirstBatch
                if response.resumed
                    && self.resume_point.as_ref().is_some_and(|p| p.epoch == epoch) =>
            {
                *sync = SyncPhase::Live {
                    epoch: Some(epoch.clone()),
                };
                self.telemetry.resumes += 1;
                self.apply_live(events);
                self.resume_point = Some(ResumePoint {
                    epoch,
                    revision: response.revision,
                });
                self.last_error = None;
                self.events.push_back(Event::Synced {
                    resumed: true,
                    entities: self.mirror.len(),
                });
            }
            SyncPhase::AwaitingFirstBatch if response.resumed => {
                return Err(ProtocolViolation::ResumedUnknownEpoch { epoch });
            }
            SyncPhase::AwaitingFirstBatch => {
                self.stage(epoch, events, response.snapshot_complete, response.revision);
            }
            SyncPhase::Staging {
                epoch: staging_epoch,
            } => {
                if *staging_epoch != epoch {
                    return Err(ProtocolViolation::EpochChangedMidSnapshot {
                        from: staging_epoch.clone(),
                        to: epoch,
                    });
                }
                self.stage(epoch, events, response.snapshot_complete, response.revision);
            }
            SyncPhase::Live { epoch: None } => self.apply_live(events),
            SyncPhase::Live { epoch: Some(live) } => {
                if *live != epoch {
                    return Err(ProtocolViolation::EpochChangedMidStream {
                        from: live.clone(),
                        to: epoch,
                    });
                }
                self.apply_live(events);
                self.resume_point = Some(ResumePoint {
                    epoch,
                    revision: response.revision,
                });
            }
        }
        Ok(())
    }

    /// Keeps staging an extension-aware snapshot, or swaps it in when complete.
    fn stage(
        &mut self,
        epoch: String,
        events: Vec<DecodedEvent<'_>>,
        complete: bool,
        revision: u64,
    ) {
        let State::Open { sync, .. } = &mut self.state else {
            unreachable!("staging happens only on an open stream")
        };
        self.mirror.stage(events);
        if !complete {
            *sync = SyncPhase::Staging { epoch };
            return;
        }
        *sync = SyncPhase::Live {
            epoch: Some(epoch.clone()),
        };
        self.resume_point = Some(ResumePoint { epoch, revision });
        self.swap_in();
    }

    /// Replaces the mirror with the staged snapshot and announces the sync.
    fn swap_in(&mut self) {
        self.telemetry.snapshots += 1;
        let changes = self.mirror.commit_staged();
        self.publish_changes(changes);
        self.last_error = None;
        self.events.push_back(Event::Synced {
            resumed: false,
            entities: self.mirror.len(),
        });
    }

    fn apply_live(&mut self, events: Vec<DecodedEvent<'_>>) {
        let changes = self.mirror.apply(events);
        self.publish_changes(changes);
    }

    fn publish_changes(&mut self, changes: Vec<EntityChange>) {
        if changes.is_empty() {
            return;
        }
        self.telemetry.updated_entities += changes.len() as u64;
        self.events.push_back(Event::EntitiesChanged(changes));
    }
}
