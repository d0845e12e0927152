//! The wire rows of issue 20 (goals 3 and 4): initial syncs over TLS on
//! loopback, every pairing of the two servers and clients, against prost's
//! decode of the bytes our server sends; and the yardstick's 100-client
//! fan-out against both servers.
//!
//! The servers are processes, as deployed: our `remote-tagger serve
//! --entities` on a JSON file of the entities both sides hold, and
//! `go-tagger serve --entities 100000`, which generates the same ones.
//! Our client runs in this process, Go's in `go-tagger sync`; both time
//! from the stream call until the mirror holds every entity (Go's
//! `--want`), over several fresh clients in one process, the median.
//!
//! The fan-out needs the yardstick's clients (100 in one Go process), so it
//! runs only with the yardstick, both sides from [`Row::go`]: `go-tagger
//! fanout` against `go-tagger serve --churn 2000` (20 MODIFIED events every
//! 10 ms), and against our server relaying that same Go server (`serve
//! --upstream`), so both serve the same entities and the same change
//! batches, with the yardstick's delivery stamps. Evictions are counted in
//! each server's log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use remote_tagger::client::{ClientConfig, RemoteTagger, TlsSettings};
use remote_tagger::domain::Entity;
use remote_tagger::proto::model::StreamTagsResponse;
use std::hint::black_box;

use crate::Row;
use crate::snapshot_responses::snapshot_responses;
use crate::yardstick::{
    ENTITIES, Entities, Figures, GoFigures, Goal, Line, Ratio, Round, SEED, Yardstick, median,
    millis,
};

/// Our binary, the server of our side.
const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");
/// Fresh clients per pairing and round; the median is kept.
const SYNC_RUNS: usize = 5;
/// prost decodes of the snapshot per round; the median is kept.
const DECODE_RUNS: usize = 5;
/// How long a server gets to start, and a client to sync.
const PATIENCE: Duration = Duration::from_secs(120);
/// The fan-out's churn, as the issue measures it: 2,000 events/s, in the
/// yardstick's batches of 20 every 10 ms.
const FANOUT_CHURN: &str = "2000";
/// The fan-out's clients unless `VS_GO_FANOUT_CLIENTS` says otherwise.
const FANOUT_CLIENTS: usize = 100;
/// The measurement window once every client is synced.
const FANOUT_WINDOW: &str = "30s";
/// The yardstick's own limit on the initial syncs (its default).
const FANOUT_SYNC_TIMEOUT: &str = "10m";

/// Where this row's files go: the entities file, certificates, tokens, logs.
fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vs_go_wire");
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| {
        panic!("cannot create {}: {error}", dir.display());
    });
    dir
}

// ---------------------------------------------------------------- servers

/// A server process, killed when dropped, and the address it serves on.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// Starts `command` with its output to `log`, and waits for the line
    /// holding `ready`, whose address follows the first ` on `.
    fn start(mut command: Command, log: PathBuf, ready: &str) -> Result<Self, String> {
        let file = std::fs::File::create(&log)
            .map_err(|error| format!("cannot create {}: {error}", log.display()))?;
        let stderr = file.try_clone().map_err(|error| error.to_string())?;
        let shown = format!("{command:?}");
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot run {shown}: {error}"))?;
        let mut server = Self {
            child,
            addr: String::new(),
            log,
        };
        let began = Instant::now();
        while began.elapsed() < PATIENCE {
            if let Some(line) = server
                .log_lines()
                .into_iter()
                .find(|line| line.contains(ready))
            {
                let addr = line
                    .split_once(" on ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .ok_or_else(|| format!("no address in {line:?}"))?;
                server.addr = addr.to_owned();
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{shown} exited ({status}) before it served; see {}",
                    server.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{shown} did not serve within {PATIENCE:?}"))
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::File::open(&self.log)
            .map(|file| BufReader::new(file).lines().map_while(Result::ok).collect())
            .unwrap_or_default()
    }

    /// Lines of the log holding `text`.
    fn count_in_log(&self, text: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|line| line.contains(text))
            .count()
    }

    /// Pid, for the yardstick's `--server-pid` (its CPU in the window).
    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files a client of a server needs: the certificate it verifies and
/// the token it sends.
#[derive(Clone)]
struct Credentials {
    cert: PathBuf,
    token: PathBuf,
}

/// Our server on `entities_file`; it writes its certificate and token
/// (Agent-shaped: a self-signed CA) where `credentials` say.
fn our_server(
    entities_file: &Path,
    credentials: &Credentials,
    log: &str,
) -> Result<Server, String> {
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--entities"])
        .arg(entities_file)
        .arg("--cert-file")
        .arg(&credentials.cert)
        .arg("--auth-token-file")
        .arg(&credentials.token);
    Server::start(command, scratch().join(log), "entities on ")
}

/// Our server relaying `upstream` (a Go server).
fn our_relay(upstream: &Server, go: &Credentials, ours: &Credentials) -> Result<Server, String> {
    let mut command = Command::new(BINARY);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.addr,
        ])
        .arg("--upstream-ca-file")
        .arg(&go.cert)
        .arg("--upstream-auth-token-file")
        .arg(&go.token)
        .arg("--upstream-no-client-cert")
        .arg("--cert-file")
        .arg(&ours.cert)
        .arg("--auth-token-file")
        .arg(&ours.token);
    Server::start(command, scratch().join("ours-relay.log"), "entities on ")
}

