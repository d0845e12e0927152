//! The `--entities FILE` source of a running server over real sockets: what
//! it logs about a malformed file, and that clients keep the last good state.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

mod common;

use common::{TestServer, within};
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model as pb;
use remote_tagger::server::Source;
use tonic::Streaming;

const POLL: Duration = Duration::from_millis(20);

/// Every log line of this test binary, from every thread (the global
/// subscriber: the server logs from runtime and blocking threads alike).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(|| LogWriter)
                .finish(),
        )
        .expect("no other global subscriber");
        Mutex::default()
    })
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        logs().lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines that mention `path` and contain `needle`.
fn lines_about(path: &Path, needle: &str) -> Vec<String> {
    let path = path.display().to_string();
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|line| line.contains(&path) && line.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn write_entities(path: &Path, json: &str) {
    // Write then rename, as editors and config tools do.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, json).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

async fn subscribe(server: &TestServer) -> Streaming<pb::StreamTagsResponse> {
    let channel = common::datadog_client::pinned_channel(server.addr, &server.cert_path()).await;
    let mut request = tonic::Request::new(pb::StreamTagsRequest {
        cardinality: pb::TagCardinality::High as i32,
        streaming_id: "test:1".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.token()).parse().unwrap(),
    );
    AgentSecureClient::new(channel)
        .tagger_stream_entities(request)
        .await
        .unwrap()
        .into_inner()
}

/// The uids of the next response's events.
async fn next_uids(stream: &mut Streaming<pb::StreamTagsResponse>) -> Vec<String> {
    let response = within("a response", stream.message())
        .await
        .unwrap()
        .expect("the stream ended");
    response
        .events
        .iter()
        .map(|event| {
            event
                .entity
                .as_ref()
                .unwrap()
                .id
                .as_ref()
                .unwrap()
                .uid
                .clone()
        })
        .collect()
}

#[tokio::test]
async fn a_still_malformed_file_is_never_reported_valid_again() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entities.json");
    write_entities(&path, r#"[{"id": "host://a"}]"#);
    let file = path.clone();
    let server = TestServer::start_in(dir, move |config| {
        config.source = Source::EntitiesFile(file);
        config.file_poll_interval = POLL;
    })
    .await;
    let mut stream = subscribe(&server).await;
    assert_eq!(next_uids(&mut stream).await, ["a"]);

    write_entities(&path, r#"[{"id": "host://a"}, {"id": "host://b"}, "#);
    server
        .wait_for_stats("the malformed file to be reported", |s| {
            s.source_errors == 1
        })
        .await;
    // Many more polls of the same malformed file: it changes nothing, so
    // nothing more is said about it.
    tokio::time::sleep(POLL * 15).await;
    assert_eq!(
        lines_about(&path, "keeping the last good state").len(),
        1,
        "{:?}",
        lines_about(&path, "")
    );
    assert_eq!(
        lines_about(&path, "valid again"),
        Vec::<String>::new(),
        "the file is still malformed"
    );
    assert_eq!(server.store.stats().source_errors, 1);
    assert_eq!(
        server.store.stats().store_entities,
        1,
        "the last good state"
    );

    write_entities(&path, r#"[{"id": "host://a"}, {"id": "host://b"}]"#);
    assert_eq!(next_uids(&mut stream).await, ["b"]);
    assert_eq!(lines_about(&path, "valid again").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_file_over_the_limit_keeps_the_last_good_state_served() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entities.json");
    let good = r#"[{"id": "host://a"}]"#;
    write_entities(&path, good);
    let file = path.clone();
    let server = TestServer::start_in(dir, move |config| {
        config.source = Source::EntitiesFile(file);
        config.file_poll_interval = POLL;
        config.entities_file_max_bytes = good.len() as u64;
    })
    .await;
    let mut stream = subscribe(&server).await;
    assert_eq!(next_uids(&mut stream).await, ["a"]);

    let large = r#"[{"id": "host://a"}, {"id": "host://b"}]"#;
    write_entities(&path, large);
    server
        .wait_for_stats("the large file to be reported", |s| s.source_errors == 1)
        .await;
    let warning = lines_about(&path, "keeping the last good state");
    assert_eq!(warning.len(), 1, "{warning:?}");
    assert!(
        warning[0].contains(&format!(
            "{} bytes, over the --entities-max-bytes limit of {} bytes",
            large.len(),
            good.len()
        )),
        "{warning:?}"
    );
    // Back under the limit: served again, and only the change streams.
    write_entities(&path, r#"[{"id": "host://c"}]"#);
    let mut events = next_uids(&mut stream).await;
    events.sort();
    assert_eq!(events, ["a", "c"], "a deleted, c added");
    assert_eq!(server.store.stats().store_entities, 1);
    server.stop().await;
}

#[test]
fn serve_refuses_a_file_over_the_limit_in_one_line_naming_it_its_size_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entities.json");
    let json = r#"[{"id": "host://a"}, {"id": "host://b"}]"#;
    std::fs::write(&path, json).unwrap();
    let expected = format!(
        "remote-tagger: error: entities file {}: {} bytes, over the --entities-max-bytes limit of 10 bytes; raise the limit or shrink the file",
        path.display(),
        json.len()
    );
    let serve = |flag: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_remote-tagger"))
            .args(["serve", "--listen", "127.0.0.1:0", "--entities"])
            .arg(&path)
            .args(flag)
            .env("REMOTE_TAGGER_HOME", dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    for output in [
        serve(&["--entities-max-bytes", "10"], &[]),
        serve(&[], &[("REMOTE_TAGGER_ENTITIES_MAX_BYTES", "10")]),
    ] {
        assert_eq!(output.status.code(), Some(1));
        // After the log lines of the token and certificate it created.
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    }
}
