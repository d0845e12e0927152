//! The reference harness for the client core: a model server, a scripted
//! network between them, and the invariants checked after every step.
//!
//! proptest, the fuzzer and the pure simulation tier drive the core through
//! this one harness, so the invariants are written once. Everything here is
//! pure and deterministic: time is a number the harness advances.
//!
//! Explicit ops (accept this open, deliver that message) let proptest reach
//! any interleaving; [`Op::NetworkStep`] instead lets the emulated
//! network (`network.rs`) decide, with latency, loss, partitions and holds, which is
//! what the seeded [`scenario`]s of the pure simulation tier use.
//!
//! Compiled only with the `test-kit` feature (which `fuzzing`, `sim` and
//! this package's tests turn on): the shipped crate carries none of it.

mod model_server;
mod network;
pub mod scenario;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub use model_server::{ModelServer, harness_entity, harness_id};
pub use network::NetworkConfig;

use crate::core::{
    ClientCore, Command, ConnectError, ConnectionId, CoreConfig, Event, StreamEnd, Timer,
    TransportError, TransportErrorKind,
};
use crate::domain::{Cardinality, Entity, EntityId, KNOWN_PREFIXES};
use crate::mirror::MirrorWriter;
use crate::proto::model::{self as pb, StreamTagsResponse};
use network::{Link, LinkEvent, Network, OpenStream, Reachability};

/// Prefixes the harness's entities use (a subscription picks a subset). The
/// last is outside [`KNOWN_PREFIXES`], as
/// the prefixes of an Agent newer than the table are.
pub const HARNESS_PREFIXES: [&str; 4] = [
    "container_id",
    "kubernetes_pod_uid",
    "process",
    "kubernetes_future_thing",
];
/// What a client that requested `requested` keeps of an event with this
/// well-formed id's `prefix` (wire-spec section 1): a prefix it asked for, or
/// one outside the Agent's table. The reference the harness and the fuzzers
/// hold the core's [`keeps`](crate::core::keeps) to, so spelled apart from it.
pub fn client_keeps(requested: &[String], prefix: &str) -> bool {
    requested.iter().any(|p| p == prefix) || !KNOWN_PREFIXES.contains(&prefix)
}

/// Distinct entity ids per prefix: few, so changes collide with each other.
pub const IDS_PER_PREFIX: u8 = 4;

/// Network steps enough to [`Harness::converge`] from any state: a backoff
/// wait, an open, and a few deliveries per round, for a few rounds.
pub const CONVERGE_STEPS: usize = 64;

/// One step of a scenario: something the network, the server or time does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Time passes by this many milliseconds; due timers fire.
    Advance {
        /// Milliseconds.
        millis: u32,
    },
    /// Time jumps straight to the core's next deadline, which fires.
    AdvanceToTimeout,
    /// Time jumps to whichever comes first, the core's deadline or the
    /// network's next event (an open resolving, a message arriving, a
    /// stream dying, a server keep-alive), and that happens.
    NetworkStep,
    /// The pending open succeeds: headers arrive and the server queues its
    /// first responses (a snapshot, or a resume).
    AcceptOpen,
    /// The pending open fails.
    FailOpen,
    /// Up to this many queued responses reach the core.
    Deliver {
        /// At most this many.
        count: u8,
    },
    /// The server sends an empty response.
    KeepAlive,
    /// The open stream (or pending open) breaks.
    BreakStream,
    /// The server's store upserts entity `entity` with tag variant `variant`.
    ServerUpsert {
        /// Which entity of the harness's set.
        entity: u8,
        /// Which of its tag variants.
        variant: u8,
    },
    /// The server's store deletes entity `entity` (a no-op if absent).
    ServerDelete {
        /// Which entity of the harness's set.
        entity: u8,
    },
    /// The server sends a DELETED for an id it never had.
    DeleteUnknown,
    /// The server sends a malformed event of this kind.
    Malformed {
        /// Which malformation (see `model_server::malformed_event`).
        kind: u8,
    },
    /// The server restarts: new epoch, change log lost, open stream broken.
    ServerRestart,
    /// The server drops its streams but keeps its store instance (same
    /// epoch, change log intact), as when it evicts a slow subscriber.
    ServerDropStreams,
    /// The network drops everything between client and server.
    Partition,
    /// The network holds everything between client and server back.
    Hold,
    /// Partitions heal, holds are released.
    Heal,
    /// New one-way latency and jitter for messages sent from now on.
    SetLatency {
        /// The one-way latency.
        millis: u16,
        /// The most a message's latency varies.
        jitter_millis: u16,
    },
    /// New chance, per thousand, that a message is lost (killing its stream).
    SetLoss {
        /// Per thousand messages.
        per_mille: u16,
    },
    /// The server starts or stops speaking the extensions (plain Datadog).
    SetExtensions {
        /// Whether it speaks them.
        enabled: bool,
    },
    /// An input for an attempt that is not the current one.
    Stale {
        /// Which input: connected, connect failed, stream closed, or a
        /// response.
        kind: u8,
        /// Which earlier attempt, counted back from the last (an id from the
        /// future when there is none).
        back: u8,
    },
}

