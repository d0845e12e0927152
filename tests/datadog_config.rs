//! `list`, `get` and `watch --datadog-config`: the binary finds a server
//! from nothing but a folder laid out like `/etc/datadog-agent` (its
//! `datadog.yaml`, `auth_token` and `ipc_cert.pem`) and the `DD_*`
//! variables, over real sockets.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use common::{PATIENCE, TestServer, entity};
use remote_tagger::domain::EntityEvent;

const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");

/// The variables the Agent's configuration reads; cleared so the test's own
/// environment cannot leak into a run.
const AGENT_VARIABLES: [&str; 5] = [
    "DD_IPC_ADDRESS",
    "DD_CMD_HOST",
    "DD_CMD_PORT",
    "DD_AUTH_TOKEN_FILE_PATH",
    "DD_IPC_CERT_FILE_PATH",
];

/// A server holding two entities.
async fn agent_like_server() -> TestServer {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([
        EntityEvent::Added(entity(
            "container_id://abc",
            &["env:prod"],
            &["pod_name:web-1"],
            &["container_id:abc"],
        )),
        EntityEvent::Added(entity("process://42", &["service:db"], &[], &[])),
    ]);
    server
}

/// `dir` laid out as an Agent's configuration folder for `server`:
/// `datadog.yaml` holding `yaml`, and the server's token and certificate
/// under the Agent's file names.
fn agent_folder(dir: &Path, server: &TestServer, yaml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    copy_credentials(server, dir);
    let config = dir.join("datadog.yaml");
    std::fs::write(&config, yaml).unwrap();
    config
}

fn copy_credentials(server: &TestServer, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(server.dir.path().join("auth_token"), dir.join("auth_token")).unwrap();
    std::fs::copy(server.cert_path(), dir.join("ipc_cert.pem")).unwrap();
}

/// The binary with `args`, an empty remote-tagger home (so no default file
/// can be what makes it work) and only the `env` given of the Agent's
/// variables.
fn remote_tagger(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).env("REMOTE_TAGGER_HOME", home);
    for name in AGENT_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

/// Runs it off the runtime's threads, so the in-process server keeps serving.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .unwrap()
}

fn succeeded(output: &Output) -> &Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn listed_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&succeeded(output).stdout).unwrap()
}

