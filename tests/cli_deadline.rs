//! `--wait-secs` bounds `list` and `flare` whatever the server does. A
//! plain Datadog server marks no end of its snapshot, so against one they
//! take the store once the stream has been quiet for `--settle-ms`; a busy
//! node's stream is never quiet. Before, that wait had no deadline
//! (`--wait-secs 10` ran 91 s). `--timeout-secs` bounds `get` and `origin`
//! likewise against a server that takes the request and never answers
//! (before, they waited until Ctrl-C).

mod common;

use std::time::{Duration, Instant};

use common::binary::{Running, command};
use common::entity;
use common::plain_datadog::{PlainDatadog, Script};

const WAIT_SECS: u64 = 3;
/// A command given `--wait-secs WAIT_SECS` must be done by then, plus this
/// for starting, connecting and printing.
const MARGIN: Duration = Duration::from_secs(2);
/// How long a test waits for a command that overruns its deadline.
const GIVE_UP: Duration = Duration::from_secs(20);

fn churning() -> PlainDatadog {
    PlainDatadog::start(Script::Churning {
        entities: vec![
            entity("container_id://a", &["env:prod"], &[], &[]),
            entity("container_id://b", &["env:dev"], &[], &[]),
        ],
        // Well within --settle-ms: the stream never goes quiet.
        every: Duration::from_millis(100),
    })
}

/// Runs `args` against `server` and returns it, exited, with how long it
/// ran; fails if it overran `--wait-secs` by more than [`MARGIN`].
fn run_within_deadline(server: &PlainDatadog, args: &[&str]) -> (Running, Duration) {
    let home = tempfile::tempdir().unwrap();
    let wait = WAIT_SECS.to_string();
    let mut args: Vec<&str> = [args, &["--wait-secs", &wait, "--settle-ms", "500"]].concat();
    let client_args = server.client_args();
    args.extend(client_args.iter().map(String::as_str));
    let started = Instant::now();
    let mut running = Running::start(&mut command(home.path(), &args));
    let Some((status, _)) = running.exit_within(GIVE_UP) else {
        panic!(
            "{args:?} still running after {GIVE_UP:?} ({} streams, still churning)",
            server.streams()
        );
    };
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(WAIT_SECS) + MARGIN,
        "{args:?} took {took:?} with --wait-secs {WAIT_SECS}"
    );
    assert!(
        status.success(),
        "{status}: {}",
        running.stderr_after_exit()
    );
    (running, took)
}

fn the_one_warning(stderr: &str) -> &str {
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let warning = warnings[0];
    assert!(
        warning.contains("--wait-secs 3") && warning.contains("--settle-ms 500"),
        "{warning}"
    );
    warning
}

/// At the deadline `list` prints the mirror as it is, with one warning line.
#[test]
fn list_against_a_stream_that_never_goes_quiet_prints_the_mirror_at_its_deadline() {
    let server = churning();
    let (mut list, took) = run_within_deadline(&server, &["list"]);
    eprintln!("list took {took:?}");
    let stdout = list.stdout_after_exit();
    assert!(
        stdout.contains("container_id://a") && stdout.contains("container_id://b"),
        "{stdout}"
    );
    assert!(stdout.ends_with("2 entities"), "{stdout}");
    let stderr = list.stderr_after_exit();
    assert!(the_one_warning(&stderr).contains("2 entities"), "{stderr}");
    assert_eq!(server.streams(), 1);
}

/// `flare` likewise writes its archive at the deadline, with the warning.
#[test]
fn flare_against_a_stream_that_never_goes_quiet_writes_its_archive_at_its_deadline() {
    let server = churning();
    let out = tempfile::tempdir().unwrap();
    let output = out.path().join("flare.tar.gz");
    let (mut flare, took) =
        run_within_deadline(&server, &["flare", "--output", output.to_str().unwrap()]);
    eprintln!("flare took {took:?}");
    the_one_warning(&flare.stderr_after_exit());
    assert!(output.exists());
}

/// A plain server whose stream goes quiet: the store is taken after
/// `--settle-ms`, long before the deadline, with no warning.
#[test]
fn list_against_a_plain_server_that_goes_quiet_takes_the_store_without_a_warning() {
    let server = PlainDatadog::start(Script::Serving {
        entities: vec![entity("container_id://a", &["env:prod"], &[], &[])],
    });
    let (mut list, _) = run_within_deadline(&server, &["list"]);
    assert!(list.stdout_after_exit().ends_with("1 entities"));
    let stderr = list.stderr_after_exit();
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// `get` and `origin` against a server that never answers fail at their
/// `--timeout-secs` with one line naming it.
#[test]
fn get_and_origin_against_a_server_that_never_answers_fail_at_their_timeout() {
    let server = PlainDatadog::start(Script::Silent);
    let timeout = WAIT_SECS.to_string();
    for request in [
        &["get", "container_id://abc"][..],
        &["origin", "--pid", "1"][..],
    ] {
        let home = tempfile::tempdir().unwrap();
        let mut args: Vec<&str> = [request, &["--timeout-secs", &timeout]].concat();
        let client_args = server.client_args();
        args.extend(client_args.iter().map(String::as_str));
        let started = Instant::now();
        let mut running = Running::start(&mut command(home.path(), &args));
        let Some((status, _)) = running.exit_within(GIVE_UP) else {
            panic!("{args:?} still running after {GIVE_UP:?}");
        };
        let took = started.elapsed();
        assert!(
            took <= Duration::from_secs(WAIT_SECS) + MARGIN,
            "{args:?} took {took:?} with --timeout-secs {WAIT_SECS}"
        );
        let stderr = running.stderr_after_exit();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "no answer within {WAIT_SECS}s (see --timeout-secs)"
            )),
            "{stderr}"
        );
    }
}
