//! The turmoil tier: the real tokio/tonic client driver ([`RemoteTagger`])
//! and the real server (`serve_incoming` over a [`StoreHandle`]) on
//! turmoil's simulated network, several clients and one server, with faults
//! injected between simulation steps by a seeded schedule.
//!
//! Everything is checked from outside through public APIs: the clients'
//! events (recorded with simulated timestamps: the trace), status and
//! mirror; the server's store and stats; turmoil's socket table; tracing
//! and panics. Timings are scaled down from the spec's (10 s backoff cap,
//! 5 s + 2 s HTTP/2 keep-alive, 45 s server keep-alive, 60 s watchdog) so a
//! seed covers outages longer than every timeout in a few simulated minutes.

mod checks;
mod net;
#[cfg(test)]
mod ping_policy;
mod schedule;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use remote_tagger::client::{ClientConfig, ClientStatus, RemoteTagger, TlsMode, TlsSettings};
use remote_tagger::core::{BackoffConfig, CoreConfig, Event, LossReason};
use remote_tagger::defaults;
use remote_tagger::domain::{Cardinality, EntityEvent};
use remote_tagger::mirror::MirrorReader;
use remote_tagger::server::{
    Authenticator, Epoch, PrefixFilter, Security, ServiceConfig, Store, StoreHandle, TaggerService,
    serve_incoming,
};
use remote_tagger::workload::{Workload, WorkloadConfig};
use tokio::sync::{broadcast, watch};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::{SeedOutcome, TierScenario};
use checks::{BackoffCheck, ErrorLog, History, View};
use net::{ConnectionCount, ReadGate, TurmoilDialer};
use schedule::{Fault, Scenario, Schedule};

/// turmoil's time step: timers fire and messages land on multiples of it.
const TICK: Duration = Duration::from_millis(5);
const SERVER: &str = "server";
const PORT: u16 = 5001;
const WORKLOAD_ENTITIES: usize = 150;
/// The server keeps this many changes for resuming clients: more than a
/// fault phase's churn, so only a restart forces snapshots.
const CHANGE_LOG_CAPACITY: usize = 4_096;

/// The clients: different cardinalities and prefixes, so the server reduces
/// and filters differently for each (an empty list asks for every prefix).
const CLIENTS: [(Cardinality, &[&str]); 3] = [
    (Cardinality::High, &[]),
    (
        Cardinality::Orchestrator,
        &["container_id", "kubernetes_pod_uid"],
    ),
    (Cardinality::Low, &["container_id", "process", "internal"]),
];

/// Scaled-down timings shared by every client and scenario. The 5 s PING
/// interval is far below what gRPC servers allow by default (5 min, see
/// [`defaults::GRPC_SERVER_MIN_PING_INTERVAL`]); our server
/// enforces no ping policy, so the simulations may ping this often, and set
/// it explicitly for that reason. (The `ping_policy` tests check the
/// defaults against a server that enforces grpc-go's policy.)
struct Timings {
    backoff: BackoffConfig,
    connect_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    receive_timeout: Duration,
    server_keepalive: Duration,
    server_send_timeout: Duration,
}

const TIMINGS: Timings = Timings {
    backoff: BackoffConfig {
        initial_interval: defaults::BACKOFF_INITIAL_INTERVAL,
        max_interval: Duration::from_secs(10),
        multiplier: defaults::BACKOFF_MULTIPLIER,
        randomization: defaults::BACKOFF_RANDOMIZATION,
        reset_after: defaults::BACKOFF_RESET_AFTER,
    },
    connect_timeout: Duration::from_secs(2),
    keepalive_interval: Duration::from_secs(5),
    keepalive_timeout: Duration::from_secs(2),
    receive_timeout: Duration::from_secs(60),
    server_keepalive: Duration::from_secs(45),
    server_send_timeout: Duration::from_secs(10),
};

