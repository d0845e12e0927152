//! TLS as today's Datadog Agents set it up (wire spec section 6), over real
//! loopback sockets: the client against an Agent-like server (its
//! self-signed CA certificate as its own, client certificates required),
//! our server given an Agent's `ipc_cert.pem` (SEC1, PKCS#8 and PKCS#1 keys)
//! or generating one, and the CLI commands with only `--ca-file`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::agent_tls::{
    AgentCert, AgentLikeServer, CaSignedLeaf, openssl_agent_ipc_cert, openssl_rsa_pkcs1, token,
};
use common::{PATIENCE, TestServer, entity, within};
use remote_tagger::client::{self, ClientCertificate, ClientConfig, RemoteTagger, TlsSettings};
use remote_tagger::domain::{Cardinality, EntityEvent, EntityId};
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model as pb;
use remote_tagger::server::TlsIdentity;
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use tokio_rustls::rustls::{self, SupportedProtocolVersion};

const BINARY: &str = env!("CARGO_BIN_EXE_remote-tagger");
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A client of `addr` with this token file, trusting `ca_file`, presenting
/// `client_certificate`.
fn client_config(
    addr: std::net::SocketAddr,
    token_file: &Path,
    ca_file: &Path,
    client_certificate: ClientCertificate,
) -> ClientConfig {
    let mut config = ClientConfig::new(addr.to_string(), token_file, TlsSettings::verify(ca_file));
    config.tls.client_certificate = client_certificate;
    config.core.seed = 16;
    config
}

fn container() -> EntityEvent {
    EntityEvent::Added(entity(
        "container_id://abc",
        &["env:prod"],
        &["pod_name:web-1"],
        &["container_id:abc"],
    ))
}

fn container_id() -> EntityId {
    EntityId::parse("container_id://abc").unwrap()
}

/// Mirrors the server with `config` and returns the mirrored ids.
async fn mirror_ids(config: ClientConfig) -> Vec<String> {
    let tagger = RemoteTagger::start(config).unwrap();
    let synced = tokio::time::timeout(PATIENCE, tagger.wait_synced()).await;
    let last_error = tagger.status().borrow().last_error.clone();
    assert!(synced.is_ok(), "not synced: {last_error:?}");
    let ids = tagger
        .mirror()
        .list()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    tagger.stop().await;
    ids
}

/// The error of one `TaggerFetchEntity` that must fail.
async fn refused(config: &ClientConfig) -> String {
    let result = within(
        "a refused fetch",
        client::fetch_entity(config, &container_id(), Cardinality::High),
    )
    .await;
    result.expect_err("the connection is refused").to_string()
}

#[tokio::test]
async fn the_client_pins_an_agent_certificate_over_tls_1_2_and_1_3() {
    let openssl_sec1 = std::fs::read_to_string(openssl_agent_ipc_cert()).unwrap();
    let rcgen_pkcs8 = AgentCert::generate().pem;
    for versions in [TLS12, TLS13] {
        for identity in [&openssl_sec1, &rcgen_pkcs8] {
            let server = AgentLikeServer::start(identity, versions).await;
            server.store.apply([container()]);
            // Only the ca-file: its pair is presented by default, and the
            // server requires it.
            let config = client_config(
                server.addr,
                &server.token_file(),
                &server.ipc_cert(),
                ClientCertificate::default(),
            );
            assert_eq!(mirror_ids(config).await, ["container_id://abc"]);
            assert_eq!(server.refused_handshakes(), 0, "{versions:?}");
        }
    }
}

#[tokio::test]
async fn an_agent_like_server_refuses_a_client_without_its_certificate() {
    for versions in [TLS12, TLS13] {
        let server = AgentLikeServer::start(&AgentCert::generate().pem, versions).await;
        let config = client_config(
            server.addr,
            &server.token_file(),
            &server.ipc_cert(),
            ClientCertificate::None,
        );
        // The client sees the server's alert, or (TLS 1.3, where the client
        // is done first) the connection closing under its first request.
        refused(&config).await;
        server.wait_for_a_refusal().await;
    }
}

