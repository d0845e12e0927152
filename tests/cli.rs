//! The `remote-tagger` binary end to end: `serve` in one process, `list
//! --json` and `get` in others, as a user runs them in two terminals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");

/// `serve` running in the background; killed on drop.
struct Serving {
    child: Child,
    address: String,
}

impl Serving {
    /// Starts `serve` on an ephemeral port and reads the address it reports.
    fn start(home: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("REMOTE_TAGGER_HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stderr = child.stderr.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let address = loop {
            let line = received
                .recv_timeout(Duration::from_secs(30))
                .expect("serve reports where it listens");
            if let Some((_, rest)) = line.split_once(" entities on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        Self { child, address }
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
