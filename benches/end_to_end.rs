//! End-to-end benchmarks of the tagger server and client together: the
//! initial sync, resume versus resync after a disconnect, fan-out of live
//! churn to many mirrors, and the server's memory with a stalled subscriber.
//!
//! Everything runs in this one process on a multi-thread tokio runtime, over
//! real loopback TCP with TLS (the server's generated certificate, verified by
//! the clients) and a bearer token, on the 100k-entity synthetic workload.
//! These are not criterion benches: the scenarios are seconds long, stateful
//! and concurrent, so each prints its own figures and a summary table ends
//! the run.
//!
//!     cargo bench --bench end_to_end                # every scenario
//!     cargo bench --bench end_to_end -- fanout      # those whose name contains "fanout"
//!     cargo bench --bench end_to_end -- "fanout 100"  # only the 100-client fan-out
//!
//! Scenarios: `sync`, `resume`, `fanout`, `stalled`, `never-reading`.
//! Correctness is checked
//! (entity counts, mirror contents, delivered events) and reported; timings
//! never fail the run.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use remote_tagger::client::{ClientConfig, ClientStatus, RemoteTagger, TlsMode, TlsSettings};
use remote_tagger::core::{BackoffConfig, ConnectionState, Event};
use remote_tagger::domain::{Cardinality, EntityEvent, EntityId};
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model::{StreamTagsRequest, StreamTagsResponse};
use remote_tagger::server::{
    DEFAULT_CHANGE_LOG_CAPACITY, Epoch, Framer, PrefixFilter, RunningServer, ServeConfig, Server,
    ServerStats, ServiceConfig, Source, Store, StoreHandle,
};
use remote_tagger::workload::{Workload, WorkloadConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The raw stalled stream's channel, set up as Datadog's Rust client's.
#[path = "../tests/common/datadog_client.rs"]
mod datadog_client;

/// Raw HTTP/2 connections that send a request and never read again.
#[allow(dead_code)] // the bench uses only the request side
#[path = "../tests/common/raw_h2.rs"]
mod raw_h2;

/// The allocator the `remote-tagger` binary ships with (glibc's malloc
/// spends a third of a sync consolidating freed chunks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENTITIES: usize = 100_000;
const SEED: u64 = 1;

/// Fresh clients timed from `start` to synced.
const SYNC_RUNS: usize = 7;
/// Disconnects measured per variant (resume, full resync).
const RESUME_ROUNDS: usize = 3;
const OUTAGE: Duration = Duration::from_secs(1);
/// ~100 changes land during the outage: 10 batches of 10, one per 100 ms.
const OUTAGE_BATCHES: usize = 10;
const OUTAGE_BATCH: usize = 10;
/// Live churn of the fan-out and stalled scenarios: 2,000 events/s.
const CHURN_BATCH: usize = 20;
const CHURN_PERIOD: Duration = Duration::from_millis(10);
const FANOUT_CHURN: Duration = Duration::from_secs(10);
/// Client counts and churn rounds for each, on the same synced clients. One
/// client is the baseline without fan-out; 100 clients get one round: on 2
/// cores their sync alone takes minutes.
const FANOUT_RUNS: [(usize, usize); 3] = [(1, 2), (10, 2), (100, 1)];
/// After the churn stops, how long stragglers get before they count as not
/// delivered (an overloaded run still ends, with the backlog reported).
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Churn before the stalled subscriber arrives: fills the change log and
/// warms the allocator, so what follows is the subscriber's doing.
const STALL_WARMUP: Duration = Duration::from_secs(10);
const STALL_OBSERVED: Duration = Duration::from_secs(30);
/// Streams that never read their snapshot, open while fresh clients sync.
const NEVER_READING: usize = 50;
/// A fresh sync slower than this counts as starved (before the snapshot
/// slots were given back, one waited NEVER_READING / 3 send timeouts: 17 min).
const STARVED: Duration = Duration::from_secs(120);
/// Only to turn a hang into a report instead of a stuck bench (100 clients
/// syncing on 2 busy cores take minutes).
const PATIENCE: Duration = Duration::from_secs(900);

fn main() {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let selected = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!(
        "end-to-end benches: {} cores, load average {}, cpu pressure {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read_trimmed("/proc/loadavg"),
        read_trimmed("/proc/pressure/cpu")
            .lines()
            .next()
            .unwrap_or("n/a")
    );
    let mut rows = Vec::new();
    runtime.block_on(async {
        if selected("sync") {
            rows.extend(initial_sync().await);
        }
        if selected("resume") {
            rows.extend(resume_versus_resync().await);
        }
        for (clients, rounds) in FANOUT_RUNS {
            if selected(&format!("fanout {clients} clients")) {
                rows.extend(fan_out(clients, rounds).await);
            }
        }
        if selected("stalled") {
            rows.extend(stalled_subscriber().await);
        }
        if selected("never-reading") {
            rows.extend(sync_past_never_reading_streams().await);
        }
    });
    print_summary(&rows);
}

// ---------------------------------------------------------------- scenarios

/// Scenario 1: a fresh client's sync of the whole store, against prost
/// decoding the same snapshot bytes (the floor any gRPC client pays).
async fn initial_sync() -> Vec<Row> {
    println!("\n== sync: initial sync of {ENTITIES} entities, {SYNC_RUNS} fresh clients");
    let server = BenchServer::start(|_| {}).await;
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut rss_growth = Vec::new();
    for run in 1..=SYNC_RUNS {
        let rss_before = rss_kib();
        let cpu_before = cpu_time();
        let (tagger, wall) = fresh_sync(&server, PATIENCE)
            .await
            .expect("HANG: no initial sync");
        let cpu = cpu_time() - cpu_before;
        let entities = tagger.mirror().len();
        // The mirror is alive here: what the process grew by is roughly one
        // client's footprint (allocator reuse makes later runs smaller).
        let grown = rss_kib().saturating_sub(rss_before);
        println!(
            "run {run}: {} wall, {} process CPU, {entities} entities, RSS +{} MiB",
            ms(wall),
            ms(cpu),
            grown / 1024
        );
        check(entities == ENTITIES, "the mirror holds every entity");
        walls.push(wall);
        cpus.push(cpu);
        rss_growth.push(grown);
        tagger.stop().await;
    }
    server.stop().await;

    let chunks = snapshot_responses();
    let wire: usize = chunks.iter().map(Vec::len).sum();
    let mut decodes = Vec::new();
    for _ in 0..SYNC_RUNS {
        let started = Instant::now();
        let decoded: Vec<StreamTagsResponse> = chunks
            .iter()
            .map(|chunk| StreamTagsResponse::decode(black_box(chunk.as_slice())).expect("decodes"))
            .collect();
        decodes.push(started.elapsed());
        // Freeing is not decoding: the messages drop outside the timing.
        drop(black_box(decoded));
    }
    println!(
        "snapshot: {} responses, {:.1} MiB encoded; prost decode: median {}, min {}",
        chunks.len(),
        wire as f64 / MIB,
        ms(median(&decodes)),
        ms(min(&decodes))
    );
    let sync = median(&walls);
    let ratio = sync.as_secs_f64() / median(&decodes).as_secs_f64();
    vec![
        Row::new(
            "sync",
            "start -> synced, median (min..max)",
            format!("{} ({}..{})", ms(sync), ms(min(&walls)), ms(max(&walls))),
            "< 160 ms",
            sync < Duration::from_millis(160),
        ),
        Row::info(
            "sync",
            "process CPU per sync, median (server + client)",
            ms(median(&cpus)),
        ),
        Row::info(
            "sync",
            "snapshot wire size (encoded responses)",
            format!("{:.1} MiB in {} responses", wire as f64 / MIB, chunks.len()),
        ),
        Row::info(
            "sync",
            "prost decode of those bytes, median (min)",
            format!("{} ({})", ms(median(&decodes)), ms(min(&decodes))),
        ),
        Row::new(
            "sync",
            "sync / prost decode",
            format!("{ratio:.1}x"),
            "<= 2x",
            ratio <= 2.0,
        ),
        Row::info(
            "sync",
            "RSS growth with one synced client, first run (min)",
            format!(
                "{} MiB ({} MiB)",
                rss_growth[0] / 1024,
                rss_growth.iter().min().copied().unwrap_or(0) / 1024
            ),
        ),
    ]
}

/// A fresh client started and synced, and how long that took; `None` if it
/// did not sync within `limit`.
async fn fresh_sync(server: &BenchServer, limit: Duration) -> Option<(RemoteTagger, Duration)> {
    let started = Instant::now();
    let tagger = RemoteTagger::start(client_config(server, &server.addr.to_string()))
        .expect("client config");
    match tokio::time::timeout(limit, tagger.wait_synced()).await {
        Ok(()) => Some((tagger, started.elapsed())),
        Err(_) => {
            tagger.stop().await;
            None
        }
    }
}

/// The snapshot a HIGH client gets, encoded as the server sends it: every
/// entity as an ADDED event, in responses of the server's default budget.
fn snapshot_responses() -> Vec<Vec<u8>> {
    let workload = bench_workload();
    let mut store = Store::new(Epoch::from_seed(SEED), 0);
    store.apply(workload.snapshot().into_iter().map(EntityEvent::Added));
    let framer = Framer::new(
        store.epoch().clone(),
        Cardinality::High,
        ServiceConfig::default().chunk_budget(),
    );
    framer
        .snapshot(store.snapshot(&PrefixFilter::all()))
        .map(|response| response.encode_to_vec())
        .collect()
}

/// Scenario 2: a synced client loses its connection for 1 s while ~100
/// changes happen, then reconnects: with the change log intact it resumes,
/// without one (capacity 0) it needs the whole snapshot again.
async fn resume_versus_resync() -> Vec<Row> {
    let mut rows = Vec::new();
    for (variant, log_capacity) in [("resume", DEFAULT_CHANGE_LOG_CAPACITY), ("full resync", 0)] {
        println!(
            "\n== resume: {variant} (change log {log_capacity}), {RESUME_ROUNDS} disconnects of {} with {} changes each",
            ms(OUTAGE),
            OUTAGE_BATCHES * OUTAGE_BATCH
        );
        let server = BenchServer::start(|config| config.change_log_capacity = log_capacity).await;
        let proxy = Proxy::start(server.addr).await;
        let mut config = client_config(&server, &proxy.address);
        // Reconnect attempts fail for the whole outage; without a cap the
        // interval would grow to hundreds of ms and the figure would be the
        // backoff's, not the resume's.
        config.backoff = BackoffConfig {
            initial_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(20),
            ..BackoffConfig::default()
        };
        let tagger = RemoteTagger::start(config).expect("client config");
        patient("the initial sync", tagger.wait_synced()).await;
        let mut workload = bench_workload();
        let mut from_cut = Vec::new();
        let mut from_restore = Vec::new();
        let mut cpus = Vec::new();
        let mut bytes = Vec::new();
        let mut changes = Vec::new();
        let mut stats_delta = (0, 0, 0);
        for round in 1..=RESUME_ROUNDS {
            let before = tagger.status().borrow().clone();
            let stats_before = server.store.stats();
            let cut = Instant::now();
            proxy.set_up(false);
            proxy.cut();
            for _ in 0..OUTAGE_BATCHES {
                tokio::time::sleep(OUTAGE / OUTAGE_BATCHES as u32).await;
                server.store.apply(workload.next_events(OUTAGE_BATCH));
            }
            let bytes_before = proxy.downstream_bytes();
            let cpu_before = cpu_time();
            let restored = Instant::now();
            proxy.set_up(true);
            let synced_count = |s: &ClientStatus| s.telemetry.resumes + s.telemetry.snapshots;
            let after = wait_status(&tagger, "the resync", |s| {
                s.state == ConnectionState::Synced && synced_count(s) > synced_count(&before)
            })
            .await;
            let done = Instant::now();
            let cpu = cpu_time() - cpu_before;
            let received = proxy.downstream_bytes() - bytes_before;
            let stats = server.store.stats();
            let updated = after.telemetry.updated_entities - before.telemetry.updated_entities;
            let responses = after.telemetry.receives - before.telemetry.receives;
            stats_delta.0 += stats.resumes_accepted - stats_before.resumes_accepted;
            stats_delta.1 += stats.resumes_refused - stats_before.resumes_refused;
            stats_delta.2 += stats.snapshots_sent - stats_before.snapshots_sent;
            println!(
                "round {round}: cut -> synced {}, restore -> synced {}, {} process CPU, {:.1} KiB received, {responses} responses, {updated} entities changed",
                ms(done - cut),
                ms(done - restored),
                ms(cpu),
                received as f64 / 1024.0,
            );
            from_cut.push(done - cut);
            from_restore.push(done - restored);
            cpus.push(cpu);
            bytes.push(received);
            changes.push(updated);
        }
        // Every change made while disconnected arrived: the mirror is the store.
        let consistent = tagger.mirror().list() == workload.snapshot();
        check(
            consistent,
            "after the reconnects the mirror equals the store",
        );
        println!(
            "server: resumes accepted +{}, refused +{}, snapshots sent +{}; mirror == store: {consistent}",
            stats_delta.0, stats_delta.1, stats_delta.2
        );
        tagger.stop().await;
        drop(proxy);
        server.stop().await;
        rows.extend([
            Row::info(
                variant,
                "cut -> synced, median (min..max)",
                format!(
                    "{} ({}..{})",
                    ms(median(&from_cut)),
                    ms(min(&from_cut)),
                    ms(max(&from_cut))
                ),
            ),
            Row::info(
                variant,
                "reconnect allowed -> synced, median (min..max)",
                format!(
                    "{} ({}..{})",
                    ms(median(&from_restore)),
                    ms(min(&from_restore)),
                    ms(max(&from_restore))
                ),
            ),
            Row::info(variant, "process CPU, median", ms(median(&cpus))),
            Row::info(
                variant,
                "bytes received (TLS), median",
                format!("{:.1} KiB", median(&bytes) as f64 / 1024.0),
            ),
            Row::info(
                variant,
                "mirror entities changed per reconnect, median",
                median(&changes).to_string(),
            ),
            Row::new(
                variant,
                "server: resumes accepted / refused / snapshots sent",
                format!("{} / {} / {}", stats_delta.0, stats_delta.1, stats_delta.2),
                if log_capacity > 0 {
                    "every reconnect resumed, no snapshot"
                } else {
                    "every reconnect a snapshot"
                },
                if log_capacity > 0 {
                    stats_delta == (RESUME_ROUNDS as u64, 0, 0)
                } else {
                    stats_delta.2 == RESUME_ROUNDS as u64
                },
            ),
            Row::new(
                variant,
                "mirror equals the store afterwards",
                consistent.to_string(),
                "true",
                consistent,
            ),
        ]);
    }
    rows
}

/// Scenario 3: `clients` full HIGH mirrors of one server while its store
/// churns at 2,000 events/s; the latency of every (client, event) delivery.
async fn fan_out(clients: usize, rounds: usize) -> Vec<Row> {
    let scenario: &'static str = match clients {
        1 => "fanout 1",
        10 => "fanout 10",
        100 => "fanout 100",
        _ => "fanout",
    };
    println!(
        "\n== fanout: {clients} clients, churn {} events/s for {} x {rounds} rounds",
        churn_rate(),
        ms(FANOUT_CHURN)
    );
    let server = BenchServer::start(|_| {}).await;
    let mut workload = bench_workload();
    let rss_before = rss_kib();
    let started = Instant::now();
    let cpu_before = cpu_time();
    let taggers: Vec<RemoteTagger> = (0..clients)
        .map(|_| {
            RemoteTagger::start(client_config(&server, &server.addr.to_string()))
                .expect("client config")
        })
        .collect();
    for tagger in &taggers {
        patient("every client's sync", tagger.wait_synced()).await;
    }
    let sync_all = started.elapsed();
    let sync_cpu = cpu_time() - cpu_before;
    let rss_synced = rss_kib();
    let stats = server.store.stats();
    println!(
        "all synced in {} ({} process CPU), snapshots sent {}, RSS {} -> {} MiB",
        ms(sync_all),
        ms(sync_cpu),
        stats.snapshots_sent,
        rss_before / 1024,
        rss_synced / 1024
    );

    let lagged = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let resyncs = Arc::new(AtomicU64::new(0));
    let losses: Losses = Arc::default();
    let arrivals: Vec<Arrivals> = (0..clients).map(|_| Arrivals::default()).collect();
    let consumers: Vec<JoinHandle<()>> = taggers
        .iter()
        .zip(&arrivals)
        .map(|(tagger, arrivals)| {
            tokio::spawn(consume(
                tagger.subscribe(),
                Arc::clone(arrivals),
                Arc::clone(&delivered),
                Arc::clone(&lagged),
                Arc::clone(&resyncs),
                Arc::clone(&losses),
            ))
        })
        .collect();

    let mut rows = vec![Row::info(
        scenario,
        "all clients synced (3 snapshots produced at a time)",
        format!("{} wall, {} process CPU", ms(sync_all), ms(sync_cpu)),
    )];
    for round in 1..=rounds {
        let stats_before = server.store.stats();
        let errors_before: u64 = client_stream_errors(&taggers);
        let delivered_before = delivered.load(Ordering::Relaxed);
        let lagged_before = lagged.load(Ordering::Relaxed);
        let resyncs_before = resyncs.load(Ordering::Relaxed);
        for client in &arrivals {
            reserve_touched(
                &mut client.lock().expect("no consumer panics"),
                churn_events(FANOUT_CHURN),
            );
        }
        let cpu_before = cpu_time();
        let churn_started = Instant::now();
        let applied = churn(&server.store, &mut workload, FANOUT_CHURN).await;
        let churn_wall = churn_started.elapsed();
        let expected = (applied.len() * clients) as u64;
        let drain_deadline = Instant::now() + DRAIN_GRACE;
        while delivered.load(Ordering::Relaxed) - delivered_before < expected
            && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cpu = cpu_time() - cpu_before;
        let busy = cpu.as_secs_f64() / churn_started.elapsed().as_secs_f64();
        let latency = Latencies::match_up(&applied, &arrivals, expected);
        let stats = server.store.stats();
        let evicted = stats.subscribers_evicted - stats_before.subscribers_evicted;
        let lagged_now = lagged.load(Ordering::Relaxed) - lagged_before;
        let errors = client_stream_errors(&taggers) - errors_before;
        let resynced = resyncs.load(Ordering::Relaxed) - resyncs_before;
        let per_delivery = cpu.as_secs_f64() * 1e6 / latency.matched.max(1) as f64;
        println!(
            "round {round}: {} events applied in {} ({:.0}/s); delivered {}/{expected} ({} unmatched); latency p50 {} p99 {} max {}; lagged {lagged_now}, evicted {evicted}, client stream errors {errors}, resyncs {resynced}; process CPU {} = {busy:.2} cores, {per_delivery:.1} us per delivery",
            applied.len(),
            ms(churn_wall),
            applied.len() as f64 / churn_wall.as_secs_f64(),
            latency.matched,
            latency.unmatched,
            latency.show(0.5),
            latency.show(0.99),
            latency.show(1.0),
            ms(cpu),
        );
        for (reason, count) in std::mem::take(&mut *losses.lock().expect("no consumer panics")) {
            println!("  connection lost x{count}: {reason}");
        }
        let all_delivered = latency.matched == expected && latency.unmatched == 0;
        rows.extend([
            Row::new(
                scenario,
                &format!("round {round}: latency p50 / p99 / max"),
                format!(
                    "{} / {} / {}",
                    latency.show(0.5),
                    latency.show(0.99),
                    latency.show(1.0)
                ),
                "p99 < 50 ms",
                latency
                    .quantile(0.99)
                    .is_some_and(|p99| p99 < Duration::from_millis(50)),
            ),
            Row::new(
                scenario,
                &format!("round {round}: delivered / expected"),
                format!("{} / {expected}", latency.matched),
                "all",
                all_delivered,
            ),
            Row::new(
                scenario,
                &format!("round {round}: lagged receivers / evictions / resyncs"),
                format!("{lagged_now} / {evicted} / {resynced}"),
                "0 / 0 / 0",
                lagged_now == 0 && evicted == 0 && resynced == 0,
            ),
            Row::info(
                scenario,
                &format!("round {round}: process CPU while churning and draining"),
                format!("{busy:.2} cores, {per_delivery:.1} us per delivery"),
            ),
        ]);
    }
    for consumer in consumers {
        consumer.abort();
    }
    let sizes_match = taggers
        .iter()
        .all(|tagger| tagger.mirror().len() == workload.store().len());
    let first_equal = taggers[0].mirror().list() == workload.snapshot();
    check(
        sizes_match && first_equal,
        "every mirror has the store's size, the first one its content",
    );
    for tagger in taggers {
        tagger.stop().await;
    }
    server.stop().await;
    rows
}

