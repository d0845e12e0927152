//! Ctrl-C and SIGTERM end every command at once, with the exit code shells
//! and service managers expect: SIGINT 130 (128 + 2), SIGTERM 143 (128 +
//! 15), and `serve` stops cleanly on SIGTERM with 0. Each command is
//! interrupted while it waits on a server that never lets it finish (a
//! plain Datadog server that answers nothing), started with SIGINT ignored
//! as a script's background job is, which is how `list` was seen to run
//! on for tens of seconds after Ctrl-C.

mod common;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::binary::{Running, command, ignoring_sigint};
use common::plain_datadog::{PlainDatadog, Script};

/// The goal: a command interrupted exits within a second.
const PROMPTLY: Duration = Duration::from_secs(1);
/// How long a test waits for a command that does not stop when told to.
const GIVE_UP: Duration = Duration::from_secs(10);

/// Sends `signal` and returns how the command exited; fails unless it did
/// within [`PROMPTLY`].
fn stop_with(running: &mut Running, signal: libc::c_int) -> ExitStatus {
    running.signal(signal);
    let Some((status, took)) = running.exit_within(GIVE_UP) else {
        panic!("still running {GIVE_UP:?} after signal {signal}");
    };
    assert!(
        took <= PROMPTLY,
        "exited {took:?} after signal {signal} ({status})"
    );
    eprintln!("exited {took:?} after signal {signal}: {status}");
    status
}

