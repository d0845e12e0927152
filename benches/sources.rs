//! Costs of the real sources, printed as plain figures:
//! - the host source's scan of this machine's `/proc` (median of several
//!   scans, per 1,000 processes);
//! - the delay of a live change from an origin server, through a relay, to
//!   a client's mirror (p50/p99 over a few hundred changes).
//!
//! `cargo bench --bench sources`

use std::path::Path;
use std::time::{Duration, Instant};

use remote_tagger::client::{ClientConfig, RemoteTagger, TlsMode, TlsSettings};
use remote_tagger::domain::{Entity, EntityEvent, EntityId};
use remote_tagger::server::{ServeConfig, Server, Source, StoreHandle, scan_host};

const SCANS: usize = 31;
const LIVE_CHANGES: usize = 500;

fn main() {
    bench_host_scan();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(bench_relay_delay());
}

fn bench_host_scan() {
    let mut times = Vec::with_capacity(SCANS);
    let mut processes = 0;
    for _ in 0..SCANS {
        let started = Instant::now();
        let (_, stats) = scan_host(Path::new("/"));
        times.push(started.elapsed());
        processes = stats.processes;
    }
    times.sort();
    let median = times[SCANS / 2];
    let per_thousand = median.as_secs_f64() * 1e3 * 1000.0 / processes.max(1) as f64;
    println!(
        "host scan: {processes} processes, median {:.2} ms per scan (min {:.2}, max {:.2}), {per_thousand:.2} ms per 1,000 processes",
        ms(median),
        ms(times[0]),
        ms(times[SCANS - 1]),
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
    let mut config = ClientConfig::new(addr.to_string(), dir.join("auth_token"));
    config.tls = TlsSettings {
        mode: TlsMode::Verify {
            ca_file: dir.join("ipc_cert.pem"),
        },
        ..TlsSettings::default()
    };
    config
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
