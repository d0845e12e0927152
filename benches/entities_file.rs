//! The `--entities FILE` source on a large file, as the shipped binary runs
//! it: a `remote-tagger serve --entities` child process over a generated file
//! of the synthetic workload (about 200 MB unless `ENTITIES_FILE_MB` says
//! otherwise), measured from outside:
//! - the initial load: time to "serving", peak RSS (`VmHWM`) and RSS after;
//! - a reload that modifies every entity: its duration, the server's peak RSS
//!   while it runs (`VmHWM`, reset through `/proc/PID/clear_refs` first), and
//!   the latency of `TaggerFetchEntity` calls made back to back meanwhile,
//!   against the idle server's;
//! - in this process, the parse alone: from memory, and streamed as the
//!   server does.
//!
//! ```text
//! cargo bench --bench entities_file
//! ENTITIES_FILE_MB=50 cargo bench --bench entities_file
//! ```
//!
//! The file is written to a temporary directory and removed at the end.
//! Figures are printed, never asserted.

#[path = "../tests/common/datadog_client.rs"]
mod datadog_client;

use std::io::{BufRead as _, BufReader, BufWriter};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use remote_tagger::domain::Entity;
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model as pb;
use remote_tagger::server::{parse_entities_file, read_entities_file, write_entities_file};
use remote_tagger::workload::{Workload, WorkloadConfig};
use tonic::transport::Channel;

const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");
const DEFAULT_FILE_MB: u64 = 200;
/// Entities generated to learn the workload's JSON bytes per entity.
const SAMPLE_ENTITIES: usize = 10_000;
/// Fetches timed on the idle server, for the baseline.
const IDLE_FETCHES: usize = 200;
/// The low tag every entity gains in the reload: a fetch sees it once the
/// reload reached that entity.
const RELOAD_TAG: &str = "bench:reloaded";
const PATIENCE: Duration = Duration::from_secs(600);
const SETTLE: Duration = Duration::from_secs(2);
const WARM_UP_FETCHES: usize = 10;
const PARSE_RUNS: usize = 3;
/// Fetches slower than this are listed with when they were sent.
const SLOW_FETCH: Duration = Duration::from_millis(50);

fn main() {
    let target_mb = std::env::var("ENTITIES_FILE_MB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_FILE_MB);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("entities.json");

    let mut sample = Vec::new();
    write_entities_file(
        &mut sample,
        &Workload::new(config(SAMPLE_ENTITIES)).snapshot(),
    )
    .expect("a Vec takes every byte");
    let per_entity = sample.len() as u64 / SAMPLE_ENTITIES as u64;
    let entities = usize::try_from(target_mb * 1_000_000 / per_entity).expect("a count");
    let workload = Workload::new(config(entities));
    let snapshot = workload.snapshot();
    drop(workload);
    let written = write_file(&file, &snapshot);
    println!(
        "entities file: {entities} workload entities, {:.1} MB ({per_entity} bytes/entity)",
        written as f64 / 1e6
    );
    // The entity applied last in id order, and one in the middle.
    let last = snapshot.last().expect("entities").id.clone();
    let middle = snapshot[snapshot.len() / 2].id.clone();

    let started = Instant::now();
    let (mut server, addr) = spawn_server(dir.path(), &file);
    let pid = server.id();
    let loaded = started.elapsed();
    let load_peak = status_kib(pid, "VmHWM");
    let load_rss = status_kib(pid, "VmRSS");
    println!(
        "initial load: serving after {:.2} s; peak RSS {} MiB ({:.1}x the file), RSS after {} MiB",
        loaded.as_secs_f64(),
        load_peak / 1024,
        (load_peak * 1024) as f64 / written as f64,
        load_rss / 1024
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let token = std::fs::read_to_string(dir.path().join("auth_token")).expect("the token");
        let channel = datadog_client::pinned_channel(addr, &dir.path().join("ipc_cert.pem")).await;
        let mut client = AgentSecureClient::new(channel);
        let mut idle = Vec::with_capacity(IDLE_FETCHES);
        for _ in 0..IDLE_FETCHES {
            let (elapsed, _) = fetch(&mut client, &token, &middle).await;
            idle.push(elapsed);
        }
        report("fetch, idle server", &mut idle);

        // Peak RSS from here on (Linux 4.0+: "5" resets VmHWM to VmRSS).
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let rewritten = snapshot
            .iter()
            .map(|entity| {
                let mut entity = entity.clone();
                entity.low.push(RELOAD_TAG.to_owned());
                entity
            })
            .collect::<Vec<_>>();
        let temporary = file.with_extension("tmp");
        write_file(&temporary, &rewritten);
        drop(rewritten);
        // The server idles until the rename; so does this process, for its
        // frees and writes to settle. Then a few fetches, not counted: the
        // first one after all this took 0.4 s, the server idle.
        tokio::time::sleep(SETTLE).await;
        for _ in 0..WARM_UP_FETCHES {
            fetch(&mut client, &token, &last).await;
        }
        let reload_started = Instant::now();
        std::fs::rename(&temporary, &file).expect("the rename");
        let mut during = Vec::new();
        let mut slow = Vec::new();
        loop {
            let sent = reload_started.elapsed();
            let (elapsed, tags) = fetch(&mut client, &token, &last).await;
            during.push(elapsed);
            if elapsed > SLOW_FETCH {
                slow.push(format!(
                    "{:.0} ms at {:.2} s",
                    elapsed.as_secs_f64() * 1e3,
                    sent.as_secs_f64()
                ));
            }
            if tags.iter().any(|tag| tag == RELOAD_TAG) {
                break;
            }
            assert!(
                reload_started.elapsed() < PATIENCE,
                "the reload did not finish within {PATIENCE:?}"
            );
        }
        let reload = reload_started.elapsed();
        let reload_peak = status_kib(pid, "VmHWM");
        println!(
            "reload of every entity: {:.2} s to the last entity (poll interval included); \
             peak RSS {} MiB{}, RSS after {} MiB",
            reload.as_secs_f64(),
            reload_peak / 1024,
            if reset {
                ""
            } else {
                " (since start: VmHWM reset refused)"
            },
            status_kib(pid, "VmRSS") / 1024
        );
        report("fetch, during the reload", &mut during);
        if !slow.is_empty() {
            println!("  fetches over {SLOW_FETCH:?}: {}", slow.join(", "));
        }
    });
    stop(&mut server);
    drop(snapshot);
    bench_parse(&file);
}

