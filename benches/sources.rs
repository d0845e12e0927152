//! Costs of the real sources, printed as plain figures:
//! - the host source's scan of this machine's `/proc`: a cold scan (a new
//!   scanner) and the steady-state scan of a kept scanner, per scan and per
//!   1,000 processes (median of several), and the diff of two consecutive
//!   scans that the source computes every interval; on the machine as it is,
//!   then with 1,000 extra `sleep` processes, so the per-1,000 figures are
//!   measured at that size;
//! - the delay of a live change from an origin server, through a relay, to
//!   a client's mirror (p50/p99 over a few hundred changes).
//!
//! `cargo bench --bench sources`

#[path = "../tests/common/children.rs"]
mod children;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use children::Children;
use remote_tagger::client::{ClientConfig, RemoteTagger, TlsSettings};
use remote_tagger::domain::{Entity, EntityEvent, EntityId, diff_entities};
use remote_tagger::server::{HostScanner, ServeConfig, Server, Source, StoreHandle, scan_host};

const SCANS: usize = 31;
const EXTRA_PROCESSES: usize = 1_000;
const LIVE_CHANGES: usize = 500;

fn main() {
    bench_host_scans("as it is");
    {
        // Killed and reaped at the end of the block, or on a panic.
        let mut sleepers = Children::default();
        for _ in 0..EXTRA_PROCESSES {
            sleepers.spawn(
                Command::new("sleep")
                    .arg("600")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
        }
        bench_host_scans(&format!("with {} extra sleep processes", sleepers.len()));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(bench_relay_delay());
}

/// Cold scans, then the steady-state scans of one scanner and the diff of
/// each against the one before, as the running source does.
fn bench_host_scans(machine: &str) {
    let root = Path::new("/");
    let mut cold = Vec::with_capacity(SCANS);
    let mut processes = 0;
    for _ in 0..SCANS {
        let started = Instant::now();
        let (_, stats) = scan_host(root);
        cold.push(started.elapsed());
        processes = stats.processes;
    }
    report(&format!("host scan, {machine}, cold"), &mut cold, processes);

    let mut scanner = HostScanner::new(root);
    let mut current = by_id(scanner.scan().0);
    let mut steady = Vec::with_capacity(SCANS);
    let mut diffs = Vec::with_capacity(SCANS);
    let (mut read, mut untracked) = (0, 0);
    for _ in 0..SCANS {
        let started = Instant::now();
        let (entities, stats) = scanner.scan();
        steady.push(started.elapsed());
        processes = stats.processes;
        read += stats.read;
        untracked += stats.untracked;
        let started = Instant::now();
        let next = by_id(entities);
        std::hint::black_box(diff_entities(&current, &next));
        diffs.push(started.elapsed());
        current = next;
    }
    report(
        &format!(
            "host scan, {machine}, steady state ({:.1} processes read per scan, {untracked} without a pidfd)",
            read as f64 / SCANS as f64
        ),
        &mut steady,
        processes,
    );
    report(
        &format!("host diff, {machine}, entities keyed by id + diff_entities"),
        &mut diffs,
        processes,
    );
}

fn by_id(entities: Vec<Entity>) -> BTreeMap<EntityId, Entity> {
    entities.into_iter().map(|e| (e.id.clone(), e)).collect()
}

/// The median (min, max) of `times`, per run and per 1,000 processes.
fn report(what: &str, times: &mut [Duration], processes: usize) {
    times.sort();
    let median = times[times.len() / 2];
    let per_thousand = ms(median) * 1000.0 / processes.max(1) as f64;
    println!(
        "{what}: {processes} processes, median {:.3} ms (min {:.3}, max {:.3}), {per_thousand:.3} ms per 1,000 processes",
        ms(median),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A server on loopback with its files in `dir`.
async fn start_server(dir: &Path, source: Source) -> (std::net::SocketAddr, StoreHandle) {
    let mut config = ServeConfig::new(dir.join("auth_token"), dir.join("ipc_cert.pem"));
    config.listen = "127.0.0.1:0".parse().expect("a valid address");
    config.source = source;
    let server = Server::bind(config).await.expect("the server starts");
    let addr = server.local_addr();
    let store = server.store().clone();
    tokio::spawn(server.run(std::future::pending()));
    (addr, store)
}

fn client_of(dir: &Path, addr: std::net::SocketAddr) -> ClientConfig {
    ClientConfig::new(
        addr.to_string(),
        dir.join("auth_token"),
        TlsSettings::verify(dir.join("ipc_cert.pem")),
    )
}

async fn bench_relay_delay() {
    let origin_dir = tempfile::tempdir().expect("a temp dir");
    let relay_dir = tempfile::tempdir().expect("a temp dir");
    let (origin_addr, origin) = start_server(
        origin_dir.path(),
        Source::Workload {
            entities: 0,
            seed: 1,
            churn_per_sec: 0.0,
        },
    )
    .await;
    let upstream = client_of(origin_dir.path(), origin_addr);
    let (relay_addr, _relay) =
        start_server(relay_dir.path(), Source::Upstream(Box::new(upstream))).await;
    let client = RemoteTagger::start(client_of(relay_dir.path(), relay_addr)).expect("a client");
    client.wait_synced().await;
    let mut events = client.subscribe();

    let id = EntityId::parse("container_id://bench").expect("a valid id");
    let mut delays = Vec::with_capacity(LIVE_CHANGES);
    for change in 0..LIVE_CHANGES {
        let tag = format!("change:{change}");
        let mut entity = Entity::new(id.clone());
        entity.high.push(tag.clone());
        let started = Instant::now();
        origin.apply([EntityEvent::Added(entity)]);
        // Done when the client's mirror holds this very change.
        while client
            .mirror()
            .entity(id.as_str())
            .is_none_or(|e| e.high != [tag.as_str()])
        {
            if let Err(error) = events.recv().await {
                panic!("client events: {error}");
            }
        }
        delays.push(started.elapsed());
    }
    delays.sort();
    let at = |quantile: f64| ms(delays[((delays.len() - 1) as f64 * quantile) as usize]);
    println!(
        "origin -> relay -> client, {LIVE_CHANGES} live changes one at a time: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5),
        at(0.99),
        at(1.0),
    );
    client.stop().await;
}