/// Options of one harness run. Every value is valid (prefix indices wrap, no
/// prefix means every known one, a chunk size of zero counts as one), so a
/// fuzzer may fill it with anything.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct HarnessConfig {
    /// Seeds the core's jitter and the network's randomness.
    pub seed: u64,
    /// What the client subscribes with.
    pub cardinality: Cardinality,
    /// Indices into [`HARNESS_PREFIXES`] the client subscribes to.
    pub prefixes: Vec<usize>,
    /// Whether the server starts out speaking the extensions (atomic snapshots,
    /// resume).
    pub extensions: bool,
    /// The server sends every entity whatever prefixes the request names,
    /// as Datadog servers did before the prefix filter: the client must
    /// itself keep what it asked for and the prefixes outside its table,
    /// and reject the rest (see [`client_keeps`]).
    pub server_ignores_prefixes: bool,
    /// Events per snapshot chunk (small, so snapshots take several chunks).
    pub chunk_events: usize,
    /// Changes the server's log keeps for resumes.
    pub log_capacity: usize,
    /// The emulated network (instant and lossless by default). The fuzzer
    /// keeps the default and drives the network through explicit ops.
    #[cfg_attr(feature = "fuzzing", arbitrary(default))]
    pub network: NetworkConfig,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            cardinality: Cardinality::High,
            prefixes: vec![0, 1, 2, 3],
            extensions: true,
            server_ignores_prefixes: false,
            chunk_events: 3,
            log_capacity: 8,
            network: NetworkConfig::default(),
        }
    }
}

/// The core, the model server between them, and the reference state the
/// invariants compare against.
pub struct Harness {
    core: ClientCore,
    server: ModelServer,
    config: HarnessConfig,
    start: Instant,
    now: Instant,
    link: Link,
    network: Network,
    /// Ids of every attempt so far, for stale inputs.
    attempts: Vec<ConnectionId>,
    /// When the current stream last showed life (open or message).
    last_activity: Instant,
    /// The reference backoff interval, advanced on failures; see
    /// [`Self::expected_backoff_interval`] for its reset.
    expected_interval: Duration,
    /// When the current stream's first good message arrived.
    first_good_at: Option<Instant>,
    trace: Vec<String>,
}

/// An invariant violation: what broke, and the trace that led there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($arg)+)));
        }
    };
}

/// The core's observable state: a stale input must leave all of it as it was.
#[derive(Debug, PartialEq)]
struct Observable {
    state: crate::core::ConnectionState,
    timeout: crate::core::Timeout,
    resume_point: Option<crate::core::ResumePoint>,
    backoff_interval: Duration,
    telemetry: crate::core::ClientTelemetry,
    mirror: Vec<Entity>,
}