fn both_entities() -> serde_json::Value {
    serde_json::json!({"entities": {
        "container_id://abc": {"tags": {"remote": ["env:prod", "pod_name:web-1", "container_id:abc"]}},
        "process://42": {"tags": {"remote": ["service:db"]}},
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_needs_nothing_but_the_agents_config() {
    let server = agent_like_server().await;
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("empty-home");
    let etc = scratch.path().join("etc/datadog-agent");
    let port = server.addr.port();
    let config = agent_folder(&etc, &server, &format!("cmd_port: {port}\n"));
    let config = config.to_str().unwrap();

    let listed = run(remote_tagger(
        &home,
        &["list", "--json", "--datadog-config", config],
        &[],
    ))
    .await;
    assert_eq!(listed_json(&listed), both_entities());

    // The folder works as the file does (the Agent's -c takes either), and
    // REMOTE_TAGGER_DATADOG_CONFIG as the flag does.
    let listed = run(remote_tagger(
        &home,
        &["list", "--json", "--datadog-config", etc.to_str().unwrap()],
        &[],
    ))
    .await;
    assert_eq!(listed_json(&listed), both_entities());
    let listed = run(remote_tagger(
        &home,
        &["list", "--json"],
        &[("REMOTE_TAGGER_DATADOG_CONFIG", config)],
    ))
    .await;
    assert_eq!(listed_json(&listed), both_entities());

    let got = run(remote_tagger(
        &home,
        &[
            "get",
            "container_id://abc",
            "--cardinality",
            "orchestrator",
            "--datadog-config",
            config,
        ],
        &[],
    ))
    .await;
    assert_eq!(
        String::from_utf8_lossy(&succeeded(&got).stdout),
        "env:prod\npod_name:web-1\n"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dd_variables_override_the_file_and_flags_override_both() {
    let server = agent_like_server().await;
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("empty-home");
    let port = server.addr.port().to_string();
    // The file points at nothing that works: no server on port 1, no token
    // or certificate where it says.
    let etc = scratch.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("datadog.yaml");
    std::fs::write(
        &config,
        "cmd_host: 127.0.0.1\ncmd_port: 1\nauth_token_file_path: /nonexistent/auth_token\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // The token and certificate where the variable moves them: the
    // certificate follows the token, as for the Agent.
    let run_dir = scratch.path().join("run");
    copy_credentials(&server, &run_dir);
    let token = run_dir.join("auth_token");
    let token = token.to_str().unwrap();

    let listed = run(remote_tagger(
        &home,
        &["list", "--json", "--datadog-config", config],
        &[
            ("DD_CMD_PORT", &port),
            ("DD_CMD_HOST", "::1"),
            ("DD_IPC_ADDRESS", "127.0.0.1"),
            ("DD_AUTH_TOKEN_FILE_PATH", token),
        ],
    ))
    .await;
    assert_eq!(listed_json(&listed), both_entities());

    // Flags win over the variables and the file.
    let target = server.addr.to_string();
    let ca = run_dir.join("ipc_cert.pem");
    let listed = run(remote_tagger(
        &home,
        &[
            "list",
            "--json",
            "--datadog-config",
            config,
            "--target",
            &target,
            "--auth-token-file",
            token,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[
            ("DD_CMD_PORT", "2"),
            ("DD_IPC_CERT_FILE_PATH", "/nonexistent/ipc_cert.pem"),
        ],
    ))
    .await;
    assert_eq!(listed_json(&listed), both_entities());

    // Without --datadog-config the variables change nothing.
    let server_home = server.dir.path();
    let listed = run(remote_tagger(
        server_home,
        &["list", "--json", "--target", &target],
        &[
            ("DD_CMD_PORT", "2"),
            ("DD_AUTH_TOKEN_FILE_PATH", "/nonexistent/auth_token"),
            ("DD_IPC_CERT_FILE_PATH", "/nonexistent/ipc_cert.pem"),
        ],
    ))
    .await;
    assert_eq!(listed_json(&listed), both_entities());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_from_the_agents_config() {
    let server = agent_like_server().await;
    let scratch = tempfile::tempdir().unwrap();
    let etc = scratch.path().join("etc");
    let config = agent_folder(&etc, &server, "# everything else is the Agent's\n");
    let port = server.addr.port().to_string();
    let mut watch = remote_tagger(
        &scratch.path().join("empty-home"),
        &[
            "watch",
            "--json",
            "--datadog-config",
            config.to_str().unwrap(),
        ],
        &[("DD_CMD_PORT", &port)],
    );
    let mut child = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |stream: Box<dyn std::io::Read + Send>| {
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        lines
    };
    let stderr = lines(Box::new(child.stderr.take().unwrap()));
    let stdout = lines(Box::new(child.stdout.take().unwrap()));
    let wait_for = |lines: &mpsc::Receiver<String>, needle: &str| loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("watch printed no line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };
    tokio::task::block_in_place(|| wait_for(&stderr, "synced (snapshot): 2 entities"));

    server.store.apply([EntityEvent::Added(entity(
        "process://77",
        &["service:cache"],
        &[],
        &[],
    ))]);
    let line = tokio::task::block_in_place(|| wait_for(&stdout, "process://77"));
    let change: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(change["kind"], "added", "{line}");
    assert_eq!(
        change["tags"],
        serde_json::json!(["service:cache"]),
        "{line}"
    );
    let _ = child.kill();
    let _ = child.wait();
    server.stop().await;
}

/// The run's whole stderr, which must be the one line of a failure.
async fn one_line_failure(command: Command) -> String {
    let output = run(command).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[tokio::test]
async fn a_broken_config_is_one_line_naming_the_file_and_the_key() {
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("empty-home");
    let config = scratch.path().join("datadog.yaml");
    let list = |extra: &[(&str, &str)]| {
        remote_tagger(
            &home,
            &["list", "--datadog-config", config.to_str().unwrap()],
            extra,
        )
    };
    let shown = config.display().to_string();

    std::fs::write(&config, "api_key: x\ncmd_port:\n  port: 5001\n").unwrap();
    let stderr = one_line_failure(list(&[])).await;
    assert_eq!(
        stderr.trim_end(),
        format!(
            "remote-tagger: error: {shown}: cmd_port: expected a single value, found a mapping"
        )
    );

    std::fs::write(&config, "cmd_port: [5001\n").unwrap();
    let stderr = one_line_failure(list(&[])).await;
    assert!(
        stderr.contains(&format!("{shown} is not valid YAML: line 2 column 1")),
        "{stderr}"
    );

    std::fs::write(&config, "cmd_host: 10.1.2.3\n").unwrap();
    let stderr = one_line_failure(list(&[])).await;
    assert!(
        stderr.contains(&format!(
            "{shown}: cmd_host: \"10.1.2.3\" is neither localhost"
        )),
        "{stderr}"
    );

    std::fs::write(&config, "cmd_port: 5001\n").unwrap();
    let stderr = one_line_failure(list(&[("DD_CMD_PORT", "http")])).await;
    assert!(
        stderr.contains("environment variable DD_CMD_PORT: cmd_port: expected a port number"),
        "{stderr}"
    );

    // A valid config on a host whose Agent never made its certificate.
    let stderr = one_line_failure(list(&[])).await;
    let cert = scratch.path().join("ipc_cert.pem");
    assert!(
        stderr.contains(&format!(
            "CA file {} (the Agent's ipc_cert_file_path by --datadog-config {shown}) does not exist",
            cert.display()
        )),
        "{stderr}"
    );

    let missing = scratch.path().join("nowhere/datadog.yaml");
    let stderr = one_line_failure(remote_tagger(
        &home,
        &["list", "--datadog-config", missing.to_str().unwrap()],
        &[],
    ))
    .await;
    assert!(
        stderr.contains(&format!(
            "cannot read the Datadog Agent config {}",
            missing.display()
        )),
        "{stderr}"
    );
}