/// A Go server of its 100k entities, churning `churn` events/s.
fn go_server(go: &Yardstick, credentials: &Credentials, churn: &str) -> Result<Server, String> {
    let key = credentials.cert.with_file_name("key.pem");
    let mut command = go.command(&["serve", "--listen", "127.0.0.1:0"]);
    command
        .args(["--entities", &ENTITIES.to_string(), "--churn", churn])
        .arg("--cert")
        .arg(&credentials.cert)
        .arg("--key")
        .arg(key)
        .arg("--token")
        .arg(&credentials.token);
    let log = scratch().join(format!("go-serve-churn-{churn}.log"));
    Server::start(command, log, "serving on ")
}

/// The Go server's certificate, key and token, made once per run.
fn go_credentials(go: &Yardstick) -> Result<Credentials, String> {
    let dir = scratch().join("go-certs");
    if !dir.join("cert.pem").is_file() {
        let out = dir.to_str().expect("a UTF-8 target directory");
        go.run(&["gencert", "--out", out])?;
    }
    Ok(Credentials {
        cert: dir.join("cert.pem"),
        token: dir.join("token"),
    })
}

fn our_credentials() -> Credentials {
    let dir = scratch();
    Credentials {
        cert: dir.join("ours-ipc_cert.pem"),
        token: dir.join("ours-auth_token"),
    }
}

/// `entities` as our `--entities` JSON, in their order.
fn write_entities_file(entities: &[Entity], path: &Path) {
    let list: Vec<serde_json::Value> = entities
        .iter()
        .map(|entity| {
            serde_json::json!({
                "id": entity.id.to_string(),
                "low": entity.low,
                "orchestrator": entity.orchestrator,
                "high": entity.high,
                "standard": entity.standard,
            })
        })
        .collect();
    let text = serde_json::to_vec(&list).expect("entities serialize");
    std::fs::write(path, text).unwrap_or_else(|error| {
        panic!("cannot write {}: {error}", path.display());
    });
}

// ---------------------------------------------------------------- clients