/// When each client saw each entity change: `(id, arrival)` in arrival order.
type Arrivals = Arc<Mutex<Vec<(EntityId, Instant)>>>;

/// Makes room for `additional` more arrivals in memory already faulted in.
/// Grown as they come, the 100 clients' logs doubled at the same moments
/// and the kernel zeroed their new pages in bursts: perf showed 50 ms
/// windows with 80 % of both cores in `clear_page_erms`, inside the
/// latency being measured.
fn reserve_touched(log: &mut Vec<(EntityId, Instant)>, additional: usize) {
    log.reserve(additional);
    for slot in log.spare_capacity_mut() {
        *slot = std::mem::MaybeUninit::zeroed();
    }
}

/// Why clients lost their connection, with how many times.
type Losses = Arc<Mutex<HashMap<String, u64>>>;

/// Consumes one client's change stream, stamping arrivals. Matching them
/// with the apply instants happens after the round, so the consumers do as
/// little as a real application would.
async fn consume(
    mut events: broadcast::Receiver<Event>,
    arrivals: Arrivals,
    delivered: Arc<AtomicU64>,
    lagged: Arc<AtomicU64>,
    resyncs: Arc<AtomicU64>,
    losses: Losses,
) {
    loop {
        match events.recv().await {
            Ok(Event::EntitiesChanged(changes)) => {
                let now = Instant::now();
                delivered.fetch_add(changes.len() as u64, Ordering::Relaxed);
                let mut arrivals = arrivals.lock().expect("no consumer panics");
                arrivals.extend(changes.into_iter().map(|change| (change.id, now)));
            }
            Ok(Event::Synced { .. }) => {
                resyncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::ConnectionLost { reason, .. }) => {
                *losses
                    .lock()
                    .expect("no consumer panics")
                    .entry(reason)
                    .or_default() += 1;
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                lagged.fetch_add(missed, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn client_stream_errors(taggers: &[RemoteTagger]) -> u64 {
    taggers
        .iter()
        .map(|tagger| tagger.status().borrow().telemetry.stream_errors)
        .sum()
}

/// Delivery latencies of one round, in microseconds, sorted.
struct Latencies {
    sorted_micros: Vec<u32>,
    /// Deliveries the round should have made: the missing ones count as
    /// slower than any delivered, so quantiles are not flattered by losses.
    expected: u64,
    matched: u64,
    /// Arrivals with no apply left to match (a resync's changes, duplicates).
    unmatched: u64,
}

impl Latencies {
    /// Pairs each client's n-th arrival of an id with the n-th apply of that
    /// id (a client sees one server's changes in order), and takes the
    /// round's arrivals out of `arrivals`.
    fn match_up(applied: &[(EntityId, Instant)], arrivals: &[Arrivals], expected: u64) -> Self {
        let mut applies: HashMap<&EntityId, Vec<Instant>> = HashMap::new();
        for (id, at) in applied {
            applies.entry(id).or_default().push(*at);
        }
        let mut sorted_micros = Vec::new();
        let mut unmatched = 0;
        for client in arrivals {
            let seen = std::mem::take(&mut *client.lock().expect("no consumer panics"));
            let mut occurrences: HashMap<&EntityId, usize> = HashMap::new();
            for (id, arrived) in &seen {
                let Some(instants) = applies.get(id) else {
                    unmatched += 1;
                    continue;
                };
                let nth = occurrences.entry(id).or_default();
                match instants.get(*nth) {
                    Some(applied_at) => {
                        let micros = arrived.saturating_duration_since(*applied_at).as_micros();
                        sorted_micros.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                    None => unmatched += 1,
                }
                *nth += 1;
            }
        }
        sorted_micros.sort_unstable();
        Self {
            matched: sorted_micros.len() as u64,
            sorted_micros,
            expected,
            unmatched,
        }
    }

    /// The `q` quantile over every expected delivery; `None` when it falls
    /// among the ones that never arrived within the drain grace.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let index = (self.expected.max(1) - 1) as f64 * q;
        let micros = self.sorted_micros.get(index.round() as usize)?;
        Some(Duration::from_micros(u64::from(*micros)))
    }

    fn show(&self, q: f64) -> String {
        self.quantile(q)
            .map_or_else(|| "not delivered".to_owned(), ms)
    }
}

/// Scenario 4: a subscriber that opens a stream and never reads, while the
/// store churns: the server must evict it and its memory must stay bounded.
async fn stalled_subscriber() -> Vec<Row> {
    println!(
        "\n== stalled: one subscriber that never reads, churn {} events/s; {} warm-up, then {} observed",
        churn_rate(),
        ms(STALL_WARMUP),
        ms(STALL_OBSERVED)
    );
    let server = BenchServer::start(|_| {}).await;
    let churner = {
        let store = server.store.clone();
        let mut workload = bench_workload();
        tokio::spawn(async move {
            churn(&store, &mut workload, STALL_WARMUP + STALL_OBSERVED * 2).await;
        })
    };
    let rss_idle = rss_kib();
    tokio::time::sleep(STALL_WARMUP).await;
    let rss_start = rss_kib();
    let stalled = open_stalled_stream(&server).await;
    let opened = Instant::now();
    let mut evicted_at = None;
    let mut rss_at_eviction = 0;
    let mut samples = Vec::new();
    let mut line = String::new();
    let ticks = STALL_OBSERVED.as_millis() / 100;
    for tick in 1..=ticks {
        tokio::time::sleep_until((opened + Duration::from_millis(tick as u64 * 100)).into()).await;
        let stats: ServerStats = server.store.stats();
        if evicted_at.is_none() && stats.subscribers_evicted > 0 {
            evicted_at = Some(opened.elapsed());
            rss_at_eviction = rss_kib();
        }
        if tick % 10 == 0 {
            let rss = rss_kib();
            samples.push(rss);
            line.push_str(&format!(
                " {}s:{}{}",
                tick / 10,
                rss / 1024,
                if stats.subscribers_evicted > 0 {
                    "e"
                } else {
                    ""
                }
            ));
        }
    }
    let stats = server.store.stats();
    churner.abort();
    drop(stalled);
    server.stop().await;
    let peak = samples.iter().copied().max().unwrap_or(0).max(rss_start);
    let end = samples.last().copied().unwrap_or(rss_start);
    println!(
        "RSS MiB each second after the stream opened (e = evicted by then):{line}\nidle {} MiB, at open {} MiB, peak {} MiB, end {} MiB; evicted {}; open streams at the end {}; stream errors {}",
        rss_idle / 1024,
        rss_start / 1024,
        peak / 1024,
        end / 1024,
        evicted_at.map_or("never".to_owned(), |at| format!("after {}", ms(at))),
        stats.subscribers,
        stats.stream_errors
    );
    let after_eviction = evicted_at.map(|_| end as i64 - rss_at_eviction as i64);
    // Bounded: once evicted, the process stops growing (allocator noise aside).
    let bounded = after_eviction.is_some_and(|growth| growth < 16 * 1024);
    vec![
        Row::info(
            "stalled",
            "RSS at open / peak / end",
            format!(
                "{} / {} / {} MiB",
                rss_start / 1024,
                peak / 1024,
                end / 1024
            ),
        ),
        Row::new(
            "stalled",
            "evicted after",
            evicted_at.map_or("never".to_owned(), ms),
            "evicted",
            evicted_at.is_some(),
        ),
        Row::new(
            "stalled",
            "RSS growth from eviction to end",
            after_eviction.map_or("n/a".to_owned(), |kib| format!("{:+} MiB", kib / 1024)),
            "no growth (< 16 MiB)",
            bounded,
        ),
    ]
}

/// Scenario 5: fresh clients' syncs on an idle server, then while
/// NEVER_READING streams are open that sent their request with the token
/// and never read a byte since (raw HTTP/2 over TLS, a 64 KiB window never
/// extended), each holding its snapshot.
async fn sync_past_never_reading_streams() -> Vec<Row> {
    println!(
        "\n== never-reading: {SYNC_RUNS} fresh syncs of {ENTITIES} entities idle, then past {NEVER_READING} streams that never read"
    );
    let server = BenchServer::start(|_| {}).await;
    let idle = timed_syncs(&server, "idle").await;
    let tls = datadog_client::pinned_tls_config(&server.cert_file());
    let request = StreamTagsRequest {
        cardinality: Cardinality::High.to_proto() as i32,
        streaming_id: "bench:never-reading".to_owned(),
        ..StreamTagsRequest::default()
    }
    .encode_to_vec();
    let token = server.token();
    let mut never_reading = Vec::new();
    for _ in 0..NEVER_READING {
        let tls = datadog_client::pinned_tls(server.addr, Arc::clone(&tls))
            .await
            .expect("a TLS connection");
        let mut connection = raw_h2::RawH2::start(tls).await.expect("the preface");
        connection
            .call(raw_h2::TAGGER_STREAM, Some(&token), &request)
            .await
            .expect("the request");
        never_reading.push(connection);
    }
    // Open, and done sending what their windows take: no send for 500 ms.
    // (At least: before streams ended with their clients, the idle runs'
    // subscriptions outlived them.)
    let mut sends = server.store.stats().sends;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = server.store.stats();
        if stats.subscribers >= NEVER_READING as u64 && stats.sends == sends {
            println!(
                "{NEVER_READING} streams open, none reading: snapshots in flight {}, waiting for a slot {}",
                stats.snapshots_in_flight, stats.snapshots_waiting
            );
            break;
        }
        sends = stats.sends;
    }
    let past = timed_syncs(&server, "past the never-reading streams").await;
    let errors = server.store.stats().stream_errors;
    check(
        errors == 0,
        "no stream ended while the fresh clients synced",
    );
    drop(never_reading);
    server.stop().await;

    let median_of = |runs: &[Option<Duration>]| -> Option<Duration> {
        let synced: Vec<Duration> = runs.iter().flatten().copied().collect();
        (synced.len() == runs.len()).then(|| median(&synced))
    };
    let show = |median: Option<Duration>| median.map_or(format!("> {STARVED:?}"), ms);
    let (idle, past) = (median_of(&idle), median_of(&past));
    let ratio = idle
        .zip(past)
        .map(|(idle, past)| past.as_secs_f64() / idle.as_secs_f64());
    vec![
        Row::info(
            "never-reading",
            "sync on the idle server, median",
            show(idle),
        ),
        Row::info(
            "never-reading",
            "sync past 50 never-reading streams, median",
            show(past),
        ),
        Row::new(
            "never-reading",
            "past never-reading / idle",
            ratio.map_or("starved".to_owned(), |ratio| format!("{ratio:.2}x")),
            "<= 2x",
            ratio.is_some_and(|ratio| ratio <= 2.0),
        ),
    ]
}

/// SYNC_RUNS fresh syncs one after another, each printed; a run that does
/// not sync within STARVED is `None` and ends the series.
async fn timed_syncs(server: &BenchServer, what: &str) -> Vec<Option<Duration>> {
    let mut runs = Vec::new();
    for run in 1..=SYNC_RUNS {
        let Some((tagger, wall)) = fresh_sync(server, STARVED).await else {
            println!("{what}, run {run}: no sync within {STARVED:?}");
            runs.push(None);
            break;
        };
        let entities = tagger.mirror().len();
        println!(
            "{what}, run {run}: {} to synced, {entities} entities",
            ms(wall)
        );
        check(entities == ENTITIES, "the mirror holds every entity");
        runs.push(Some(wall));
        tagger.stop().await;
    }
    runs
}

/// A raw `TaggerStreamEntities` stream with a valid token, never read: the
/// response headers arrive, then the HTTP/2 windows fill and stay full.
async fn open_stalled_stream(server: &BenchServer) -> tonic::Streaming<StreamTagsResponse> {
    let channel = datadog_client::pinned_channel(server.addr, &server.cert_file()).await;
    let mut request = tonic::Request::new(StreamTagsRequest {
        cardinality: Cardinality::High.to_proto() as i32,
        streaming_id: "bench:stalled".to_owned(),
        ..StreamTagsRequest::default()
    });
    let bearer = format!("Bearer {}", server.token())
        .parse()
        .expect("a token is a valid header");
    request.metadata_mut().insert("authorization", bearer);
    AgentSecureClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .tagger_stream_entities(request)
        .await
        .expect("the stream opens")
        .into_inner()
}

// ----------------------------------------------------------------- fixtures

/// The workload the servers are loaded with; churn drawn from a copy stays
/// consistent with the server's store (same seed, same events).
fn bench_workload() -> Workload {
    Workload::new(WorkloadConfig {
        entities: ENTITIES,
        seed: SEED,
    })
}

fn churn_rate() -> f64 {
    CHURN_BATCH as f64 / CHURN_PERIOD.as_secs_f64()
}

/// The events [`churn`] applies over `duration`.
fn churn_events(duration: Duration) -> usize {
    (duration.as_nanos() / CHURN_PERIOD.as_nanos()) as usize * CHURN_BATCH
}

/// Applies `CHURN_BATCH` events every `CHURN_PERIOD` for `duration` on an
/// absolute schedule (a late tick catches up, so the rate holds under load),
/// and returns each event's id with the instant just before its batch was
/// applied (fan-out happens inside `apply`).
async fn churn(
    store: &StoreHandle,
    workload: &mut Workload,
    duration: Duration,
) -> Vec<(EntityId, Instant)> {
    let started = tokio::time::Instant::now();
    let ticks = (duration.as_nanos() / CHURN_PERIOD.as_nanos()) as u32;
    let mut applied = Vec::with_capacity(churn_events(duration));
    for tick in 1..=ticks {
        tokio::time::sleep_until(started + CHURN_PERIOD * tick).await;
        let events = workload.next_events(CHURN_BATCH);
        let ids: Vec<EntityId> = events.iter().map(|event| event.id().clone()).collect();
        let at = Instant::now();
        let effective = store.apply(events);
        check(
            effective == CHURN_BATCH,
            "every churn event changes the store",
        );
        applied.extend(ids.into_iter().map(|id| (id, at)));
    }
    applied
}

/// A client of `server` that verifies its certificate.
fn client_config(server: &BenchServer, target: &str) -> ClientConfig {
    let mut config = ClientConfig::new(target, server.token_file());
    config.tls = TlsSettings {
        mode: TlsMode::Verify {
            ca_file: server.cert_file(),
        },
        ..TlsSettings::default()
    };
    config
}

/// A server on a loopback port with its token and certificate in a
/// temporary directory, loaded with the static 100k workload (the scenarios
/// apply churn themselves, to know when each event happened).
struct BenchServer {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    store: StoreHandle,
    running: RunningServer,
}

impl BenchServer {
    async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = ServeConfig::new(
            dir.path().join("auth_token"),
            dir.path().join("ipc_cert.pem"),
        );
        config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        config.source = Source::Workload {
            entities: ENTITIES,
            seed: SEED,
            churn_per_sec: 0.0,
        };
        tweak(&mut config);
        let running = Server::bind(config)
            .await
            .expect("the server starts")
            .spawn();
        Self {
            dir,
            addr: running.local_addr(),
            store: running.store().clone(),
            running,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("auth_token")
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("ipc_cert.pem")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("the server wrote its token")
            .trim()
            .to_owned()
    }

    async fn stop(self) {
        let result = patient("the server's shutdown", self.running.stop()).await;
        check(matches!(result, Ok(())), "the server shuts down cleanly");
    }
}

/// A TCP relay that can drop every connection and refuse new ones, to make
/// an outage without touching the server; it counts the bytes relayed
/// towards the client.
struct Proxy {
    address: String,
    up: Arc<AtomicBool>,
    downstream: Arc<AtomicU64>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("bound").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let downstream = Arc::new(AtomicU64::new(0));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = tokio::spawn({
            let (up, downstream, connections) = (
                Arc::clone(&up),
                Arc::clone(&downstream),
                Arc::clone(&connections),
            );
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    // While down, a connection is closed at once: the client
                    // sees a failed attempt and backs off.
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let relay = tokio::spawn(relay(inbound, upstream, Arc::clone(&downstream)));
                    connections.lock().expect("no relay panics").push(relay);
                }
            }
        });
        Self {
            address,
            up,
            downstream,
            connections,
            acceptor,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Drops every relayed connection (both ends see it closed).
    fn cut(&self) {
        for relay in self.connections.lock().expect("no relay panics").drain(..) {
            relay.abort();
        }
    }

    fn downstream_bytes(&self) -> u64 {
        self.downstream.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

/// Relays one connection until either side closes it.
async fn relay(inbound: TcpStream, upstream: SocketAddr, downstream: Arc<AtomicU64>) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    // Like the real client and server: small HTTP/2 frames must not wait.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let towards_server = tokio::io::copy(&mut client_read, &mut server_write);
    let towards_client = async {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = server_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            // Counted before the write: once the client has the bytes, a
            // reader of the counter must see them.
            downstream.fetch_add(read as u64, Ordering::Relaxed);
            client_write.write_all(&buffer[..read]).await?;
        }
    };
    tokio::select! {
        _ = towards_server => {}
        _ = towards_client => {}
    }
}

// -------------------------------------------------------------- measurement

/// Waits until the client's status satisfies `done`, and returns it.
async fn wait_status(
    tagger: &RemoteTagger,
    what: &str,
    done: impl Fn(&ClientStatus) -> bool,
) -> ClientStatus {
    let mut status = tagger.status();
    patient(what, status.wait_for(|s| done(s)))
        .await
        .expect("the driver runs")
        .clone()
}

async fn patient<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("HANG: waited {PATIENCE:?} for {what}"))
}

/// A failed correctness check is a finding, not a reason to stop measuring.
fn check(ok: bool, what: &str) {
    if !ok {
        println!("CHECK FAILED: {what}");
    }
}

/// CPU time of the whole process (user + system, every thread): server and
/// clients share it, so it is what the scenario cost the machine.
fn cpu_time() -> Duration {
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    const TICKS_PER_SEC: u64 = 100;
    let stat = read_trimmed("/proc/self/stat");
    // The command name may hold spaces; fields are counted after its ')'.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11) // state .. cmajflt: utime is field 14 of the whole line
        .take(2)
        .filter_map(|field| field.parse().ok())
        .collect();
    let ticks: u64 = fields.iter().sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
}

/// Resident set size in KiB.
fn rss_kib() -> u64 {
    read_trimmed("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "n/a".to_owned())
}

const MIB: f64 = 1024.0 * 1024.0;

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn median<T: Copy + Ord>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

fn min<T: Copy + Ord>(values: &[T]) -> T {
    values.iter().copied().min().expect("some values")
}

fn max<T: Copy + Ord>(values: &[T]) -> T {
    values.iter().copied().max().expect("some values")
}

/// One line of the summary table.
struct Row {
    scenario: &'static str,
    metric: String,
    value: String,
    goal: &'static str,
    /// `None` for figures without a goal.
    met: Option<bool>,
}

impl Row {
    fn new(
        scenario: &'static str,
        metric: &str,
        value: String,
        goal: &'static str,
        met: bool,
    ) -> Self {
        Self {
            scenario,
            metric: metric.to_owned(),
            value,
            goal,
            met: Some(met),
        }
    }

    fn info(scenario: &'static str, metric: &str, value: String) -> Self {
        Self {
            scenario,
            metric: metric.to_owned(),
            value,
            goal: "",
            met: None,
        }
    }
}

fn print_summary(rows: &[Row]) {
    let width = |column: fn(&Row) -> usize| rows.iter().map(column).max().unwrap_or(0);
    let widths = [
        width(|row| row.scenario.len()),
        width(|row| row.metric.len()),
        width(|row| row.value.len()),
        width(|row| row.goal.len()),
    ];
    println!("\n== summary");
    for row in rows {
        let verdict = match row.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {verdict}",
            row.scenario,
            row.metric,
            row.value,
            row.goal,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
    }
}
