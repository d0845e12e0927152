//! The `remote-tagger` binary end to end: `serve` in one process, `list
//! --json` and `get` in others, as a user runs them in two terminals.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");

/// `serve` running in the background; killed on drop.
struct Serving {
    child: Child,
    address: String,
    /// stderr lines read so far, and the rest as they come.
    seen: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Serving {
    /// Starts `serve` on an ephemeral port and reads the address it reports.
    fn start(home: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(home, extra, &[])
    }

    fn start_with_env(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("REMOTE_TAGGER_HOME", home)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let mut serving = Self {
            child,
            address: String::new(),
            seen: Vec::new(),
            lines,
        };
        let line = serving.wait_for_line(" entities on ");
        let (_, rest) = line.split_once(" entities on ").unwrap();
        serving.address = rest.split_whitespace().next().unwrap().to_owned();
        serving
    }

    /// Reads stderr up to the first line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("serve printed no line with {needle:?}"));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Stops the server and returns all it printed on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut all = std::mem::take(&mut self.seen);
        all.extend(self.lines.try_iter());
        all.join("\n")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .args(args)
        .env("REMOTE_TAGGER_HOME", home)
        .output()
        .expect("the binary runs")
}

#[test]
fn serve_then_list_json_with_default_token_and_certificate() {
    let home = tempfile::tempdir().unwrap();
    let entities = home.path().join("entities.json");
    std::fs::write(
        &entities,
        r#"[{"id": "container_id://abc", "low": ["env:prod"], "orchestrator": ["pod_name:web-1"], "high": ["container_id:abc"]},
            {"id": "process://42", "low": ["service:db"]}]"#,
    )
    .unwrap();
    let serving = Serving::start(home.path(), &["--entities", entities.to_str().unwrap()]);

    let listed = client(
        home.path(),
        &["list", "--json", "--target", &serving.address],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"entities": {
            "container_id://abc": {"tags": {"remote": ["env:prod", "pod_name:web-1", "container_id:abc"]}},
            "process://42": {"tags": {"remote": ["service:db"]}},
        }})
    );

    let low = client(
        home.path(),
        &[
            "list",
            "--json",
            "--target",
            &serving.address,
            "--cardinality",
            "low",
            "--prefix",
            "container_id",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&low.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"entities": {"container_id://abc": {"tags": {"remote": ["env:prod"]}}}})
    );

    let got = client(
        home.path(),
        &[
            "get",
            "container_id://abc",
            "--target",
            &serving.address,
            "--cardinality",
            "orchestrator",
        ],
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "env:prod\npod_name:web-1\n"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let missing_ca = client(home.path(), &["list", "--wait-secs", "1"]);
    assert!(!missing_ca.status.success());
    let stderr = String::from_utf8_lossy(&missing_ca.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ipc_cert.pem") && stderr.contains("--ca-file"),
        "{stderr}"
    );

    let bad_id = client(home.path(), &["get", "not-an-id"]);
    let stderr = String::from_utf8_lossy(&bad_id.stderr);
    assert!(
        !bad_id.status.success() && stderr.contains("prefix://uid"),
        "{stderr}"
    );

    let bad_cardinality = client(home.path(), &["list", "--cardinality", "none"]);
    let stderr = String::from_utf8_lossy(&bad_cardinality.stderr);
    assert!(
        !bad_cardinality.status.success() && stderr.contains("invalid cardinality"),
        "{stderr}"
    );
}

/// `GET path` over HTTP/1.0, the whole answer (status line included).
fn http_get(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_token_appears_in_no_log_metric_or_error_even_at_trace_level() {
    let home = tempfile::tempdir().unwrap();
    let serve_log = home.path().join("serve.log");
    let client_log = home.path().join("client.log");
    let trace = [("RUST_LOG", "trace")];
    let mut serving = Serving::start_with_env(
        home.path(),
        &[
            "--log-file",
            serve_log.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--workload-entities",
            "20",
        ],
        &trace,
    );
    let metrics_line = serving.wait_for_line("metrics on http://");
    let metrics_address = metrics_line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .to_owned();

    let listed = Command::new(BINARY)
        .args(["list", "--json", "--target", &serving.address])
        .args([
            "--log-format",
            "json",
            "--log-file",
            client_log.to_str().unwrap(),
        ])
        .env("REMOTE_TAGGER_HOME", home.path())
        .envs(trace)
        .output()
        .unwrap();
    let listed_stderr = String::from_utf8_lossy(&listed.stderr).into_owned();
    assert!(listed.status.success(), "{listed_stderr}");

    // A client with the wrong token: refused, and its own token not quoted.
    let wrong_token = "f".repeat(64);
    let wrong_token_file = home.path().join("wrong_token");
    std::fs::write(&wrong_token_file, &wrong_token).unwrap();
    let refused = Command::new(BINARY)
        .args(["list", "--target", &serving.address, "--wait-secs", "2"])
        .args(["--auth-token-file", wrong_token_file.to_str().unwrap()])
        .env("REMOTE_TAGGER_HOME", home.path())
        .envs(trace)
        .output()
        .unwrap();
    let refused_stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(
        refused_stderr.contains("Unauthenticated"),
        "{refused_stderr}"
    );

    let scrape = http_get(&metrics_address, "/metrics");
    assert!(
        scrape.contains("tagger_server_auth_failures_total"),
        "{scrape}"
    );
    let serve_stderr = serving.stop();

    let serve_log = std::fs::read_to_string(&serve_log).unwrap();
    let client_log = std::fs::read_to_string(&client_log).unwrap();
    assert!(serve_log.contains("tagger server ready"), "{serve_log}");
    assert!(serve_log.contains("TRACE"), "trace logging was on");
    for line in client_log.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(record["level"].is_string(), "{line}");
    }
    assert!(!client_log.is_empty());

    let token = std::fs::read_to_string(home.path().join("auth_token")).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);
    for (name, text) in [
        ("serve stderr", &serve_stderr),
        ("serve log file", &serve_log),
        (
            "list stdout",
            &String::from_utf8_lossy(&listed.stdout).into_owned(),
        ),
        ("list stderr", &listed_stderr),
        ("list log file", &client_log),
        ("refused list stderr", &refused_stderr),
        ("metrics", &scrape),
    ] {
        assert!(!text.contains(token), "the token is in the {name}");
        assert!(
            !text.contains(&wrong_token),
            "the wrong token is in the {name}"
        );
    }
}

