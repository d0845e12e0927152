//! Scenario `stalled`: a subscriber that never reads while the store
//! churns; the server must evict it and keep its memory bounded.

use std::time::{Duration, Instant};

use remote_tagger::domain::Cardinality;
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model::{StreamTagsRequest, StreamTagsResponse};
use remote_tagger::server::ServerStats;

use crate::common::{TestServer, datadog_client};
use crate::report::{Row, ms, rss_kib};
use crate::support::{bench_server, bench_workload, churn, churn_rate};

/// Churn before the stalled subscriber arrives: fills the change log and
/// warms the allocator, so what follows is the subscriber's doing.
const STALL_WARMUP: Duration = Duration::from_secs(10);
const STALL_OBSERVED: Duration = Duration::from_secs(30);

/// Scenario 4: a subscriber that opens a stream and never reads, while the
/// store churns: the server must evict it and its memory must stay bounded.
pub async fn stalled_subscriber() -> Vec<Row> {
    println!(
        "\n== stalled: one subscriber that never reads, churn {} events/s; {} warm-up, then {} observed",
        churn_rate(),
        ms(STALL_WARMUP),
        ms(STALL_OBSERVED)
    );
    let server = bench_server(|_| {}).await;
    let churner = {
        let store = server.store.clone();
        let mut workload = bench_workload();
        tokio::spawn(async move {
            churn(&store, &mut workload, STALL_WARMUP + STALL_OBSERVED * 2).await;
        })
    };
    let rss_idle = rss_kib();
    tokio::time::sleep(STALL_WARMUP).await;
    let rss_start = rss_kib();
    let stalled = open_stalled_stream(&server).await;
    let opened = Instant::now();
    let mut evicted_at = None;
    let mut rss_at_eviction = 0;
    let mut samples = Vec::new();
    let mut line = String::new();
    let ticks = STALL_OBSERVED.as_millis() / 100;
    for tick in 1..=ticks {
        tokio::time::sleep_until((opened + Duration::from_millis(tick as u64 * 100)).into()).await;
        let stats: ServerStats = server.store.stats();
        if evicted_at.is_none() && stats.subscribers_evicted > 0 {
            evicted_at = Some(opened.elapsed());
            rss_at_eviction = rss_kib();
        }
        if tick % 10 == 0 {
            let rss = rss_kib();
            samples.push(rss);
            line.push_str(&format!(
                " {}s:{}{}",
                tick / 10,
                rss / 1024,
                if stats.subscribers_evicted > 0 {
                    "e"
                } else {
                    ""
                }
            ));
        }
    }
    let stats = server.store.stats();
    churner.abort();
    drop(stalled);
    server.stop().await;
    let peak = samples.iter().copied().max().unwrap_or(0).max(rss_start);
    let end = samples.last().copied().unwrap_or(rss_start);
    println!(
        "RSS MiB each second after the stream opened (e = evicted by then):{line}\nidle {} MiB, at open {} MiB, peak {} MiB, end {} MiB; evicted {}; open streams at the end {}; stream errors {}",
        rss_idle / 1024,
        rss_start / 1024,
        peak / 1024,
        end / 1024,
        evicted_at.map_or("never".to_owned(), |at| format!("after {}", ms(at))),
        stats.subscribers,
        stats.stream_errors
    );
    let after_eviction = evicted_at.map(|_| end as i64 - rss_at_eviction as i64);
    // Bounded: once evicted, the process stops growing (allocator noise aside).
    let bounded = after_eviction.is_some_and(|growth| growth < 16 * 1024);
    vec![
        Row::info(
            "stalled",
            "RSS at open / peak / end",
            format!(
                "{} / {} / {} MiB",
                rss_start / 1024,
                peak / 1024,
                end / 1024
            ),
        ),
        Row::new(
            "stalled",
            "evicted after",
            evicted_at.map_or("never".to_owned(), ms),
            "evicted",
            evicted_at.is_some(),
        ),
        Row::new(
            "stalled",
            "RSS growth from eviction to end",
            after_eviction.map_or("n/a".to_owned(), |kib| format!("{:+} MiB", kib / 1024)),
            "no growth (< 16 MiB)",
            bounded,
        ),
    ]
}

/// A raw `TaggerStreamEntities` stream with a valid token, never read: the
/// response headers arrive, then the HTTP/2 windows fill and stay full.
async fn open_stalled_stream(server: &TestServer) -> tonic::Streaming<StreamTagsResponse> {
    let channel = datadog_client::pinned_channel(server.addr, &server.cert_path()).await;
    let mut request = tonic::Request::new(StreamTagsRequest {
        cardinality: Cardinality::High.to_proto() as i32,
        streaming_id: "bench:stalled".to_owned(),
        ..StreamTagsRequest::default()
    });
    let bearer = format!("Bearer {}", server.token())
        .parse()
        .expect("a token is a valid header");
    request.metadata_mut().insert("authorization", bearer);
    AgentSecureClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .tagger_stream_entities(request)
        .await
        .expect("the stream opens")
        .into_inner()
}