/// The parse alone, in this process: the file read whole then parsed from
/// memory, against the server's streamed parse of the file.
fn bench_parse(file: &Path) {
    let mut in_memory = Vec::with_capacity(PARSE_RUNS);
    let mut streamed = Vec::with_capacity(PARSE_RUNS);
    let mut entities = 0;
    for _ in 0..PARSE_RUNS {
        let started = Instant::now();
        let bytes = std::fs::read(file).expect("the file is readable");
        let parsed = parse_entities_file(&bytes).expect("a valid file");
        in_memory.push(started.elapsed());
        entities = parsed.len();
        drop((parsed, bytes));

        let started = Instant::now();
        let reader = BufReader::with_capacity(
            64 * 1024,
            std::fs::File::open(file).expect("the file is readable"),
        );
        let parsed = read_entities_file(reader).expect("a valid file");
        streamed.push(started.elapsed());
        assert_eq!(parsed.len(), entities);
    }
    let median = |runs: &mut Vec<Duration>| {
        runs.sort_unstable();
        runs[runs.len() / 2].as_secs_f64()
    };
    println!(
        "parse of the reloaded file ({entities} entities), median of {PARSE_RUNS}: \
         read whole + parse_entities_file {:.2} s, read_entities_file (streamed) {:.2} s",
        median(&mut in_memory),
        median(&mut streamed)
    );
}

fn config(entities: usize) -> WorkloadConfig {
    WorkloadConfig { entities, seed: 1 }
}

/// Starts `remote-tagger serve --entities file` and waits for its "serving"
/// line, which it prints once the file is loaded.
fn spawn_server(dir: &Path, file: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--entities"])
        .arg(file)
        .arg("--auth-token-file")
        .arg(dir.join("auth_token"))
        .arg("--cert-file")
        .arg(dir.join("ipc_cert.pem"))
        .env("REMOTE_TAGGER_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the remote-tagger binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let addr = serving_address(stderr);
    (child, addr)
}

/// Reads stderr up to "remote-tagger: serving N entities on ADDR (...",
/// then keeps draining it on a thread so the server never blocks on it.
fn serving_address(stderr: ChildStderr) -> SocketAddr {
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before serving")
            .expect("readable stderr");
        if let Some(rest) = line.strip_prefix("remote-tagger: serving ") {
            let addr = rest
                .split_once(" on ")
                .and_then(|(_, rest)| rest.split_once(' '))
                .map(|(addr, _)| addr)
                .expect("an address in the serving line");
            break addr.parse().expect("a socket address");
        }
        eprintln!("server: {line}");
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("server: {line}");
        }
    });
    addr
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One `TaggerFetchEntity` at High cardinality: its latency and the tags.
async fn fetch(
    client: &mut AgentSecureClient<Channel>,
    token: &str,
    id: &remote_tagger::domain::EntityId,
) -> (Duration, Vec<String>) {
    let mut request = tonic::Request::new(pb::FetchEntityRequest {
        id: Some(id.to_proto()),
        cardinality: pb::TagCardinality::High as i32,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim()).parse().expect("ascii"),
    );
    let started = Instant::now();
    let response = client
        .tagger_fetch_entity(request)
        .await
        .expect("the fetch succeeds");
    (started.elapsed(), response.into_inner().tags)
}

fn write_file(path: &Path, entities: &[Entity]) -> u64 {
    let mut out = BufWriter::new(std::fs::File::create(path).expect("the file is writable"));
    write_entities_file(&mut out, entities).expect("the file is written");
    let file = out.into_inner().expect("the file is written");
    // On disk before the server reads it: no writeback during the figures.
    file.sync_all().expect("the file is synced");
    file.metadata().expect("the file exists").len()
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn report(what: &str, latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let over_100ms = latencies
        .iter()
        .filter(|l| **l > Duration::from_millis(100))
        .count();
    println!(
        "{what}: {} fetches, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {over_100ms} over 100 ms",
        latencies.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}