/// Pinning is not "accept anything": a self-signed certificate other than
/// the file's, even one of the Agent's very layout, is refused.
#[tokio::test]
async fn a_server_presenting_another_self_signed_certificate_is_refused() {
    let server = AgentLikeServer::start(&AgentCert::generate().pem, TLS13).await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = AgentCert::generate().write(&dir.path().join("ipc_cert.pem"));
    let config = client_config(
        server.addr,
        &server.token_file(),
        &trusted,
        ClientCertificate::None,
    );
    let error = refused(&config).await;
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(error.contains("not the trust file's"), "{error}");
}

#[tokio::test]
async fn an_expired_pinned_certificate_is_refused() {
    let expired = AgentCert::valid_between(
        rcgen::date_time_ymd(2000, 1, 1),
        rcgen::date_time_ymd(2001, 1, 1),
    );
    let server = AgentLikeServer::start(&expired.pem, TLS13).await;
    let config = client_config(
        server.addr,
        &server.token_file(),
        &server.ipc_cert(),
        ClientCertificate::default(),
    );
    let error = refused(&config).await;
    assert!(error.contains("expired"), "{error}");
}

/// A certificate that is not pinned goes through webpki: a leaf signed by
/// the file's CA is valid for its names only.
#[tokio::test]
async fn a_ca_signed_leaf_verifies_through_webpki_with_the_server_name() {
    let pki = CaSignedLeaf::generate();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ipc_cert.pem"), &pki.leaf_pem).unwrap();
    let server = TestServer::start_in(dir, |_| {}).await;
    server.store.apply([container()]);
    let ca_file = server.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let token_file = server.dir.path().join("auth_token");
    let config = client_config(
        server.addr,
        &token_file,
        &ca_file,
        ClientCertificate::default(),
    );
    let tags = client::fetch_entity(&config, &container_id(), Cardinality::Low)
        .await
        .unwrap();
    assert_eq!(tags, ["env:prod"]);

    let mut other_name = config.clone();
    other_name.tls.server_name = "tagger.example".to_owned();
    let error = refused(&other_name).await;
    assert!(error.contains("not valid for name"), "{error}");
    server.stop().await;
}

/// `--cert-file` takes an Agent's file whatever its key's format, and a
/// client presenting the file's pair streams from it while client
/// certificates are required.
#[tokio::test]
async fn serve_with_agent_style_cert_files_of_each_key_format_streams_to_a_client() {
    let pkcs8 = AgentCert::generate().pem;
    let files = [
        (
            "SEC1",
            std::fs::read_to_string(openssl_agent_ipc_cert()).unwrap(),
        ),
        ("PKCS#8", pkcs8),
        (
            "PKCS#1",
            std::fs::read_to_string(openssl_rsa_pkcs1()).unwrap(),
        ),
    ];
    for (format, pem) in files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipc_cert.pem"), &pem).unwrap();
        let server = TestServer::start_in(dir, |config| config.require_client_cert = true).await;
        server.store.apply([container()]);
        let config = client_config(
            server.addr,
            &server.dir.path().join("auth_token"),
            &server.cert_path(),
            ClientCertificate::default(),
        );
        assert_eq!(mirror_ids(config).await, ["container_id://abc"], "{format}");
        assert_eq!(
            std::fs::read_to_string(server.cert_path()).unwrap(),
            pem,
            "{format}: the file is used as is"
        );
        server.stop().await;
    }
}

/// Datadog's Rust client (TLS 1.3, the certificate pinned, the pair
/// presented) streams from our server given an openssl-made Agent file.
#[tokio::test]
async fn a_datadog_style_pinned_client_streams_from_serve_with_an_agent_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(openssl_agent_ipc_cert(), dir.path().join("ipc_cert.pem")).unwrap();
    let server = TestServer::start_in(dir, |config| config.require_client_cert = true).await;
    server.store.apply([container()]);
    let channel = common::datadog_client::pinned_channel(server.addr, &server.cert_path()).await;
    let mut request = tonic::Request::new(pb::StreamTagsRequest {
        cardinality: pb::TagCardinality::High as i32,
        streaming_id: "test:pinned".to_owned(),
        ..pb::StreamTagsRequest::default()
    });
    // Datadog's Rust client writes the scheme in lower case.
    let bearer = format!("bearer {}", server.token()).parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = AgentSecureClient::new(channel)
        .tagger_stream_entities(request)
        .await
        .unwrap()
        .into_inner();
    let first = within("the snapshot", stream.message())
        .await
        .unwrap()
        .unwrap();
    let uids: Vec<_> = first
        .events
        .iter()
        .map(|e| e.entity.as_ref().unwrap().id.as_ref().unwrap().uid.clone())
        .collect();
    assert_eq!(uids, ["abc"]);
    server.stop().await;
}

