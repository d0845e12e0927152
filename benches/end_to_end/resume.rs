//! Scenario `resume`: a synced client's reconnect after an outage, resumed
//! from the change log or, without one, a full resync.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remote_tagger::client::{ClientStatus, RemoteTagger};
use remote_tagger::core::{BackoffConfig, ConnectionState};
use remote_tagger::server::DEFAULT_CHANGE_LOG_CAPACITY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::client_config;
use crate::report::{Row, check, cpu_time, max, median, min, ms};
use crate::support::{bench_server, bench_workload, patient, wait_status};

/// Disconnects measured per variant (resume, full resync).
const RESUME_ROUNDS: usize = 3;
const OUTAGE: Duration = Duration::from_secs(1);
/// ~100 changes land during the outage: 10 batches of 10, one per 100 ms.
const OUTAGE_BATCHES: usize = 10;
const OUTAGE_BATCH: usize = 10;

/// Scenario 2: a synced client loses its connection for 1 s while ~100
/// changes happen, then reconnects: with the change log intact it resumes,
/// without one (capacity 0) it needs the whole snapshot again.
pub async fn resume_versus_resync() -> Vec<Row> {
    let mut rows = Vec::new();
    for (variant, log_capacity) in [("resume", DEFAULT_CHANGE_LOG_CAPACITY), ("full resync", 0)] {
        println!(
            "\n== resume: {variant} (change log {log_capacity}), {RESUME_ROUNDS} disconnects of {} with {} changes each",
            ms(OUTAGE),
            OUTAGE_BATCHES * OUTAGE_BATCH
        );
        let server = bench_server(|config| config.change_log_capacity = log_capacity).await;
        let proxy = Proxy::start(server.addr).await;
        let mut config = client_config(&server, &proxy.address);
        // Reconnect attempts fail for the whole outage; without a cap the
        // interval would grow to hundreds of ms and the figure would be the
        // backoff's, not the resume's.
        config.core.backoff = BackoffConfig {
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