/// A client command against a server that never answers, started with
/// SIGINT ignored, once the server has seen its request.
fn waiting_client(
    args: &[&str],
    reached: impl Fn(&PlainDatadog) -> bool,
) -> (PlainDatadog, Running) {
    let server = PlainDatadog::start(Script::Silent);
    let home = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    args.extend(server.client_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let running = Running::start(ignoring_sigint(&mut command(home.path(), &args)));
    server.wait_until("the command's request", reached);
    (server, running)
}

fn a_stream_opened(server: &PlainDatadog) -> bool {
    server.streams() >= 1
}

#[test]
fn list_waiting_for_a_sync_exits_at_once_on_ctrl_c() {
    let (_server, mut list) = waiting_client(&["list", "--wait-secs", "60"], a_stream_opened);
    assert_eq!(stop_with(&mut list, libc::SIGINT).code(), Some(130));
}

#[test]
fn list_exits_at_once_on_sigterm_with_143() {
    let (_server, mut list) = waiting_client(&["list", "--wait-secs", "60"], a_stream_opened);
    assert_eq!(stop_with(&mut list, libc::SIGTERM).code(), Some(143));
}

/// Not only when started with SIGINT ignored: the default disposition
/// killed `list` at once but by the signal, with no exit code.
#[test]
fn list_started_normally_exits_with_130_on_ctrl_c() {
    let server = PlainDatadog::start(Script::Silent);
    let home = tempfile::tempdir().unwrap();
    let mut args = vec!["list".to_owned(), "--wait-secs".to_owned(), "60".to_owned()];
    args.extend(server.client_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut list = Running::start(&mut command(home.path(), &args));
    server.wait_until("the stream", a_stream_opened);
    assert_eq!(stop_with(&mut list, libc::SIGINT).code(), Some(130));
}

#[test]
fn watch_exits_at_once_on_ctrl_c_with_130() {
    let (_server, mut watch) = waiting_client(&["watch"], a_stream_opened);
    assert_eq!(stop_with(&mut watch, libc::SIGINT).code(), Some(130));
}

#[test]
fn get_waiting_for_its_answer_exits_at_once_on_ctrl_c() {
    let (_server, mut get) = waiting_client(&["get", "container_id://abc"], |server| {
        server.fetches() >= 1
    });
    assert_eq!(stop_with(&mut get, libc::SIGINT).code(), Some(130));
}

/// An interrupted flare writes no archive: Ctrl-C means "stop", not "write
/// what you have".
#[test]
fn flare_waiting_for_a_sync_exits_at_once_on_ctrl_c_and_writes_nothing() {
    let out = tempfile::tempdir().unwrap();
    let output = out.path().join("flare.tar.gz");
    let (_server, mut flare) = waiting_client(
        &[
            "flare",
            "--wait-secs",
            "60",
            "--output",
            output.to_str().unwrap(),
        ],
        a_stream_opened,
    );
    assert_eq!(stop_with(&mut flare, libc::SIGINT).code(), Some(130));
    assert!(!output.exists());
}

#[test]
fn demo_stops_at_once_on_ctrl_c_with_its_summary_and_removes_its_scratch_directory() {
    let temp = tempfile::tempdir().unwrap();
    let mut demo = command(
        temp.path(),
        &["demo", "--follow", "--workload-entities", "200"],
    );
    demo.env("TMPDIR", temp.path());
    let mut demo = Running::start(ignoring_sigint(&mut demo));
    demo.wait_for_stdout("demo: live changes");
    assert_eq!(stop_with(&mut demo, libc::SIGINT).code(), Some(130));
    let stdout = demo.stdout_after_exit();
    assert!(stdout.contains("demo: done: "), "the summary: {stdout}");
    let left: Vec<_> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `serve` of a workload of `entities`, started with SIGINT ignored, once
/// it listens: the process and its address.
fn serving(home: &std::path::Path, entities: &str, extra: &[&str]) -> (Running, String) {
    let serve: &[&str] = &["serve", "--listen", "127.0.0.1:0", "--source", "workload"];
    let args = [serve, &["--workload-entities", entities], extra].concat();
    let mut serve = Running::start(ignoring_sigint(&mut command(home, &args)));
    let address = serve.wait_for_listen_address();
    (serve, address)
}

/// `serve` with a client streaming from it: the shutdown ends the stream
/// and the process, at once.
fn serving_a_watcher() -> (tempfile::TempDir, Running, Running) {
    let home = tempfile::tempdir().unwrap();
    let (serve, address) = serving(home.path(), "200", &[]);
    let mut watch = Running::start(&mut command(home.path(), &["watch", "--target", &address]));
    watch.wait_for_stderr("synced (snapshot)");
    (home, serve, watch)
}

#[test]
fn serve_shuts_down_at_once_on_ctrl_c_with_130() {
    let (_home, mut serve, _watch) = serving_a_watcher();
    assert_eq!(stop_with(&mut serve, libc::SIGINT).code(), Some(130));
    assert!(serve.stderr_after_exit().contains("shutting down"));
}

/// Stopping a service is no failure: SIGTERM (systemd's, Kubernetes')
/// shuts `serve` down cleanly, with 0.
#[test]
fn serve_shuts_down_cleanly_on_sigterm_with_0() {
    let (_home, mut serve, _watch) = serving_a_watcher();
    assert_eq!(stop_with(&mut serve, libc::SIGTERM).code(), Some(0));
}

/// A client that opened a stream and reads nothing holds its connection
/// open through the graceful shutdown (for the shutdown grace, 5 s): a
/// second Ctrl-C ends `serve` at once.
#[test]
fn a_second_ctrl_c_ends_a_graceful_shutdown_held_up_by_a_stuck_client() {
    use remote_tagger::domain::KNOWN_PREFIXES;
    use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
    use remote_tagger::proto::model::StreamTagsRequest;

    let home = tempfile::tempdir().unwrap();
    let (mut serve, address) = serving(
        home.path(),
        "5000",
        &["--insecure-plaintext", "--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = serve.wait_for_stderr("metrics on http://");
    let metrics = metrics
        .split_once("http://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(addr, _)| addr.to_owned())
        .unwrap();
    let token = std::fs::read_to_string(home.path().join("auth_token")).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _stuck = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            // HTTP/2's smallest windows (hyper's are MiBs): the snapshot
            // overflows them.
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let mut client = AgentSecureClient::new(channel);
        let mut request = tonic::Request::new(StreamTagsRequest {
            prefixes: KNOWN_PREFIXES.iter().map(|p| (*p).to_owned()).collect(),
            streaming_id: "test:stuck".to_owned(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        // One message read, then no more: the rest of the snapshot fills
        // the flow-control window, and the server waits on it.
        let mut stream = client
            .tagger_stream_entities(request)
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        (stream, client)
    });
    // Only a stream whose client stopped taking its snapshot holds the
    // shutdown up: until the flow-control window is full, the server may
    // still end it cleanly.
    wait_for_stalled_snapshot(&metrics);
    serve.signal(libc::SIGINT);
    serve.wait_for_stderr("shutting down");
    assert!(
        serve.exit_within(Duration::from_millis(500)).is_none(),
        "the stuck client held nothing up: the test proves nothing"
    );
    assert_eq!(stop_with(&mut serve, libc::SIGINT).code(), Some(130));
}

/// Polls `serve`'s metrics at `addr` until a snapshot is stalled on its
/// client (`tagger_server_snapshots_stalled` above 0).
fn wait_for_stalled_snapshot(addr: &str) {
    use std::io::{Read, Write};
    let began = Instant::now();
    loop {
        let mut connection = std::net::TcpStream::connect(addr).unwrap();
        connection
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        connection.read_to_string(&mut page).unwrap();
        let stalled = page
            .lines()
            .find_map(|line| line.strip_prefix("tagger_server_snapshots_stalled "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if stalled > 0.0 {
            return;
        }
        assert!(began.elapsed() < PATIENCE, "no snapshot stalled: {page}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