/// Round trips from a new attempt to a complete snapshot: TCP connect,
/// HTTP/2 preface and SETTINGS, the request to the response headers and
/// first message, and one more for the snapshot's tail (HTTP/2 flow control
/// lets the first 64 KiB through, then waits for a WINDOW_UPDATE).
const SYNC_ROUND_TRIPS: u32 = 4;

/// The longest a client may take, after every fault is healed, to be synced
/// with a mirror equal to the server's store:
///
/// 1. noticing that its current attempt is dead: a hanging connect fails at
///    the connect timeout, a dead connection when an HTTP/2 PING goes
///    unanswered (interval + timeout), whichever is longer;
/// 2. the longest backoff wait: cap × (1 + randomization) = 15 s here
///    (7.5 min with the spec's 5 min cap);
/// 3. the sync: [`SYNC_ROUND_TRIPS`] round trips at the worst latency the
///    scenario configures, plus a tick per step for the simulation's clock.
fn liveness_bound(max_latency: Duration) -> Duration {
    let t = &TIMINGS;
    let noticing = t
        .connect_timeout
        .max(t.keepalive_interval + t.keepalive_timeout);
    let longest_backoff = t
        .backoff
        .max_interval
        .mul_f64(1.0 + t.backoff.randomization);
    let sync = (max_latency * 2 + TICK) * SYNC_ROUND_TRIPS;
    noticing + longest_backoff + sync
}

pub fn scenarios() -> Vec<TierScenario> {
    TierScenario::all(&Scenario::ALL, Scenario::name, Scenario::description)
}

pub fn run(name: &str, seed: u64) -> Result<SeedOutcome, String> {
    let scenario =
        Scenario::from_name(name).ok_or_else(|| format!("no turmoil scenario {name:?}"))?;
    let schedule = Schedule::new(scenario, seed);
    let errors = ErrorLog::default();
    let subscriber = tracing_subscriber::registry().with(errors.clone());
    let _log = tracing::subscriber::set_default(subscriber);
    checks::install_panic_hook_once();
    let dir = TempDir::new(seed)?;
    Run::new(&schedule, seed, &dir.0, errors)?.drive(&schedule)
}

/// A scratch directory for the token files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(seed: u64) -> Result<Self, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "remote-tagger-sim-{}-{seed}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the simulated hosts share with the checker (all on this thread).
struct Shared {
    probes: Vec<RefCell<Option<Probe>>>,
    gates: Vec<Arc<ReadGate>>,
    connections: Vec<Arc<ConnectionCount>>,
    /// The running server's store; `None` while it is down.
    server: RefCell<Option<StoreHandle>>,
    server_starts: Cell<u64>,
    /// The sources the server's store is built from; they change even while
    /// the server is down.
    workload: RefCell<Workload>,
    trace: RefCell<Trace>,
    violations: RefCell<Vec<String>>,
    stop: watch::Sender<bool>,
}

/// A client as the checker sees it.
struct Probe {
    mirror: MirrorReader,
    status: watch::Receiver<ClientStatus>,
    /// Events seen so far; when it moves, the mirror may have changed.
    events: u64,
    /// Until the first sync the mirror is empty, which the store may never be.
    synced_once: bool,
}

/// The application-level trace. Hosts run one after another within a tick,
/// in an order turmoil does not promise (a crash drops the server's
/// connections in task order, and task ids are process-global), so lines are
/// ordered by time, then source (the checker, then each client), each
/// source's own lines in the order they came.
#[derive(Default)]
struct Trace(Vec<(Duration, usize, String)>);

/// The checker's [`Trace`] source; client `i` is `i + 1`.
const CHECKER: usize = 0;

impl Trace {
    fn push(&mut self, at: Duration, source: usize, line: String) {
        self.0.push((at, source, line));
    }

    fn lines(&self) -> Vec<String> {
        let mut lines: Vec<_> = self.0.iter().collect();
        // Hosts' clocks may differ below the tick within one step.
        lines.sort_by_key(|(at, source, _)| (at.as_micros() / TICK.as_micros(), *source));
        lines
            .into_iter()
            .map(|(at, _, line)| format!("{:>10}ms {line}", at.as_millis()))
            .collect()
    }
}

