//! The Prometheus endpoints of a server and of a client mirroring it,
//! scraped over HTTP: every name present, and the values moving with
//! activity.

mod common;

use std::net::SocketAddr;

use common::{TestServer, entity, within};
use remote_tagger::client::{ClientConfig, RemoteTagger, TlsSettings};
use remote_tagger::domain::{Cardinality, EntityEvent};
use remote_tagger::metrics::{self, MetricsEndpoint};

/// A client that ignores proxy variables: the endpoint is on loopback.
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(url: String) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

async fn scrape(endpoint: &MetricsEndpoint) -> String {
    let response = get(format!("http://{}/metrics", endpoint.local_addr())).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of one series (`name` or `name{labels}`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// Scrapes until `series` satisfies `done` (the client applies changes
/// asynchronously), returning that scrape.
async fn scrape_until(
    endpoint: &MetricsEndpoint,
    series: &str,
    done: impl Fn(f64) -> bool,
) -> String {
    within(series, async {
        loop {
            let text = scrape(endpoint).await;
            if sample(&text, series).is_some_and(&done) {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn server_and_client_metrics_are_exposed_and_move_with_activity() {
    let server = TestServer::start(|_| {}).await;
    server.store.apply([EntityEvent::Added(entity(
        "container_id://first",
        &["env:prod"],
        &["pod:a"],
        &["container:a"],
    ))]);
    let server_metrics =
        MetricsEndpoint::spawn(any_port(), metrics::server_registry(&server.store))
            .await
            .unwrap();

    let mut config = ClientConfig::new(
        server.addr.to_string(),
        server.dir.path().join("auth_token"),
        TlsSettings::verify(server.cert_path()),
    );
    // And a prefix outside the table, which it is sent only by name.
    config.core.prefixes = [
        "container_id",
        "kubernetes_pod_uid",
        "kubernetes_future_thing",
    ]
    .map(str::to_owned)
    .to_vec();
    let tagger = RemoteTagger::start(config).unwrap();
    let client_metrics = MetricsEndpoint::spawn(any_port(), metrics::client_registry(&tagger))
        .await
        .unwrap();
    within("the sync", tagger.wait_synced()).await;

    let client_before = scrape(&client_metrics).await;
    for series in [
        "tagger_client_stream_errors_total",
        "tagger_client_resumes_total",
        "tagger_client_backoff_delay_seconds",
        "tagger_client_last_message_age_seconds",
    ] {
        value(&client_before, series);
    }
    assert_eq!(value(&client_before, "tagger_client_synced"), 1.0);
    assert_eq!(value(&client_before, "tagger_client_snapshots_total"), 1.0);
    assert_eq!(
        value(
            &client_before,
            r#"tagger_stored_entities{source="remote",prefix="container_id"}"#
        ),
        1.0
    );
    assert_eq!(value(&client_before, "tagger_unknown_prefix_entities"), 0.0);
    assert!(client_before.contains("# TYPE tagger_client_rejected_events_total counter"));
    assert!(client_before.contains("remote_tagger_build_info{version="));
    let query = r#"tagger_queries_total{cardinality="high",status="success"}"#;
    let empty_query = r#"tagger_queries_total{cardinality="low",status="empty_tags"}"#;
    assert_eq!(value(&client_before, query), 0.0);
    assert_eq!(value(&client_before, empty_query), 0.0);

    let server_before = scrape(&server_metrics).await;
    assert_eq!(value(&server_before, "tagger_subscribers"), 1.0);
    assert_eq!(
        value(&server_before, "tagger_server_snapshots_sent_total"),
        1.0
    );
    assert_eq!(value(&server_before, "tagger_server_store_entities"), 1.0);
    assert_eq!(
        value(
            &server_before,
            "tagger_server_store_unknown_prefix_entities"
        ),
        0.0
    );
    for series in [
        "tagger_server_stream_errors_total",
        r#"tagger_events_total{cardinality="low"}"#,
        r#"tagger_events_total{cardinality="orchestrator"}"#,
        r#"tagger_server_resumes_total{result="accepted"}"#,
        r#"tagger_server_resumes_total{result="refused"}"#,
        "tagger_server_subscribers_evicted_total",
        "tagger_server_keepalives_total",
        "tagger_server_snapshots_in_flight",
        "tagger_server_snapshots_waiting",
        "tagger_server_snapshots_stalled",
        "tagger_server_auth_failures_total",
        "tagger_server_requests_refused_total",
        "tagger_server_source_errors_total",
        "tagger_server_source_skipped_total",
        "tagger_server_store_revision",
    ] {
        value(&server_before, series);
    }
    // Not a relay: no upstream to be connected to.
    assert_eq!(
        value(&server_before, "tagger_server_upstream_connected"),
        0.0
    );
    assert_eq!(value(&server_before, "tagger_server_upstream_synced"), 0.0);

    // Activity: queries on the mirror, a new entity through the server.
    let mirror = tagger.mirror();
    assert!(
        !mirror
            .tags("container_id://first", Cardinality::High)
            .is_empty()
    );
    assert!(
        mirror
            .tags("container_id://unknown", Cardinality::Low)
            .is_empty()
    );
    server.store.apply([
        EntityEvent::Added(entity(
            "kubernetes_pod_uid://second",
            &["env:prod"],
            &[],
            &[],
        )),
        EntityEvent::Added(entity("kubernetes_future_thing://third", &["a"], &[], &[])),
    ]);

    // One batch: both land at once.
    let client_after = scrape_until(&client_metrics, "tagger_unknown_prefix_entities", |count| {
        count == 1.0
    })
    .await;
    assert_eq!(
        value(
            &client_after,
            r#"tagger_stored_entities{source="remote",prefix="kubernetes_pod_uid"}"#
        ),
        1.0
    );
    assert_eq!(value(&client_after, query), 1.0);
    assert_eq!(value(&client_after, empty_query), 1.0);
    for series in ["tagger_receives_total", "tagger_updated_entities_total"] {
        assert!(
            value(&client_after, series) > value(&client_before, series),
            "{series} did not move"
        );
    }

    let server_after = scrape(&server_metrics).await;
    assert_eq!(
        value(&server_after, "tagger_server_store_unknown_prefix_entities"),
        1.0
    );
    for series in [
        "tagger_sends_total",
        r#"tagger_events_total{cardinality="high"}"#,
        "tagger_server_store_revision",
        "tagger_server_store_entities",
    ] {
        assert!(
            value(&server_after, series) > value(&server_before, series),
            "{series} did not move"
        );
    }

    // The server goes away: the client says so and backs off.
    server.stop().await;
    let client_lost = scrape_until(
        &client_metrics,
        "tagger_client_backoff_delay_seconds",
        |delay| delay > 0.0,
    )
    .await;
    assert_eq!(value(&client_lost, "tagger_client_synced"), 0.0);
    assert!(
        value(&client_lost, "tagger_client_stream_errors_total")
            > value(&client_before, "tagger_client_stream_errors_total")
    );
    tagger.stop().await;
}

#[tokio::test]
async fn only_the_metrics_path_is_served() {
    let server = TestServer::start(|_| {}).await;
    let endpoint = MetricsEndpoint::spawn(any_port(), metrics::server_registry(&server.store))
        .await
        .unwrap();
    let base = format!("http://{}", endpoint.local_addr());
    assert_eq!(get(format!("{base}/")).await.status(), 404);
    assert_eq!(get(format!("{base}/metricsx")).await.status(), 404);
    let post = http().post(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    server.stop().await;
}

#[tokio::test]
async fn a_taken_address_is_a_one_line_error_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = TestServer::start(|_| {}).await;
    let error = MetricsEndpoint::spawn(
        taken.local_addr().unwrap(),
        metrics::server_registry(&server.store),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("--metrics-listen") && !error.contains('\n'),
        "{error}"
    );
    server.stop().await;
}