#[tokio::test]
async fn serve_require_client_cert_refuses_a_wrong_and_a_missing_certificate() {
    for required in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(openssl_agent_ipc_cert(), dir.path().join("ipc_cert.pem")).unwrap();
        let server =
            TestServer::start_in(dir, |config| config.require_client_cert = required).await;
        let token_file = server.dir.path().join("auth_token");
        let wrong = AgentCert::generate().write(&server.dir.path().join("wrong.pem"));
        let with =
            |certificate| client_config(server.addr, &token_file, &server.cert_path(), certificate);

        let own = client::fetch_entity(
            &with(ClientCertificate::default()),
            &container_id(),
            Cardinality::High,
        )
        .await;
        assert!(own.is_ok(), "required={required}: {own:?}");
        // A presented certificate is verified whether or not one is required.
        refused(&with(ClientCertificate::File(wrong))).await;
        let missing = client::fetch_entity(
            &with(ClientCertificate::None),
            &container_id(),
            Cardinality::High,
        )
        .await;
        assert_eq!(
            missing.is_err(),
            required,
            "required={required}: {missing:?}"
        );
        server.stop().await;
    }
}

/// A Go Agent process given the file `serve` writes must accept it: the
/// Agent's layout, parsed block by block and field by field.
#[test]
fn the_generated_cert_file_is_laid_out_as_the_agents() {
    use x509_parser::extensions::GeneralName;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc_cert.pem");
    TlsIdentity::load_or_generate(&path).unwrap();
    let text = std::fs::read(&path).unwrap();
    let blocks: Vec<(SectionKind, Vec<u8>)> = <(SectionKind, Vec<u8>)>::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .unwrap();
    let kinds: Vec<_> = blocks.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, [SectionKind::Certificate, SectionKind::EcPrivateKey]);
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"), "{text}");
    assert!(
        text.contains("\n-----BEGIN EC PRIVATE KEY-----\n"),
        "{text}"
    );

    let (_, cert) = x509_parser::parse_x509_certificate(&blocks[0].1).unwrap();
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    cert.verify_signature(None).expect("self-signed");
    let constraints = cert.basic_constraints().unwrap().unwrap();
    assert!(constraints.critical && constraints.value.ca);
    assert_eq!(constraints.value.path_len_constraint, None);
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.digital_signature() && usage.crl_sign());
    assert_eq!(usage.flags.count_ones(), 3, "{usage}");
    let extended = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(extended.server_auth && extended.client_auth);
    assert!(extended.other.is_empty() && !extended.any && !extended.code_signing);
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => dns.to_string(),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                _ => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
            },
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["localhost", "127.0.0.1", "::1"]);
    let key = cert.public_key();
    assert_eq!(
        key.algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let curve = key.algorithm.parameters.as_ref().unwrap().as_oid().unwrap();
    assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert_eq!(lifetime, 50 * 365 * 24 * 3600);
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - validity.not_before.timestamp();
    assert!((0..600).contains(&age), "valid from now: {age} s ago");
    let serial = cert.raw_serial();
    assert!(serial.len() <= 17 && serial[0] & 0x80 == 0, "{serial:?}");
    assert_ne!(
        serial,
        {
            let other = dir.path().join("other.pem");
            TlsIdentity::load_or_generate(&other).unwrap();
            let text = std::fs::read(&other).unwrap();
            let der = rustls_pki_types::CertificateDer::from_pem_slice(&text).unwrap();
            x509_parser::parse_x509_certificate(&der)
                .unwrap()
                .1
                .raw_serial()
                .to_vec()
        },
        "random serials"
    );
    check_with_openssl(&path);
}