impl Harness {
    /// A harness whose core starts connecting at once (base time `start`).
    pub fn new(config: HarnessConfig, start: Instant) -> Result<Self, Violation> {
        let mut core_config = CoreConfig::new("harness:client", config.seed);
        core_config.cardinality = config.cardinality;
        core_config.prefixes = config
            .prefixes
            .iter()
            .map(|&i| HARNESS_PREFIXES[i % HARNESS_PREFIXES.len()].to_owned())
            .collect();
        let core = ClientCore::new(start, core_config, MirrorWriter::new());
        let mut harness = Self {
            expected_interval: core.backoff_interval(),
            core,
            server: ModelServer::new(
                config.seed,
                config.extensions,
                config.server_ignores_prefixes,
                config.chunk_events,
                config.log_capacity,
            ),
            network: Network::new(config.network.clone(), config.seed),
            config,
            start,
            now: start,
            link: Link::Idle,
            attempts: Vec::new(),
            last_activity: start,
            first_good_at: None,
            trace: Vec::new(),
        };
        harness.drain()?;
        harness.check()?;
        Ok(harness)
    }

    /// The client core under test.
    pub fn core(&self) -> &ClientCore {
        &self.core
    }

    /// The model server it talks to.
    pub fn server(&self) -> &ModelServer {
        &self.server
    }

