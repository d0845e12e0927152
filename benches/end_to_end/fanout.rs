//! Scenario `fanout`: many full mirrors of one server while its store
//! churns, and the latency of every delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remote_tagger::client::RemoteTagger;
use remote_tagger::core::Event;
use remote_tagger::domain::EntityId;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::report::{Row, check, cpu_time, ms, rss_kib};
use crate::support::{
    bench_server, bench_workload, churn, churn_events, churn_rate, direct_client, patient,
};

const FANOUT_CHURN: Duration = Duration::from_secs(10);
/// Client counts and churn rounds for each, on the same synced clients. One
/// client is the baseline without fan-out; 100 clients get one round: on 2
/// cores their sync alone takes minutes.
pub const FANOUT_RUNS: [(usize, usize); 3] = [(1, 2), (10, 2), (100, 1)];
/// After the churn stops, how long stragglers get before they count as not
/// delivered (an overloaded run still ends, with the backlog reported).
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Scenario 3: `clients` full HIGH mirrors of one server while its store
/// churns at 2,000 events/s; the latency of every (client, event) delivery.
pub async fn fan_out(clients: usize, rounds: usize) -> Vec<Row> {
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
    let server = bench_server(|_| {}).await;
    let mut workload = bench_workload();
    let rss_before = rss_kib();
    let started = Instant::now();
    let cpu_before = cpu_time();
    let taggers: Vec<RemoteTagger> = (0..clients).map(|_| direct_client(&server)).collect();
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
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
            Ok(_) => {}
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
