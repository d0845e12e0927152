//! The flare: sending against a local HTTP server that plays each answer
//! the Datadog intake can give, and the `flare` command end to end against
//! a real server (archive contents, no secret inside).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, entity, within};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use remote_tagger::domain::EntityEvent;
use remote_tagger::flare::{self, FlareSendError, FlareUpload};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const API_KEY: &str = "0123456789abcdef0123456789ab7c3f9";

/// One request the fake intake received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().unwrap())
    }
}

/// What the intake answers.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn answer(status: u16) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: String::new(),
    }
}

fn json_answer(body: &str) -> Answer {
    Answer {
        status: 200,
        headers: vec![("content-type", "application/json".to_owned())],
        body: body.to_owned(),
    }
}

fn redirect(status: u16, location: &str) -> Answer {
    Answer {
        status,
        headers: vec![("location", location.to_owned())],
        body: String::new(),
    }
}

/// Decides the answer from the request and how many came before it.
type Script = dyn Fn(&Received, usize) -> Answer + Send + Sync;

/// A local stand-in for the Datadog flare intake, recording every request.
struct Intake {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Intake {
    async fn start(script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (log, script) = (log.clone(), script.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes().to_vec();
                            let request = Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                            };
                            let answer = {
                                let mut log = log.lock().unwrap();
                                let answer = script(&request, log.len());
                                log.push(request);
                                answer
                            };
                            let mut response = Response::new(Full::new(Bytes::from(answer.body)));
                            *response.status_mut() = answer.status.try_into().unwrap();
                            for (name, value) in answer.headers {
                                response.headers_mut().insert(name, value.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// `METHOD /path` of every request, in order.
    fn requests(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HEAD answers 404 (the endpoint wants POST), POST answers `post`.
async fn intake_answering_post(post: impl Fn() -> Answer + Send + Sync + 'static) -> Intake {
    Intake::start(move |request, _| match request.method.as_str() {
        "HEAD" => answer(404),
        _ => post(),
    })
    .await
}

struct Archive {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn archive() -> Archive {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flare.tar.gz");
    flare::write_archive(
        &path,
        "flare",
        &[flare::FlareFile::new("version.txt", "ARCHIVE-CONTENTS")],
    )
    .unwrap();
    Archive { _dir: dir, path }
}

/// An upload to `site` with fast retries.
fn upload(site: &str) -> FlareUpload {
    let mut upload = FlareUpload::new(site, API_KEY);
    upload.hostname = "node-7".to_owned();
    upload.version = "9.9.9".to_owned();
    upload.retry_delay = Duration::from_millis(10);
    upload
}

async fn send(upload: &FlareUpload) -> Result<flare::FlareReceipt, FlareSendError> {
    let archive = archive();
    within("the flare upload", flare::send(&archive.path, upload)).await
}

#[tokio::test]
async fn an_accepted_flare_is_posted_as_the_agent_posts_it() {
    let intake = Intake::start(|request, _| match request.method.as_str() {
        "HEAD" => answer(200),
        _ => json_answer(r#"{"case_id": 1234, "request_uuid": "7d3c-uuid"}"#),
    })
    .await;
    let mut upload = upload(&intake.url());
    upload.case_id = Some("1234".to_owned());
    upload.email = Some("sre@example.com".to_owned());
    let archive = archive();
    let archive_bytes = std::fs::read(&archive.path).unwrap();
    let receipt = within("the flare upload", flare::send(&archive.path, &upload))
        .await
        .unwrap();
    assert_eq!(receipt.case_id.as_deref(), Some("1234"));
    assert_eq!(receipt.request_uuid.as_deref(), Some("7d3c-uuid"));
    let shown = receipt.to_string();
    assert!(
        shown.contains("1234") && shown.contains("7d3c-uuid"),
        "{shown}"
    );

    assert_eq!(
        intake.requests(),
        ["HEAD /support/flare/1234", "POST /support/flare/1234"]
    );
    let received = intake.received();
    for request in &received {
        assert_eq!(request.header("dd-api-key"), API_KEY);
    }
    let post = &received[1];
    assert!(
        post.header("content-type")
            .starts_with("multipart/form-data; boundary=")
    );
    assert_eq!(
        post.header("transfer-encoding"),
        "chunked",
        "the upload is streamed"
    );
    let body = String::from_utf8_lossy(&post.body);
    let positions: Vec<usize> = [
        r#"name="case_id""#,
        r#"name="email""#,
        r#"name="flare_file"; filename="flare.tar.gz""#,
        r#"name="hostname""#,
        r#"name="version""#,
    ]
    .iter()
    .map(|field| {
        body.find(field)
            .unwrap_or_else(|| panic!("{field} missing: {body}"))
    })
    .collect();
    assert!(positions.is_sorted(), "fields out of order: {body}");
    for value in ["1234", "sre@example.com", "node-7", "9.9.9"] {
        assert!(
            body.contains(&format!("\r\n\r\n{value}\r\n")),
            "{value} missing: {body}"
        );
    }
    assert!(
        post.body
            .windows(archive_bytes.len())
            .any(|window| window == archive_bytes),
        "the archive is in the body"
    );
}

#[tokio::test]
async fn without_case_or_email_those_fields_are_left_out() {
    let intake = intake_answering_post(|| json_answer(r#"{"case_id": 5}"#)).await;
    send(&upload(&intake.url())).await.unwrap();
    assert_eq!(
        intake.requests(),
        ["HEAD /support/flare", "POST /support/flare"]
    );
    let body = String::from_utf8_lossy(&intake.received()[1].body).into_owned();
    assert!(!body.contains(r#"name="case_id""#) && !body.contains(r#"name="email""#));
    assert!(body.contains(r#"name="flare_file""#));
}

#[tokio::test]
async fn head_redirects_are_followed_and_the_post_goes_where_they_end() {
    let intake =
        Intake::start(
            |request, _| match (request.method.as_str(), request.path.as_str()) {
                ("HEAD", "/support/flare") => redirect(302, "/moved/flare"),
                ("HEAD", "/moved/flare") => redirect(301, "/final/flare"),
                ("HEAD", _) => answer(404),
                (_, "/final/flare") => json_answer(r#"{"case_id": 1}"#),
                _ => answer(500),
            },
        )
        .await;
    send(&upload(&intake.url())).await.unwrap();
    assert_eq!(
        intake.requests(),
        [
            "HEAD /support/flare",
            "HEAD /moved/flare",
            "HEAD /final/flare",
            "POST /final/flare"
        ]
    );
}

#[tokio::test]
async fn a_redirected_post_is_not_followed() {
    let intake =
        Intake::start(
            |request, _| match (request.method.as_str(), request.path.as_str()) {
                ("HEAD", _) => answer(200),
                ("POST", "/support/flare") => redirect(307, "/elsewhere"),
                _ => json_answer(r#"{"case_id": 1}"#),
            },
        )
        .await;
    let error = send(&upload(&intake.url())).await.unwrap_err();
    assert_eq!(error.to_string(), "HTTP 307 Temporary Redirect");
    assert_eq!(
        intake.requests(),
        ["HEAD /support/flare", "POST /support/flare"]
    );
}

#[tokio::test]
async fn a_head_that_ends_neither_in_200_nor_404_stops_before_posting() {
    let intake = Intake::start(|_, _| answer(401)).await;
    let error = send(&upload(&intake.url())).await.unwrap_err();
    assert_eq!(
        error,
        FlareSendError::Resolve {
            code: 401,
            text: "Unauthorized".to_owned()
        }
    );
    assert_eq!(intake.requests(), ["HEAD /support/flare"]);
}

#[tokio::test]
async fn server_errors_are_retried_up_to_three_attempts() {
    let intake = intake_answering_post(|| answer(503)).await;
    let error = send(&upload(&intake.url())).await.unwrap_err();
    assert_eq!(error.to_string(), "HTTP 503 Service Unavailable");
    let posts = intake
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(posts, 3);
}

#[tokio::test]
async fn a_retry_that_succeeds_is_a_success() {
    let intake = Intake::start(|request, index| match request.method.as_str() {
        "HEAD" => answer(404),
        // The first POST is request 1; the second attempt's POST is request 3.
        _ if index < 2 => answer(502),
        _ => json_answer(r#"{"case_id": 77}"#),
    })
    .await;
    let receipt = send(&upload(&intake.url())).await.unwrap();
    assert_eq!(receipt.case_id.as_deref(), Some("77"));
    assert_eq!(intake.requests().len(), 4);
}

#[tokio::test]
async fn connection_errors_are_retried_up_to_three_attempts() {
    // Accepts and hangs up at once: every attempt fails on the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let counter = accepted.clone();
    let hangup = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            *counter.lock().unwrap() += 1;
            drop(stream);
        }
    });
    let error = send(&upload(&format!("http://{addr}"))).await.unwrap_err();
    hangup.abort();
    assert!(
        matches!(&error, FlareSendError::Connect { url, .. } if url.ends_with("/support/flare")),
        "{error}"
    );
    assert_eq!(*accepted.lock().unwrap(), 3);
}

#[tokio::test]
async fn forbidden_names_only_the_last_five_characters_of_the_key() {
    let intake = intake_answering_post(|| answer(403)).await;
    let error = send(&upload(&intake.url())).await.unwrap_err().to_string();
    assert!(error.starts_with("HTTP 403 Forbidden"), "{error}");
    assert!(error.contains("ending with: 7c3f9"), "{error}");
    assert!(
        !error.contains("b7c3f9"),
        "more of the key than 5 characters: {error}"
    );
    assert_eq!(intake.requests().len(), 2, "a 403 is not retried");
}

#[tokio::test]
async fn other_statuses_are_reported_as_code_and_text() {
    let intake = intake_answering_post(|| answer(400)).await;
    let error = send(&upload(&intake.url())).await.unwrap_err();
    assert_eq!(error.to_string(), "HTTP 400 Bad Request");
    assert_eq!(intake.requests().len(), 2, "a 4xx is not retried");
}

#[tokio::test]
async fn a_200_that_is_not_json_is_a_clear_error() {
    let html = intake_answering_post(|| Answer {
        status: 200,
        headers: vec![("content-type", "text/html".to_owned())],
        body: "<html>maintenance</html>".to_owned(),
    })
    .await;
    let error = send(&upload(&html.url())).await.unwrap_err().to_string();
    assert!(
        error.contains("200") && error.contains("text/html"),
        "{error}"
    );
    assert!(error.contains("maintenance"), "quotes the answer: {error}");

    let bare = intake_answering_post(|| Answer {
        status: 200,
        headers: Vec::new(),
        body: "ok".to_owned(),
    })
    .await;
    let error = send(&upload(&bare.url())).await.unwrap_err().to_string();
    assert!(error.contains("no content type"), "{error}");

    let broken = intake_answering_post(|| json_answer("{not json")).await;
    let error = send(&upload(&broken.url())).await.unwrap_err();
    assert!(matches!(error, FlareSendError::BadJson { .. }), "{error}");
}

#[tokio::test]
async fn an_error_in_the_json_answer_is_the_servers_error() {
    let intake = intake_answering_post(|| {
        json_answer(r#"{"error": "case 1234 is closed", "request_uuid": "req-9"}"#)
    })
    .await;
    let error = send(&upload(&intake.url())).await.unwrap_err();
    assert_eq!(
        error,
        FlareSendError::Refused {
            error: "case 1234 is closed".to_owned(),
            request_uuid: Some("req-9".to_owned())
        }
    );
    assert!(error.to_string().contains("req-9"));
}

/// Every file of a tar.gz, by name inside its top folder.
fn unpack(path: &Path) -> std::collections::BTreeMap<String, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let mut contents = String::new();
            entry.read_to_string(&mut contents).unwrap();
            (name, contents)
        })
        .collect()
}

#[tokio::test]
async fn the_flare_command_collects_what_support_needs_and_no_secret() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([EntityEvent::Added(entity(
        "container_id://abc",
        &["env:prod"],
        &["pod:web-1"],
        &["container:abc"],
    ))]);
    let intake = intake_answering_post(|| json_answer(r#"{"case_id": 4321}"#)).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.tar.gz");
    let log_file = dir.path().join("remote-tagger.log");
    std::fs::write(&log_file, "an earlier run's log line\n").unwrap();
    let args: Vec<String> = [
        "flare",
        "--target",
        &server.addr.to_string(),
        "--auth-token-file",
        server.dir.path().join("auth_token").to_str().unwrap(),
        "--ca-file",
        server.cert_path().to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--log-file",
        log_file.to_str().unwrap(),
        "--send",
        // Reached through the proxy of the environment, like a production
        // host that reaches Datadog only through one.
        "http://flare.invalid",
        "--case-id",
        "4321",
    ]
    .map(str::to_owned)
    .to_vec();
    let proxy = intake.url();
    let ran = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_remote-tagger"))
            .args(args)
            .env("DD_API_KEY", API_KEY)
            .env("RUST_LOG", "debug")
            .env("HTTP_PROXY", proxy)
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap()
    });
    let ran = within("the flare command", ran).await.unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{stderr}");
    assert!(stdout.contains("4321"), "the receipt is printed: {stdout}");
    assert_eq!(
        intake.requests(),
        ["HEAD /support/flare/4321", "POST /support/flare/4321"]
    );
    for request in intake.received() {
        assert_eq!(
            request.header("host"),
            "flare.invalid",
            "sent through the proxy"
        );
    }

    let files = unpack(&output);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "logs.txt",
            "metrics.txt",
            "status.json",
            "tagger-list.json",
            "version.txt"
        ]
    );
    let list: serde_json::Value = serde_json::from_str(&files["tagger-list.json"]).unwrap();
    assert_eq!(
        list,
        serde_json::json!({"entities": {"container_id://abc": {"tags": {"remote": ["env:prod", "pod:web-1", "container:abc"]}}}})
    );
    assert!(
        files["metrics.txt"].contains("tagger_receives_total "),
        "{}",
        files["metrics.txt"]
    );
    assert!(
        files["version.txt"].starts_with(&format!("remote-tagger {}", env!("CARGO_PKG_VERSION")))
    );
    assert!(files["logs.txt"].contains("an earlier run's log line"));
    let config: serde_json::Value = serde_json::from_str(&files["config.json"]).unwrap();
    assert_eq!(
        config["flare"]["api_key"],
        "*".repeat(API_KEY.len() - 5) + "7c3f9"
    );
    assert_eq!(config["flare"]["case_id"], "4321");

    let token = server.token();
    let token = token.trim();
    for (name, contents) in &files {
        assert!(!contents.contains(token), "the token is in {name}");
        assert!(!contents.contains(API_KEY), "the API key is in {name}");
    }
    for (name, output) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!output.contains(token), "the token is in {name}");
        assert!(!output.contains(API_KEY), "the API key is in {name}");
    }
    server.stop().await;
}

#[test]
fn help_never_shows_the_api_key_from_the_environment() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_remote-tagger"))
        .args(["flare", "--help"])
        .env("DD_API_KEY", API_KEY)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("DD_API_KEY"), "{help}");
    assert!(!help.contains("7c3f9"), "{help}");
}

/// `flare` against nothing (a refused port, no wait): it warns that the
/// mirror is not synced and writes what it has. `TMPDIR` is `temp`.
fn unsynced_flare(temp: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_remote-tagger"))
        .args(["flare", "--target", "127.0.0.1:9", "--insecure-skip-verify"])
        .args(["--wait-secs", "0"])
        .args(extra)
        .env("TMPDIR", temp)
        .env("REMOTE_TAGGER_HOME", temp)
        .env_remove("REMOTE_TAGGER_FLARE_OUTPUT")
        .output()
        .unwrap()
}

/// The archive holds every tag and log line: only its owner may read it,
/// from its creation on (created 0600, not narrowed after the writing).
#[cfg(unix)]
#[test]
fn the_flare_archive_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let temp = tempfile::tempdir().unwrap();
    let ran = unsynced_flare(temp.path(), &[]);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{stderr}");
    let written: Vec<PathBuf> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".tar.gz"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?}\n{stderr}");
    let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "mode {:o} of {:?}",
        mode & 0o777,
        written[0]
    );
    assert!(unpack(&written[0]).contains_key("status.json"));
}

/// A link planted where the archive goes (a predictable name in a shared
/// temporary folder) is not followed: the flare fails in one line naming
/// the path and leaves the link's target alone. No existing file is
/// overwritten either.
#[cfg(unix)]
#[test]
fn a_flare_never_writes_through_a_planted_link_nor_over_a_file() {
    let temp = tempfile::tempdir().unwrap();
    let victim = temp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let planted = temp.path().join("flare.tar.gz");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let ran = unsynced_flare(temp.path(), &["--output", planted.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(!ran.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let error = stderr.lines().last().unwrap();
    assert!(
        error.contains(planted.to_str().unwrap()) && error.contains("--output"),
        "{stderr}"
    );

    let existing = temp.path().join("existing.tar.gz");
    std::fs::write(&existing, "an earlier flare").unwrap();
    let ran = unsynced_flare(temp.path(), &["--output", existing.to_str().unwrap()]);
    assert!(!ran.status.success());
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "an earlier flare"
    );
}