    /// The application-level trace so far: commands, events and timeouts with
    /// their time since start. Same seed and same ops give the same trace.
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// Connect attempts so far.
    pub fn attempts(&self) -> usize {
        self.attempts.len()
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Runs one op, then checks every invariant.
    pub fn step(&mut self, op: &Op) -> Result<(), Violation> {
        self.record(format!("op {op:?}"));
        match *op {
            Op::Advance { millis } => {
                self.advance_to(self.now + Duration::from_millis(u64::from(millis)))?;
            }
            Op::AdvanceToTimeout => {
                let timeout = self.core.poll_timeout();
                self.advance_to(self.now.max(timeout.at))?;
            }
            Op::NetworkStep => self.network_step()?,
            Op::AcceptOpen => self.accept_open()?,
            Op::FailOpen => self.fail_open(broken(TransportErrorKind::Unreachable, "refused"))?,
            Op::Deliver { count } => {
                for _ in 0..count {
                    if !self.deliver_next()? {
                        break;
                    }
                }
            }
            Op::KeepAlive => {
                if let Link::Open(stream) = &mut self.link {
                    stream.queue.push_back(network::InFlight {
                        arrives_at: self.now,
                        response: self.server.keep_alive(),
                    });
                    self.deliver_next()?;
                }
            }
            Op::BreakStream => self.break_link(broken(TransportErrorKind::Other, "broken pipe"))?,
            Op::ServerUpsert { entity, variant } => {
                let change = self.server.upsert(entity, variant);
                self.queue_live(change);
            }
            Op::ServerDelete { entity } => {
                let change = self.server.delete(entity);
                self.queue_live(change);
            }
            Op::DeleteUnknown => self.queue_raw(vec![model_server::unknown_delete()]),
            Op::Malformed { kind } => self.queue_raw(vec![model_server::malformed_event(kind)]),
            Op::ServerRestart => {
                self.server.restart();
                self.break_link(broken(TransportErrorKind::Other, "server restarted"))?;
            }
            Op::ServerDropStreams => self.break_link(broken(
                TransportErrorKind::Other,
                "server dropped the stream",
            ))?,
            Op::Partition => self
                .network
                .cut(Reachability::Partitioned, &mut self.link, self.now),
            Op::Hold => self
                .network
                .cut(Reachability::Held, &mut self.link, self.now),
            Op::Heal => self.network.heal(&mut self.link, self.now),
            Op::SetLatency {
                millis,
                jitter_millis,
            } => {
                self.network.config.latency = Duration::from_millis(u64::from(millis));
                self.network.config.jitter = Duration::from_millis(u64::from(jitter_millis));
            }
            Op::SetLoss { per_mille } => self.network.config.loss_per_mille = per_mille,
            Op::SetExtensions { enabled } => self.server.set_extensions(enabled),
            Op::Stale { kind, back } => self.stale_input(kind, back)?,
        }
        self.check()
    }

    /// Heals everything and runs until the client is synced with nothing left
    /// to deliver, within `max_steps` network steps. Returns the simulated
    /// time it took.
    pub fn converge(&mut self, max_steps: usize) -> Result<Duration, Violation> {
        let began = self.now;
        self.step(&Op::Heal)?;
        self.step(&Op::SetLoss { per_mille: 0 })?;
        for _ in 0..max_steps {
            match &self.link {
                Link::Pending(_) => self.step(&Op::AcceptOpen)?,
                Link::Open(stream) if !stream.queue.is_empty() => {
                    self.step(&Op::Deliver { count: u8::MAX })?
                }
                _ if self.settled() => return Ok(self.now - began),
                // A backoff to wait out, or a stream doomed by a loss or a
                // partition to see die.
                _ => self.step(&Op::NetworkStep)?,
            }
        }
        Err(Violation(format!(
            "no convergence within {max_steps} steps: state {:?}\n{}",
            self.core.connection_state(),
            self.trace_tail()
        )))
    }

    /// A plain Datadog server with nothing to send never sends a message, so
    /// a client of it never syncs: that is the protocol, not a bug.
    fn never_syncs(&self) -> bool {
        !self.server.extensions() && self.expected_store().is_empty()
    }

    /// Runs the network alone (no new faults) until `at`, or until the
    /// client is synced with nothing in flight on a healthy stream.
    /// Returns whether it settled.
    pub fn run_network_until(
        &mut self,
        at: Instant,
        stop_when_settled: bool,
    ) -> Result<bool, Violation> {
        loop {
            if stop_when_settled && self.settled() {
                return Ok(true);
            }
            if self.next_deadline() > at {
                self.advance_to(at)?;
                return Ok(stop_when_settled && self.settled());
            }
            self.step(&Op::NetworkStep)?;
        }
    }

    /// Synced, nothing in flight, on a stream that will not die: with the
    /// server quiet, nothing changes any more (but keep-alives).
    pub fn settled(&self) -> bool {
        let healthy = match &self.link {
            Link::Open(stream) => {
                stream.queue.is_empty() && stream.lost_at.is_none() && stream.stall.is_none()
            }
            _ => false,
        };
        (healthy && self.core.is_synced()) || self.never_syncs()
    }

    /// The earliest of the core's deadline and the network's next event.
    fn next_deadline(&self) -> Instant {
        let timer = self.core.poll_timeout().at;
        match self.network.next_event(&self.link) {
            Some((at, _)) => timer.min(at).max(self.now),
            None => timer.max(self.now),
        }
    }

    /// Time moves to `at`, each timer firing at its own deadline on the way.
    fn advance_to(&mut self, at: Instant) -> Result<(), Violation> {
        // Timers may chain (a reconnect fires, then its watchdog): fire all due.
        loop {
            let timeout = self.core.poll_timeout();
            if timeout.at > at {
                break;
            }
            self.now = self.now.max(timeout.at);
            match timeout.timer {
                Timer::ReceiveWatchdog => {
                    let silent = self.now - self.last_activity;
                    ensure!(
                        silent >= self.core.config().receive_timeout,
                        "receive watchdog due after only {silent:?} of silence"
                    );
                }
                Timer::BackoffReset => {
                    let reset_after = self.core.config().backoff.reset_after;
                    ensure!(
                        self.first_good_at
                            .is_some_and(|at| self.now >= at + reset_after),
                        "backoff reset due with the first good message at {:?}",
                        self.first_good_at.map(|at| at - self.start)
                    );
                }
                Timer::Reconnect => {}
            }
            self.core.handle_timeout(self.now);
            self.drain()?;
            ensure!(
                self.core.poll_timeout() != timeout,
                "timer {timeout:?} fired without moving"
            );
        }
        self.now = self.now.max(at);
        Ok(())
    }

    /// Time jumps to the next deadline; if it is the network's, its event happens.
    fn network_step(&mut self) -> Result<(), Violation> {
        let at = self.next_deadline();
        self.advance_to(at)?;
        // A timer may have changed the link: ask again what is due now.
        let Some((due, event)) = self.network.next_event(&self.link) else {
            return Ok(());
        };
        if due > self.now {
            return Ok(());
        }
        self.record(format!("net {event:?}"));
        match event {
            LinkEvent::Accept => self.accept_open(),
            LinkEvent::Fail => self.fail_open(broken(
                TransportErrorKind::Unreachable,
                "connect timed out or refused",
            )),
            LinkEvent::Die => self.break_link(broken(
                TransportErrorKind::TimedOut,
                "keep-alive timeout or connection reset",
            )),
            LinkEvent::Arrive => self.deliver_next().map(drop),
            LinkEvent::ServerKeepAlive => {
                let response = self.server.keep_alive();
                self.send(response);
                Ok(())
            }
        }
    }

    fn accept_open(&mut self) -> Result<(), Violation> {
        let Link::Pending(pending) = &self.link else {
            return Ok(());
        };
        let id = pending.id;
        let request = self.server.last_request().cloned().unwrap_or_default();
        let responses = self.server.subscribe(&request);
        self.link = Link::Open(self.network.accepted(id, self.now));
        for response in responses {
            self.send(response);
        }
        self.core.handle_connected(self.now, id);
        self.drain()
    }

    fn fail_open(&mut self, broken: TransportError) -> Result<(), Violation> {
        if let Link::Pending(pending) = &self.link {
            let id = pending.id;
            self.link = Link::Idle;
            self.core
                .handle_connect_failed(self.now, id, ConnectError::Transport(broken));
            self.drain()?;
        }
        Ok(())
    }

    /// The server sends `response` on the open stream, through the network.
    fn send(&mut self, response: StreamTagsResponse) {
        if let Link::Open(stream) = &mut self.link {
            self.network.send(stream, response, self.now);
        }
    }

    /// Delivers the next queued response, due or not; false if there was
    /// none (or the stream died of a message lost before it).
    fn deliver_next(&mut self) -> Result<bool, Violation> {
        let Link::Open(OpenStream {
            id, queue, lost_at, ..
        }) = &mut self.link
        else {
            return Ok(false);
        };
        let id = *id;
        let Some(head) = queue.front() else {
            return Ok(false);
        };
        if lost_at.is_some_and(|lost| head.arrives_at >= lost) {
            // TCP cannot skip a lost message: the connection resets instead.
            self.break_link(broken(
                TransportErrorKind::Other,
                "connection reset after a lost message",
            ))?;
            return Ok(false);
        }
        let Some(network::InFlight { response, .. }) = queue.pop_front() else {
            unreachable!("the head was just there")
        };
        let good = self.is_good_message(&response);
        self.last_activity = self.now;
        self.core.handle_response(self.now, id, response);
        if good && self.first_good_at.is_none() {
            self.first_good_at = Some(self.now);
        }
        self.drain()?;
        Ok(true)
    }

    /// Whether the core must count this response as progress (and reset its
    /// backoff): anything but a keep-alive, once malformed and unrequested
    /// events are discounted.
    fn is_good_message(&self, response: &StreamTagsResponse) -> bool {
        let requested = self.core.config().requested_prefixes();
        let useful_event = response.events.iter().any(|event| {
            crate::domain::EntityEvent::from_proto(event.clone())
                .is_ok_and(|event| client_keeps(&requested, event.id().prefix()))
        });
        useful_event || response.snapshot_complete || response.resumed
    }

    /// The connection breaks, whether its stream is open or still opening.
    fn break_link(&mut self, broken: TransportError) -> Result<(), Violation> {
        match std::mem::replace(&mut self.link, Link::Idle) {
            Link::Idle => return Ok(()),
            Link::Pending(pending) => self.core.handle_connect_failed(
                self.now,
                pending.id,
                ConnectError::Transport(broken),
            ),
            Link::Open(stream) => {
                self.core
                    .handle_stream_closed(self.now, stream.id, StreamEnd::Transport(broken))
            }
        }
        self.drain()
    }

    /// Queues the server's live response for a change on the open stream.
    fn queue_live(&mut self, change: Option<crate::domain::EntityEvent>) {
        if let (Some(change), Link::Open(_)) = (change, &self.link)
            && let Some(response) = self.server.live_response(&change)
        {
            self.send(response);
        }
    }

    fn queue_raw(&mut self, events: Vec<pb::StreamTagsEvent>) {
        if let Link::Open(_) = &self.link {
            let response = self.server.raw_response(events);
            self.send(response);
        }
    }

    fn stale_input(&mut self, kind: u8, back: u8) -> Result<(), Violation> {
        let current = self.core.current_connection();
        let stale: Vec<ConnectionId> = self
            .attempts
            .iter()
            .copied()
            .filter(|id| Some(*id) != current)
            .collect();
        let id = match stale.len() {
            0 => ConnectionId(u64::MAX - u64::from(back)), // an id from the future
            n => stale[n - 1 - usize::from(back) % n],
        };
        let before = self.observe();
        match kind % 4 {
            0 => self.core.handle_connected(self.now, id),
            1 => {
                let stale = broken(TransportErrorKind::Other, "stale");
                self.core
                    .handle_connect_failed(self.now, id, ConnectError::Transport(stale));
            }
            2 => {
                let stale = broken(TransportErrorKind::Other, "stale");
                self.core
                    .handle_stream_closed(self.now, id, StreamEnd::Transport(stale));
            }
            _ => {
                let response = self.server.snapshot_response_for_stale_input();
                self.core.handle_response(self.now, id, response);
            }
        }
        ensure!(
            self.core.poll_command().is_none(),
            "stale input {id} produced a command"
        );
        ensure!(
            self.core.poll_event().is_none(),
            "stale input {id} produced an event"
        );
        let after = self.observe();
        ensure!(
            before == after,
            "stale input {id} changed the core:\n{before:?}\n{after:?}"
        );
        Ok(())
    }

    fn observe(&self) -> Observable {
        Observable {
            state: self.core.connection_state(),
            timeout: self.core.poll_timeout(),
            resume_point: self.core.resume_point().cloned(),
            backoff_interval: self.core.backoff_interval(),
            telemetry: self.core.telemetry().clone(),
            mirror: self.core.mirror().list(),
        }
    }

    /// Executes the core's commands like a driver would, records its events,
    /// and checks the per-command and per-event invariants.
    fn drain(&mut self) -> Result<(), Violation> {
        while let Some(command) = self.core.poll_command() {
            self.record(format!("command {}", describe_command(&command)));
            match command {
                Command::OpenStream { id, request } => {
                    ensure!(
                        matches!(self.link, Link::Idle),
                        "{id} opened while {:?} is still live",
                        self.link
                    );
                    ensure!(
                        self.attempts.last().is_none_or(|last| *last < id),
                        "{id} reuses or goes back on an attempt id"
                    );
                    self.attempts.push(id);
                    self.server.record_request(request);
                    self.link = Link::Pending(self.network.open(id, self.now));
                    self.last_activity = self.now;
                    self.first_good_at = None;
                }
                Command::CloseStream { id } => {
                    let live = self.link.id();
                    ensure!(live == Some(id), "close of {id}, which is not live");
                    self.link = Link::Idle;
                }
            }
        }
        while let Some(event) = self.core.poll_event() {
            self.record(format!("event {}", describe_event(&event)));
            if let Event::ConnectionLost { retry_in, .. } = event {
                self.check_backoff(retry_in)?;
                self.first_good_at = None;
                // The core reports the loss of the attempt it was on.
                self.link = Link::Idle;
            }
        }
        let timeout = self.core.poll_timeout();
        let at = timeout.at.saturating_duration_since(self.start);
        self.record(format!("timeout {:?} at {at:?}", timeout.timer));
        Ok(())
    }

    /// The interval the core's backoff must be at now: the reference one,
    /// or the initial one once the current stream has stayed up
    /// `reset_after` since its first good message (at that very instant
    /// too, whether its timer or its failure comes first).
    fn expected_backoff_interval(&self) -> Duration {
        let backoff = &self.core.config().backoff;
        match self.first_good_at {
            Some(at) if self.now >= at + backoff.reset_after => backoff.initial_interval,
            _ => self.expected_interval,
        }
    }

    fn check_backoff(&mut self, delay: Duration) -> Result<(), Violation> {
        let interval = self.expected_backoff_interval();
        let backoff = &self.core.config().backoff;
        let (low, high) = backoff.jitter_bounds(interval);
        ensure!(
            low <= delay && delay <= high,
            "backoff delay {delay:?} outside {low:?}..={high:?}"
        );
        self.expected_interval = backoff.grow(interval);
        ensure!(
            self.core.backoff_interval() == self.expected_interval,
            "backoff interval {:?}, expected {:?}",
            self.core.backoff_interval(),
            self.expected_interval
        );
        Ok(())
    }

    /// Invariants that hold after every step.
    fn check(&self) -> Result<(), Violation> {
        let expected = self.expected_backoff_interval();
        ensure!(
            self.core.backoff_interval() == expected,
            "backoff interval {:?}, expected {expected:?}",
            self.core.backoff_interval()
        );
        ensure!(
            self.link.id() == self.core.current_connection(),
            "driver holds {:?} but the core is on {:?}",
            self.link,
            self.core.current_connection()
        );
        let mirror = self.core.mirror().list();
        // Against an extension-aware server the mirror is always exactly the
        // server's store at the revision it resumes from: never half-applied.
        if let Some(point) = self.core.resume_point() {
            let config = self.core.config();
            let expected = self.server.history_view(
                &point.epoch,
                point.revision,
                config.cardinality,
                &config.requested_prefixes(),
            );
            ensure!(
                expected.as_ref() == Some(&mirror),
                "mirror differs from the server store at {point:?}:\nmirror   {mirror:?}\nexpected {expected:?}"
            );
        }
        // A lost message is not in the queue, but the mirror misses it.
        let drained = match &self.link {
            Link::Open(stream) => stream.queue.is_empty() && stream.lost_at.is_none(),
            _ => false,
        };
        if self.core.is_synced() && drained {
            let expected = self.expected_store();
            ensure!(
                mirror == expected,
                "synced mirror differs from the server store:\nmirror   {mirror:?}\nexpected {expected:?}"
            );
        }
        Ok(())
    }

    /// The server's store as this client should see it.
    fn expected_store(&self) -> Vec<Entity> {
        let config = self.core.config();
        self.server
            .view(config.cardinality, &config.requested_prefixes())
            .into_values()
            .collect()
    }

    fn record(&mut self, line: String) {
        let at = self.now - self.start;
        self.trace
            .push(format!("{:>12.3}s {line}", at.as_secs_f64()));
    }

    fn trace_tail(&self) -> String {
        let mut tail = String::new();
        for line in self.trace.iter().rev().take(30).rev() {
            let _ = writeln!(tail, "  {line}");
        }
        tail
    }

    /// The harness config this run uses.
    pub fn config(&self) -> &HarnessConfig {
        &self.config
    }
}

/// Reference store reduced for one subscription.
pub type View = BTreeMap<EntityId, Entity>;

fn describe_command(command: &Command) -> String {
    match command {
        Command::OpenStream { id, request } => format!(
            "open {id} resume={}@{:?}",
            request.resume_revision, request.resume_epoch
        ),
        Command::CloseStream { id } => format!("close {id}"),
    }
}

fn describe_event(event: &Event) -> String {
    match event {
        Event::EntitiesChanged(changes) => {
            let mut line = String::from("changed");
            for change in changes {
                let _ = write!(line, " {:?}:{}", change.kind, change.id);
            }
            line
        }
        // The reason as the one line it displays, in the quotes its
        // debug form had as a string.
        Event::ConnectionLost {
            id,
            reason,
            retry_in,
        } => format!(
            "ConnectionLost {{ id: {id:?}, reason: {:?}, retry_in: {retry_in:?} }}",
            reason.to_string()
        ),
        other => format!("{other:?}"),
    }
}

/// A connection the emulated network broke, in the harness's words.
fn broken(kind: TransportErrorKind, detail: &str) -> TransportError {
    TransportError {
        kind,
        detail: detail.to_owned(),
    }
}

/// Runs `ops` on a fresh harness, stopping at the first violation, which
/// comes back with the tail of the trace.
pub fn run(config: HarnessConfig, ops: &[Op], start: Instant) -> Result<Harness, Violation> {
    let mut harness = Harness::new(config, start)?;
    for op in ops {
        if let Err(Violation(what)) = harness.step(op) {
            return Err(Violation(format!(
                "{what}\ntrace tail:\n{}",
                harness.trace_tail()
            )));
        }
    }
    Ok(harness)
}