/// Fresh clients of ours synced from `addr` one after the other; each
/// one's time from start until its mirror holds every entity, in ms.
fn our_syncs(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    credentials: &Credentials,
    runs: usize,
) -> Result<Vec<f64>, String> {
    runtime.block_on(async {
        let mut times = Vec::new();
        for _ in 0..runs {
            let config = ClientConfig::new(
                addr,
                &credentials.token,
                TlsSettings::verify(&credentials.cert),
            );
            let started = Instant::now();
            let tagger = RemoteTagger::start(config).map_err(|error| error.to_string())?;
            let mirror = tagger.mirror();
            // A Datadog server marks no end of its snapshot: the mirror is
            // full when it holds every entity, as the yardstick's `--want`.
            while mirror.len() < ENTITIES {
                if started.elapsed() > PATIENCE {
                    tagger.stop().await;
                    return Err(format!("our client did not sync from {addr}"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(started.elapsed().as_secs_f64() * 1e3);
            tagger.stop().await;
        }
        Ok(times)
    })
}

/// `go-tagger sync` of `addr`: the median of `runs` fresh clients, in ms.
fn go_syncs(
    round: &mut Round<'_>,
    go: &Yardstick,
    addr: &str,
    credentials: &Credentials,
) -> Result<f64, String> {
    let (ca, token) = (path_arg(&credentials.cert), path_arg(&credentials.token));
    let (want, runs) = (ENTITIES.to_string(), SYNC_RUNS.to_string());
    let args = [
        "sync", "--target", addr, "--ca", &ca, "--token", &token, "--want", &want, "--runs", &runs,
    ];
    round.go_run(go, &args)?.get(".sync_ms_median")
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 target directory").to_owned()
}

fn median_of(mut values: Vec<f64>) -> f64 {
    median(&mut values)
}

// ---------------------------------------------------------------- sync

/// Goal 3: initial syncs of the 100k entities, every pairing, and the
/// floor: prost's decode of the responses our server sends.
pub struct SyncRow {
    runtime: tokio::runtime::Runtime,
    /// Our server's snapshot, encoded as it sends it.
    responses: Vec<Vec<u8>>,
    ours: Server,
    credentials: Credentials,
    /// The Go server and its credentials, started on first use.
    go: Option<(Server, Credentials)>,
}

impl SyncRow {
    /// Writes `entities` as our server's file and starts it.
    pub fn new(entities: &Entities) -> Self {
        let file = scratch().join("entities.json");
        write_entities_file(&entities.list, &file);
        let credentials = our_credentials();
        let ours = our_server(&file, &credentials, "ours-serve.log")
            .unwrap_or_else(|why| panic!("our server: {why}"));
        Self {
            runtime: tokio::runtime::Runtime::new().expect("a tokio runtime"),
            responses: snapshot_responses(entities.list.clone(), SEED),
            ours,
            credentials,
            go: None,
        }
    }

    fn decode_ms(&self) -> f64 {
        let mut times: Vec<f64> = (0..DECODE_RUNS)
            .map(|_| {
                let started = Instant::now();
                let decoded: Vec<StreamTagsResponse> = self
                    .responses
                    .iter()
                    .map(|bytes| {
                        StreamTagsResponse::decode(black_box(bytes.as_slice())).expect("decodes")
                    })
                    .collect();
                let elapsed = started.elapsed();
                // Freeing is not decoding.
                drop(black_box(decoded));
                elapsed.as_secs_f64() * 1e3
            })
            .collect();
        median(&mut times)
    }
}

impl Row for SyncRow {
    fn ours(&mut self) -> Figures {
        let syncs = our_syncs(&self.runtime, &self.ours.addr, &self.credentials, SYNC_RUNS)
            .unwrap_or_else(|why| panic!("{why}"));
        Figures::from([
            ("ours_ours_ms", median_of(syncs)),
            ("decode_ms", self.decode_ms()),
            ("responses", self.responses.len() as f64),
        ])
    }

    fn go(&mut self, round: &mut Round<'_>, go: &Yardstick) -> Result<Figures, String> {
        if self.go.is_none() {
            let credentials = go_credentials(go)?;
            self.go = Some((go_server(go, &credentials, "0")?, credentials));
        }
        let (server, credentials) = self.go.as_ref().expect("started above");
        let go_go = go_syncs(round, go, &server.addr, credentials)?;
        let go_ours = median_of(our_syncs(
            &self.runtime,
            &server.addr,
            credentials,
            SYNC_RUNS,
        )?);
        let ours_go = go_syncs(round, go, &self.ours.addr, &self.credentials)?;
        Ok(Figures::from([
            ("go_go_ms", go_go),
            ("go_ours_ms", go_ours),
            ("ours_go_ms", ours_go),
        ]))
    }

    fn lines(&self, ours: &Figures, go: Option<&Figures>) -> Vec<Line> {
        let go_ms = |key| go.map(|go| millis(go[key]));
        // A pairing with one Go side, against Go's own pairing.
        let against_go = |measure: &str, key: &'static str, goal| Line {
            measure: measure.to_owned(),
            go: go_ms("go_go_ms"),
            ours: go.map_or("-".to_owned(), |go| millis(go[key])),
            ratio: go.map(|go| Ratio {
                of: "ours/Go",
                value: go[key] / go["go_go_ms"],
                goal,
            }),
        };
        vec![
            Line {
                measure: format!(
                    "prost decode of our snapshot ({} responses)",
                    ours["responses"]
                ),
                go: None,
                ours: millis(ours["decode_ms"]),
                ratio: None,
            },
            Line {
                measure: "sync 100k, our server x our client".to_owned(),
                go: None,
                ours: millis(ours["ours_ours_ms"]),
                ratio: Some(Ratio {
                    of: "ours/decode",
                    value: ours["ours_ours_ms"] / ours["decode_ms"],
                    goal: Some(Goal::AtMost(1.3)),
                }),
            },
            against_go(
                "sync 100k, Go server: Go client | our client",
                "go_ours_ms",
                Some(Goal::AtMost(0.5)),
            ),
            against_go(
                "sync 100k, Go client: Go server | our server",
                "ours_go_ms",
                None,
            ),
        ]
    }
}

// ---------------------------------------------------------------- fan-out

/// Goal 4: the yardstick's fan-out of live churn to 100 Go clients in one
/// process, against the Go server and against ours relaying it.
pub struct FanoutRow {
    clients: usize,
    runtime: tokio::runtime::Runtime,
    /// Rounds measured so far: the side measured first alternates.
    rounds: usize,
}

impl FanoutRow {
    /// Reads `VS_GO_FANOUT_CLIENTS`; the entities are the Go server's own.
    pub fn new(_entities: &Entities) -> Self {
        let clients = std::env::var("VS_GO_FANOUT_CLIENTS")
            .ok()
            .filter(|value| !value.is_empty())
            .map_or(FANOUT_CLIENTS, |value| {
                value.parse().unwrap_or_else(|_| {
                    panic!("VS_GO_FANOUT_CLIENTS={value}: give a number of clients")
                })
            });
        Self {
            clients,
            runtime: tokio::runtime::Runtime::new().expect("a tokio runtime"),
            rounds: 0,
        }
    }

    /// One fan-out against the Go server, or against our relay of it: the
    /// yardstick's figures, the clients synced, and the evictions each
    /// server logged.
    fn run(&self, go: &Yardstick, relay: bool) -> Result<Figures, String> {
        let go_credentials = go_credentials(go)?;
        let upstream = go_server(go, &go_credentials, FANOUT_CHURN)?;
        let ours_credentials = our_credentials();
        let (relay, target, credentials) = if relay {
            let relay = our_relay(&upstream, &go_credentials, &ours_credentials)?;
            // Every client below finds the whole store: one sync of ours
            // first proves the relay holds it.
            our_syncs(&self.runtime, &relay.addr, &ours_credentials, 1)?;
            let target = relay.addr.clone();
            (Some(relay), target, ours_credentials)
        } else {
            (None, upstream.addr.clone(), go_credentials)
        };
        let server_pid = relay.as_ref().map_or_else(|| upstream.pid(), Server::pid);
        let (ca, token) = (path_arg(&credentials.cert), path_arg(&credentials.token));
        let (clients, want) = (self.clients.to_string(), ENTITIES.to_string());
        let args = [
            "fanout",
            "--target",
            &target,
            "--ca",
            &ca,
            "--token",
            &token,
            "--clients",
            &clients,
            "--duration",
            FANOUT_WINDOW,
            "--want",
            &want,
            "--sync-timeout",
            FANOUT_SYNC_TIMEOUT,
            "--server-pid",
            &server_pid,
        ];
        let mut command = go.command(&args);
        // The yardstick's bench.sh: one heap for 100 mirrors.
        command.env("GOMEMLIMIT", "18GiB");
        let outcome = crate::yardstick::output_of(&mut command);
        let go_evictions = upstream.count_in_log("channel full");
        let ours_evictions = relay.as_ref().map_or(0, |relay| {
            relay.count_in_log("evicting a tagger subscriber")
        });
        let mut figures = Figures::from([
            ("evictions", (go_evictions + ours_evictions) as f64),
            ("upstream_evictions", go_evictions as f64),
        ]);
        match outcome {
            Ok(output) => {
                let parsed = GoFigures::parse(&output);
                figures.insert("synced", self.clients as f64);
                figures.insert("all_synced_ms", parsed.get("fanout.all_synced_ms")?);
                figures.insert("p50_ms", parsed.get("latency_ms.p50").unwrap_or(f64::NAN));
                figures.insert("p99_ms", parsed.get("latency_ms.p99").unwrap_or(f64::NAN));
            }
            // "only N of C clients synced after 10m0s"
            Err(why) => {
                let synced = why
                    .split_once("only ")
                    .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
                    .ok_or(why)?;
                figures.insert("synced", synced);
                for key in ["all_synced_ms", "p50_ms", "p99_ms"] {
                    figures.insert(key, f64::NAN);
                }
            }
        }
        Ok(figures)
    }
}

impl Row for FanoutRow {
    fn ours(&mut self) -> Figures {
        // Both sides need the yardstick's clients: see `go`.
        Figures::new()
    }

    fn go(&mut self, _round: &mut Round<'_>, go: &Yardstick) -> Result<Figures, String> {
        self.rounds += 1;
        let ours_first = self.rounds % 2 == 1;
        let mut sides = Vec::new();
        for relay in [ours_first, !ours_first] {
            let figures = self.run(go, relay)?;
            sides.push((relay, figures));
        }
        let mut all = Figures::new();
        for (relay, figures) in sides {
            let side = if relay { "ours" } else { "go" };
            for (key, value) in figures {
                all.insert(side_key(side, key), value);
            }
        }
        Ok(all)
    }

    fn lines(&self, _ours: &Figures, go: Option<&Figures>) -> Vec<Line> {
        let clients = self.clients;
        let none = Figures::new();
        let measured = go.is_some();
        let figures = go.unwrap_or(&none);
        let figure = |side: &str, key: &str| {
            figures
                .get(side_key(side, key))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let shown = |side: &str, key: &str| measured.then(|| format!("{}", figure(side, key)));
        let latency = |side: &str| {
            measured.then(|| {
                format!(
                    "{:.0} | {:.0} ms",
                    figure(side, "p50_ms"),
                    figure(side, "p99_ms")
                )
            })
        };
        let or_dash = |text: Option<String>| text.unwrap_or_else(|| "-".to_owned());
        let needs = if measured {
            ""
        } else {
            " (needs the yardstick's clients)"
        };
        let counted = |measure: String, key: &str, of: &'static str, value: f64| Line {
            measure,
            go: shown("go", key),
            ours: or_dash(shown("ours", key)),
            ratio: measured.then_some(Ratio {
                of,
                value,
                goal: Some(Goal::AtMost(0.0)),
            }),
        };
        vec![
            // Both held to zero: ours no more evictions than Go's, and
            // none of ours left unsynced.
            counted(
                format!("fan-out to {clients} Go clients, 2k/s: evictions{needs}"),
                "evictions",
                "ours-Go",
                figure("ours", "evictions") - figure("go", "evictions"),
            ),
            counted(
                format!("fan-out: clients synced of {clients}"),
                "synced",
                "unsynced",
                clients as f64 - figure("ours", "synced"),
            ),
            Line {
                measure: "fan-out: all synced after".to_owned(),
                go: measured.then(|| millis(figure("go", "all_synced_ms"))),
                ours: or_dash(measured.then(|| millis(figure("ours", "all_synced_ms")))),
                ratio: None,
            },
            Line {
                measure: "fan-out: delivery latency p50 | p99".to_owned(),
                go: latency("go"),
                ours: or_dash(latency("ours")),
                ratio: None,
            },
            Line {
                measure: "fan-out: evictions of our relay by its Go upstream".to_owned(),
                go: None,
                ours: or_dash(shown("ours", "upstream_evictions")),
                ratio: None,
            },
        ]
    }
}

/// `side.key`, the name of a figure of one side in the row's one map of
/// figures; leaked, since figures are named by `&'static str` (a few
/// bytes per figure and round, in a bench).
fn side_key(side: &str, key: &str) -> &'static str {
    Box::leak(format!("{side}.{key}").into_boxed_str())
}