/// The same file read by openssl, an X.509 implementation other than ours,
/// when the machine has one: the key names its curve (Go needs it).
fn check_with_openssl(path: &Path) {
    let run = |args: &[&str]| Command::new("openssl").args(args).arg(path).output();
    let Ok(key) = run(&["ec", "-noout", "-text", "-in"]) else {
        eprintln!("no openssl on this machine: the file was checked by x509-parser only");
        return;
    };
    let key_text = String::from_utf8_lossy(&key.stdout);
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    assert!(key_text.contains("ASN1 OID: prime256v1"), "{key_text}");
    let cert = run(&["x509", "-noout", "-text", "-in"]).unwrap();
    let cert_text = String::from_utf8_lossy(&cert.stdout);
    assert!(cert_text.contains("CA:TRUE"), "{cert_text}");
    let verified = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
        .arg(path)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

/// Runs the binary with `args` (on a blocking thread: the test's runtime
/// serves the other end).
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(&args)
            .env(
                "REMOTE_TAGGER_HOME",
                std::env::temp_dir().join("no-such-remote-tagger-home"),
            )
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap()
}

fn connect_args(server: &AgentLikeServer) -> Vec<String> {
    vec![
        "--target".to_owned(),
        server.addr.to_string(),
        "--auth-token-file".to_owned(),
        server.token_file().display().to_string(),
        "--ca-file".to_owned(),
        server.ipc_cert().display().to_string(),
    ]
}

fn with(command: &[&str], rest: &[String]) -> Vec<String> {
    command
        .iter()
        .map(|s| s.to_string())
        .chain(rest.iter().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_and_get_reach_an_agent_like_server_with_only_its_ca_file() {
    let identity = std::fs::read_to_string(openssl_agent_ipc_cert()).unwrap();
    let server = AgentLikeServer::start(&identity, TLS13).await;
    server.store.apply([container()]);
    let connect = connect_args(&server);

    let listed = run(with(&["list", "--json", "--settle-ms", "100"], &connect)).await;
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        json["entities"]["container_id://abc"]["tags"]["remote"],
        serde_json::json!(["env:prod", "pod_name:web-1", "container_id:abc"])
    );

    let got = run(with(
        &["get", "container_id://abc", "--cardinality", "low"],
        &connect,
    ))
    .await;
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout), "env:prod\n");

    let watch_args = with(&["watch", "--json"], &connect);
    let first_line = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BINARY)
            .args(&watch_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let _ = child.kill();
        let _ = child.wait();
        read.map(|_| line)
    });
    let line = within("watch's first change", first_line)
        .await
        .unwrap()
        .unwrap();
    let change: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(change["kind"], "added", "{line}");
    assert_eq!(change["id"], "container_id://abc", "{line}");

    let unauthenticated = run(with(
        &["list", "--no-client-cert", "--wait-secs", "2"],
        &connect,
    ))
    .await;
    let stderr = String::from_utf8_lossy(&unauthenticated.stderr);
    assert!(!unauthenticated.status.success(), "{stderr}");
    server.wait_for_a_refusal().await;
}

/// `serve --require-client-cert` in a process of its own, as a user runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_require_client_cert_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("ipc_cert.pem");
    std::fs::copy(openssl_agent_ipc_cert(), &cert_file).unwrap();
    let token_file = dir.path().join("auth_token");
    std::fs::write(&token_file, format!("{}\n", token())).unwrap();
    let entities = dir.path().join("entities.json");
    std::fs::write(
        &entities,
        r#"[{"id": "container_id://abc", "low": ["env:prod"]}]"#,
    )
    .unwrap();
    let mut children = common::children::Children::default();
    let serve = children.spawn(
        Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--require-client-cert"])
            .arg("--cert-file")
            .arg(&cert_file)
            .arg("--auth-token-file")
            .arg(&token_file)
            .arg("--entities")
            .arg(&entities)
            .stderr(Stdio::piped()),
    );
    let stderr = serve.stderr.take().unwrap();
    let address = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let (_, rest) = line.split_once(" entities on ")?;
                Some(rest.split_whitespace().next()?.to_owned())
            })
    });
    let address = within("serve's address", address).await.unwrap();
    let address = address.expect("serve printed its address");
    let connect = |extra: &[&str]| {
        let mut args: Vec<String> = ["get", "container_id://abc", "--target", &address]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([
            "--auth-token-file".to_owned(),
            token_file.display().to_string(),
        ]);
        args.extend(["--ca-file".to_owned(), cert_file.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let own = run(connect(&[])).await;
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&own.stdout), "env:prod\n");

    let wrong: PathBuf = AgentCert::generate().write(&dir.path().join("wrong.pem"));
    for extra in [
        vec!["--no-client-cert"],
        vec!["--client-cert-file", wrong.to_str().unwrap()],
    ] {
        let refused = run(connect(&extra)).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
    }
    children.kill_all();
}