/// `list --json` until it prints `expected` (a relay fills its store after
/// it starts serving), or the last answer after 30 s.
fn list_json_until(home: &Path, args: &[&str], expected: &serde_json::Value) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client(home, &[&["list", "--json"], args].concat());
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        if json == *expected || std::time::Instant::now() > deadline {
            return json;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// wire-spec section 1: entities of a newer Agent's prefixes, and of one no
/// table has yet, go from the entities file through `serve` and a relay to
/// `list --json`. The default subscription (the whole table, sent
/// explicitly) never gets the invented prefix; `--prefix` names it.
#[test]
fn newer_agent_prefixes_round_trip_from_the_entities_file_through_a_relay_to_list_json() {
    let home = tempfile::tempdir().unwrap();
    let entities = home.path().join("entities.json");
    std::fs::write(
        &entities,
        r#"[{"id": "kubernetes_node://node-1", "low": ["kube_node:node-1"]},
            {"id": "kueue_workload://ns/job", "low": ["kueue_queue:q"]},
            {"id": "crd://datadogmetrics.datadoghq.com", "low": ["crd_kind:DatadogMetric"]},
            {"id": "kubernetes_resource_claim://ns/gpu", "low": ["claim:gpu"]},
            {"id": "kubernetes_future_thing://ns/a", "low": ["future:a"], "high": ["uid:a"]}]"#,
    )
    .unwrap();
    let origin = Serving::start(home.path(), &["--entities", entities.to_str().unwrap()]);
    let relay = Serving::start(
        home.path(),
        &[
            "--upstream",
            &origin.address,
            "--upstream-extra-prefix",
            "kubernetes_future_thing",
        ],
    );
    let tags = |tags: &[&str]| serde_json::json!({"tags": {"remote": tags}});
    let table = serde_json::json!({"entities": {
        "crd://datadogmetrics.datadoghq.com": tags(&["crd_kind:DatadogMetric"]),
        "kubernetes_node://node-1": tags(&["kube_node:node-1"]),
        "kubernetes_resource_claim://ns/gpu": tags(&["claim:gpu"]),
        "kueue_workload://ns/job": tags(&["kueue_queue:q"]),
    }});
    let named = serde_json::json!({"entities": {
        "kubernetes_future_thing://ns/a": tags(&["future:a", "uid:a"]),
        "kubernetes_node://node-1": tags(&["kube_node:node-1"]),
    }});
    for server in [&origin, &relay] {
        let target = ["--target", server.address.as_str()];
        assert_eq!(list_json_until(home.path(), &target, &table), table);
        let with_prefixes = [
            &target[..],
            &[
                "--prefix",
                "kubernetes_future_thing",
                "--prefix",
                "kubernetes_node",
            ],
        ]
        .concat();
        assert_eq!(list_json_until(home.path(), &with_prefixes, &named), named);
        let got = client(
            home.path(),
            &[&["get", "kubernetes_future_thing://ns/a"], &target[..]].concat(),
        );
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&got.stdout), "future:a\nuid:a\n");
    }
}

#[cfg(unix)]
#[test]
fn a_new_log_file_is_readable_by_its_owner_only_and_an_existing_one_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = tempfile::tempdir().unwrap();
    let new_log = home.path().join("new.log");
    let existing_log = home.path().join("existing.log");
    std::fs::write(&existing_log, "an earlier run's line\n").unwrap();
    std::fs::set_permissions(&existing_log, std::fs::Permissions::from_mode(0o644)).unwrap();
    for log in [&new_log, &existing_log] {
        // No certificate in this home: `list` fails at once, after the log
        // file is opened.
        let listed = Command::new(BINARY)
            .args(["list", "--log-file", log.to_str().unwrap()])
            .env("REMOTE_TAGGER_HOME", home.path())
            .output()
            .unwrap();
        assert!(!listed.status.success());
    }
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&new_log), 0o600);
    assert_eq!(mode(&existing_log), 0o644);
}