impl Shared {
    fn record(&self, client: usize, line: String) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.trace.borrow_mut().push(at, client + 1, line);
    }

    fn violation(&self, what: String) {
        self.violations.borrow_mut().push(what);
    }
}

/// One simulation: the turmoil world, the shared state, what is checked.
struct Run<'a> {
    sim: turmoil::Sim<'a>,
    shared: Rc<Shared>,
    views: Vec<View>,
    /// Every state of the server's store, per client view.
    histories: Vec<History>,
    /// Event counts at the last mirror check, per client.
    checked_events: Vec<u64>,
    errors: ErrorLog,
    paths: TokenPaths,
    /// Snapshots and resumes of the server instances that are gone.
    past_stats: (u64, u64),
    known_server_starts: u64,
    seed: u64,
    rotations: u64,
    /// The random link failure rate in force.
    fail_rate: f64,
    bound: Duration,
}

struct TokenPaths {
    server: PathBuf,
    client: PathBuf,
}

impl<'a> Run<'a> {
    fn new(schedule: &Schedule, seed: u64, dir: &Path, errors: ErrorLog) -> Result<Self, String> {
        let paths = TokenPaths {
            server: dir.join("server_token"),
            client: dir.join("client_token"),
        };
        for path in [&paths.server, &paths.client] {
            std::fs::write(path, token(seed, 0)).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let bound = liveness_bound(schedule.max_latency);
        let mut sim = turmoil::Builder::new()
            .epoch(UNIX_EPOCH)
            .simulation_duration(schedule::FAULT_PHASE + bound + Duration::from_secs(30))
            .tick_duration(TICK)
            // A fixed latency: turmoil draws each message's latency from one
            // shared RNG in send order, and a crash drops the server's
            // connections in an order that depends on process-global tokio
            // task ids, so jittered latencies would make replays diverge.
            .min_message_latency(schedule.initial_latency)
            .max_message_latency(schedule.initial_latency)
            .rng_seed(seed)
            .build();
        let (stop, _) = watch::channel(false);
        let shared = Rc::new(Shared {
            probes: CLIENTS.iter().map(|_| RefCell::new(None)).collect(),
            gates: CLIENTS.iter().map(|_| Arc::default()).collect(),
            connections: CLIENTS.iter().map(|_| Arc::default()).collect(),
            server: RefCell::new(None),
            server_starts: Cell::new(0),
            workload: RefCell::new(Workload::new(WorkloadConfig {
                entities: WORKLOAD_ENTITIES,
                seed,
            })),
            trace: RefCell::default(),
            violations: RefCell::new(Vec::new()),
            stop,
        });
        let server_shared = shared.clone();
        let server_token = paths.server.clone();
        sim.host(SERVER, move || {
            server_software(server_shared.clone(), server_token.clone(), seed)
        });
        let views = CLIENTS
            .iter()
            .enumerate()
            .map(|(index, &(cardinality, prefixes))| {
                let config = client_config(index, cardinality, prefixes, &paths.client, seed);
                let view = View {
                    cardinality,
                    prefixes: config.core.requested_prefixes(),
                };
                sim.client(
                    client_name(index),
                    client_software(shared.clone(), index, config),
                );
                view
            })
            .collect::<Vec<_>>();
        Ok(Self {
            sim,
            histories: views.iter().map(|_| History::default()).collect(),
            checked_events: vec![0; views.len()],
            views,
            shared,
            errors,
            paths,
            past_stats: (0, 0),
            known_server_starts: 0,
            seed,
            rotations: 0,
            fail_rate: 0.0,
            bound,
        })
    }

    fn drive(mut self, schedule: &Schedule) -> Result<SeedOutcome, String> {
        let mut faults = schedule.faults.iter().peekable();
        let mut converged_after = None;
        loop {
            let finished = self
                .sim
                .step()
                .map_err(|e| self.failure(format!("simulation error: {e}")))?;
            let now = self.sim.elapsed();
            while let Some((_, fault)) = faults.next_if(|(at, _)| *at <= now) {
                self.apply(fault)?;
            }
            self.check_safety()?;
            if finished {
                break;
            }
            if now < schedule::FAULT_PHASE || converged_after.is_some() {
                continue;
            }
            if self.converged() {
                let after = now - schedule::FAULT_PHASE;
                converged_after = Some(after);
                self.record_checker(format!("converged {}us after the heal", after.as_micros()));
                self.check_efficiency(schedule.scenario)?;
                self.shared.stop.send_replace(true);
            } else if now > schedule::FAULT_PHASE + self.bound {
                return Err(self.failure(format!(
                    "not converged within the liveness bound {:?} after the heal",
                    self.bound
                )));
            }
        }
        let converged_after = converged_after
            .ok_or_else(|| self.failure("clients ended before converging".into()))?;
        let trace = self.shared.trace.borrow().lines();
        let (snapshots, resumes) = self.server_totals();
        Ok(SeedOutcome {
            trace_hash: remote_tagger::harness::scenario::trace_hash(&trace),
            simulated: self.sim.elapsed(),
            detail: format!(
                "converged {:.3}s after the heal (bound {:.1}s), {snapshots} snapshots, {resumes} resumes, {} trace lines",
                converged_after.as_secs_f64(),
                self.bound.as_secs_f64(),
                trace.len()
            ),
            trace,
        })
    }

    /// A violation with the tail of the trace that led to it.
    fn failure(&self, what: String) -> String {
        let trace = self.shared.trace.borrow().lines();
        let tail: Vec<&str> = trace
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(String::as_str)
            .collect();
        format!(
            "{what}\nat {:?} simulated\ntrace tail:\n  {}",
            self.sim.elapsed(),
            tail.join("\n  ")
        )
    }

    fn record_checker(&self, line: String) {
        let at = self.sim.elapsed();
        self.shared.trace.borrow_mut().push(at, CHECKER, line);
    }

    fn apply(&mut self, fault: &Fault) -> Result<(), String> {
        if *fault != Fault::Churn {
            self.record_checker(format!("fault {fault:?}"));
        }
        match *fault {
            Fault::Churn => self.churn(),
            Fault::Partition(client) => self.sim.partition(client_name(client), SERVER),
            Fault::Repair(client) => self.sim.repair(client_name(client), SERVER),
            Fault::Hold(client) => self.sim.hold(client_name(client), SERVER),
            Fault::Release(client) => self.sim.release(client_name(client), SERVER),
            Fault::CrashServer => {
                // The crash's connection drops must not meet random link
                // failures: which one a failure hits would depend on their
                // (task id) order.
                self.sim.set_fail_rate(0.0);
                self.sim.crash(SERVER);
                self.sim.set_fail_rate(self.fail_rate);
                if let Some(store) = self.shared.server.borrow_mut().take() {
                    let stats = store.stats();
                    self.past_stats.0 += stats.snapshots_sent;
                    self.past_stats.1 += stats.resumes_accepted;
                }
            }
            Fault::BounceServer => {
                if !self.sim.is_host_running(SERVER) {
                    self.sim.bounce(SERVER);
                }
            }
            Fault::FailRate { per_mille } => {
                self.fail_rate = f64::from(per_mille) / 1000.0;
                self.sim.set_fail_rate(self.fail_rate);
            }
            Fault::Latency { millis } => {
                for client in 0..CLIENTS.len() {
                    let latency = Duration::from_millis(millis);
                    self.sim
                        .set_link_latency(client_name(client), SERVER, latency);
                }
            }
            Fault::Stall(client) => self.shared.gates[client].stall(),
            Fault::Resume(client) => self.shared.gates[client].resume(),
            Fault::RotateServerToken => {
                self.rotations += 1;
                self.write_token(&self.paths.server)?;
            }
            Fault::RotateClientToken => self.write_token(&self.paths.client)?,
        }
        Ok(())
    }

    /// Writes the current rotation's token to `path`.
    fn write_token(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, token(self.seed, self.rotations))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// One store change from the sources, applied to the running server.
    fn churn(&mut self) {
        let event = self.shared.workload.borrow_mut().next_event();
        let (kind, id) = match &event {
            EntityEvent::Added(entity) => ("added", entity.id.to_string()),
            EntityEvent::Modified(entity) => ("modified", entity.id.to_string()),
            EntityEvent::Deleted(id) => ("deleted", id.to_string()),
        };
        self.record_checker(format!("churn {kind} {id}"));
        let server = self.shared.server.borrow().clone();
        if let Some(store) = server {
            store.apply([event]);
            self.remember(&store);
        }
    }

    /// Adds the store's current state to every client's history.
    fn remember(&mut self, store: &StoreHandle) {
        let snapshot = store.snapshot(&PrefixFilter::all());
        let entities: Vec<_> = snapshot.entities.iter().map(|e| e.entity()).collect();
        for (view, history) in self.views.iter().zip(&mut self.histories) {
            history.record(view.hash(entities.iter().copied()));
        }
    }

    /// Safety, after every step: no panic, no ERROR log, nothing a client
    /// flagged, and no mirror in a state the server's store never was in.
    fn check_safety(&mut self) -> Result<(), String> {
        let starts = self.shared.server_starts.get();
        if starts != self.known_server_starts {
            self.known_server_starts = starts;
            let server = self.shared.server.borrow().clone();
            if let Some(store) = server {
                self.remember(&store);
            }
        }
        let panics = checks::take_panics();
        if !panics.is_empty() {
            return Err(self.failure(format!("panicked: {}", panics.join("; "))));
        }
        let errors = self.errors.take();
        if !errors.is_empty() {
            return Err(self.failure(format!("ERROR logged: {}", errors.join("; "))));
        }
        let violations = std::mem::take(&mut *self.shared.violations.borrow_mut());
        if !violations.is_empty() {
            return Err(self.failure(violations.join("; ")));
        }
        for (index, connections) in self.shared.connections.iter().enumerate() {
            if connections.most() > 1 {
                let what = format!(
                    "client-{index} held {} connections (streams) at once",
                    connections.most()
                );
                return Err(self.failure(what));
            }
        }
        for (index, probe) in self.shared.probes.iter().enumerate() {
            let probe = probe.borrow();
            let Some(probe) = probe.as_ref().filter(|probe| probe.synced_once) else {
                continue;
            };
            if probe.events == self.checked_events[index] {
                continue;
            }
            self.checked_events[index] = probe.events;
            let mirror = probe.mirror.list();
            if !self.histories[index].contains(self.views[index].hash(&mirror)) {
                let what = format!(
                    "client-{index}'s mirror ({} entities) matches no state the server's store was ever in: half-applied?",
                    mirror.len()
                );
                return Err(self.failure(what));
            }
        }
        Ok(())
    }

    /// Liveness: every client synced with a mirror equal to the server's store.
    fn converged(&self) -> bool {
        let server = self.shared.server.borrow();
        let Some(store) = server.as_ref() else {
            return false;
        };
        let snapshot = store.snapshot(&PrefixFilter::all());
        let entities: Vec<_> = snapshot.entities.iter().map(|e| e.entity()).collect();
        self.shared
            .probes
            .iter()
            .zip(&self.views)
            .all(|(probe, view)| {
                probe.borrow().as_ref().is_some_and(|probe| {
                    probe.status.borrow().state == remote_tagger::core::ConnectionState::Synced
                        && view.hash(&probe.mirror.list()) == view.hash(entities.iter().copied())
                })
            })
    }

    /// Snapshots sent and resumes accepted by every server instance so far.
    fn server_totals(&self) -> (u64, u64) {
        let current = self
            .shared
            .server
            .borrow()
            .as_ref()
            .map(|store| store.stats())
            .map_or((0, 0), |stats| {
                (stats.snapshots_sent, stats.resumes_accepted)
            });
        (self.past_stats.0 + current.0, self.past_stats.1 + current.1)
    }

    /// Where the log was intact, reconnects must resume, not re-snapshot.
    fn check_efficiency(&self, scenario: Scenario) -> Result<(), String> {
        let (snapshots, resumes) = self.server_totals();
        let clients = CLIENTS.len() as u64;
        let expectation = match scenario {
            Scenario::Steady if snapshots != clients => Some(format!(
                "{snapshots} snapshots for {clients} clients without any fault"
            )),
            Scenario::ShortDisconnects if snapshots != clients || resumes == 0 => Some(format!(
                "{snapshots} snapshots and {resumes} resumes for {clients} clients after short disconnects with the log intact: every reconnect should have resumed"
            )),
            _ => None,
        };
        match expectation {
            Some(what) => Err(self.failure(what)),
            None => Ok(()),
        }
    }
}

fn client_name(index: usize) -> String {
    format!("client-{index}")
}

/// A 64-hex-character token, different for every rotation.
fn token(seed: u64, rotation: u64) -> String {
    let mut rng = remote_tagger::rng::SplitMix64::new(seed ^ rotation.wrapping_mul(0x9e37_79b9));
    (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect()
}

fn client_config(
    index: usize,
    cardinality: Cardinality,
    prefixes: &[&str],
    token_file: &Path,
    seed: u64,
) -> ClientConfig {
    let t = &TIMINGS;
    // The server serves plaintext in simulation: no certificate to verify.
    let tls = TlsSettings::new(TlsMode::InsecurePlaintext);
    let mut config = ClientConfig::new(format!("{SERVER}:{PORT}"), token_file, tls);
    config.core = CoreConfig {
        cardinality,
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        streaming_id: format!("sim:{}", client_name(index)),
        receive_timeout: t.receive_timeout,
        backoff: t.backoff.clone(),
        seed: seed ^ (index as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d),
    };
    config.connect_timeout = t.connect_timeout;
    config.http2_keepalive_interval = t.keepalive_interval;
    config.http2_keepalive_timeout = t.keepalive_timeout;
    config
}

/// The server host: a fresh store instance (new epoch) built from the
/// sources, the real service in plaintext mode, on a turmoil listener.
async fn server_software(shared: Rc<Shared>, token_file: PathBuf, seed: u64) -> turmoil::Result {
    let starts = shared.server_starts.get() + 1;
    let epoch = Epoch::from_seed(seed ^ starts.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let store = StoreHandle::new(Store::new(epoch, CHANGE_LOG_CAPACITY));
    let entities = shared.workload.borrow().snapshot();
    store.apply(entities.into_iter().map(EntityEvent::Added));
    let auth = Authenticator::from_token_file(&token_file)?;
    let config = ServiceConfig {
        keepalive_interval: TIMINGS.server_keepalive,
        send_timeout: TIMINGS.server_send_timeout,
        subscriber_buffer: 64,
        shutdown_grace: Duration::from_secs(1),
        ..ServiceConfig::default()
    };
    let service = TaggerService::new(store.clone(), auth, config);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    *shared.server.borrow_mut() = Some(store);
    shared.server_starts.set(starts);
    let incoming = net::incoming(listener);
    serve_incoming(
        service,
        Security::InsecurePlaintext,
        incoming,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// A client host: a real [`RemoteTagger`] over the turmoil dialer, whose
/// events are recorded in the trace and checked as they come.
async fn client_software(
    shared: Rc<Shared>,
    index: usize,
    config: ClientConfig,
) -> turmoil::Result {
    let dialer = TurmoilDialer {
        gate: shared.gates[index].clone(),
        connections: shared.connections[index].clone(),
    };
    // Events reach this task in the tick the driver handled them, or the next.
    let mut backoff = BackoffCheck::new(config.core.backoff.clone(), TICK);
    let receive_timeout = config.core.receive_timeout;
    let tagger = RemoteTagger::start_with_dialer(config, Arc::new(dialer))?;
    let mut events = tagger.subscribe();
    let mut status = tagger.status();
    *shared.probes[index].borrow_mut() = Some(Probe {
        mirror: tagger.mirror(),
        status: tagger.status(),
        events: 0,
        synced_once: false,
    });
    let mut stop = shared.stop.subscribe();
    let mut receives = 0;
    let started = tokio::time::Instant::now();
    // When the stream last showed life: a message, or the open after a backoff.
    let mut last_activity = started;
    let who = client_name(index);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            event = events.recv() => {
                let event = match event {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        shared.violation(format!("{who} missed {n} events"));
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        shared.violation(format!("{who}'s driver ended on its own"));
                        break;
                    }
                };
                let now = tokio::time::Instant::now();
                if let Some(probe) = shared.probes[index].borrow_mut().as_mut() {
                    probe.events += 1;
                    probe.synced_once |= matches!(event, Event::Synced { .. });
                }
                match &event {
                    Event::ConnectionLost { retry_in, reason, .. } => {
                        if let Err(what) = backoff.loss(now, *retry_in) {
                            shared.violation(format!("{who}: {what}"));
                        }
                        let silent = now - last_activity;
                        let timed_out = matches!(reason, LossReason::ReceiveTimeout { .. });
                        if timed_out && silent + TICK < receive_timeout {
                            shared.violation(format!(
                                "{who}: receive timeout after only {silent:?} of silence"
                            ));
                        }
                        last_activity = now + *retry_in;
                    }
                    Event::Synced { .. } | Event::EntitiesChanged(_) => backoff.good(now),
                    _ => {}
                }
                shared.record(index, format!("{who} {}", describe(&event)));
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let seen = status.borrow_and_update().telemetry.receives;
                if seen != receives {
                    receives = seen;
                    last_activity = tokio::time::Instant::now();
                }
            }
        }
    }
    tagger.stop().await;
    Ok(())
}

fn describe(event: &Event) -> String {
    match event {
        Event::Synced { resumed, entities } => {
            format!("synced resumed={resumed} entities={entities}")
        }
        Event::EntitiesChanged(changes) => {
            let ids: Vec<String> = changes
                .iter()
                .map(|change| format!("{:?}:{}", change.kind, change.id))
                .collect();
            format!("changed {}", ids.join(" "))
        }
        Event::ConnectionLost {
            id,
            reason,
            retry_in,
        } => format!("lost {id} retry_in={retry_in:?}: {reason}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_orders_by_tick_then_source_keeping_each_source_in_order() {
        let mut trace = Trace::default();
        let at = |micros| Duration::from_micros(micros);
        trace.push(at(5_100), 2, "client-1 first".into());
        trace.push(at(5_000), 1, "client-0".into());
        trace.push(at(5_200), 2, "client-1 second".into());
        trace.push(at(5_300), CHECKER, "checker".into());
        trace.push(at(1_000), 3, "client-2 earlier tick".into());
        let lines: Vec<String> = trace
            .lines()
            .into_iter()
            .map(|line| line.split_once("ms ").unwrap().1.to_owned())
            .collect();
        assert_eq!(
            lines,
            [
                "client-2 earlier tick",
                "checker",
                "client-0",
                "client-1 first",
                "client-1 second"
            ]
        );
    }

    #[test]
    fn every_schedule_heals_by_the_end_of_the_fault_phase() {
        for scenario in Scenario::ALL {
            let schedule = Schedule::new(scenario, 3);
            let last = schedule.faults.last().expect("a schedule is never empty");
            assert_eq!(last.0, schedule::FAULT_PHASE, "{scenario:?}");
            assert!(schedule.faults.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(liveness_bound(schedule.max_latency) < Duration::from_secs(30));
        }
    }
}
