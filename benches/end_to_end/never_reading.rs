//! Scenario `never-reading`: fresh syncs on an idle server, then past
//! streams that never read their snapshot.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use remote_tagger::domain::Cardinality;
use remote_tagger::proto::model::StreamTagsRequest;

use crate::common::{TestServer, datadog_client, raw_h2};
use crate::report::{Row, check, median, ms};
use crate::support::{ENTITIES, SYNC_RUNS, bench_server, fresh_sync};

/// Streams that never read their snapshot, open while fresh clients sync.
const NEVER_READING: usize = 50;
/// A fresh sync slower than this counts as starved (before the snapshot
/// slots were given back, one waited NEVER_READING / 3 send timeouts: 17 min).
const STARVED: Duration = Duration::from_secs(120);

/// Scenario 5: fresh clients' syncs on an idle server, then while
/// NEVER_READING streams are open that sent their request with the token
/// and never read a byte since (raw HTTP/2 over TLS, a 64 KiB window never
/// extended), each holding its snapshot.
pub async fn sync_past_never_reading_streams() -> Vec<Row> {
    println!(
        "\n== never-reading: {SYNC_RUNS} fresh syncs of {ENTITIES} entities idle, then past {NEVER_READING} streams that never read"
    );
    let server = bench_server(|_| {}).await;
    let idle = timed_syncs(&server, "idle").await;
    let tls = datadog_client::pinned_tls_config(&server.cert_path());
    let request = StreamTagsRequest {
        cardinality: Cardinality::High.to_proto() as i32,
        streaming_id: "bench:never-reading".to_owned(),
        ..StreamTagsRequest::default()
    }
    .encode_to_vec();
    let token = server.token();
    let mut never_reading = Vec::new();
    for _ in 0..NEVER_READING {
        let tls = datadog_client::pinned_tls(server.addr, Arc::clone(&tls))
            .await
            .expect("a TLS connection");
        let mut connection = raw_h2::RawH2::start(tls).await.expect("the preface");
        connection
            .call(raw_h2::TAGGER_STREAM, Some(&token), &request)
            .await
            .expect("the request");
        never_reading.push(connection);
    }
    // Open, and done sending what their windows take: no send for 500 ms.
    // (At least: before streams ended with their clients, the idle runs'
    // subscriptions outlived them.)
    let mut sends = server.store.stats().sends;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = server.store.stats();
        if stats.subscribers >= NEVER_READING as u64 && stats.sends == sends {
            println!(
                "{NEVER_READING} streams open, none reading: snapshots in flight {}, waiting for a slot {}",
                stats.snapshots_in_flight, stats.snapshots_waiting
            );
            break;
        }
        sends = stats.sends;
    }
    let past = timed_syncs(&server, "past the never-reading streams").await;
    let errors = server.store.stats().stream_errors;
    check(
        errors == 0,
        "no stream ended while the fresh clients synced",
    );
    drop(never_reading);
    server.stop().await;

    let median_of = |runs: &[Option<Duration>]| -> Option<Duration> {
        let synced: Vec<Duration> = runs.iter().flatten().copied().collect();
        (synced.len() == runs.len()).then(|| median(&synced))
    };
    let show = |median: Option<Duration>| median.map_or(format!("> {STARVED:?}"), ms);
    let (idle, past) = (median_of(&idle), median_of(&past));
    let ratio = idle
        .zip(past)
        .map(|(idle, past)| past.as_secs_f64() / idle.as_secs_f64());
    vec![
        Row::info(
            "never-reading",
            "sync on the idle server, median",
            show(idle),
        ),
        Row::info(
            "never-reading",
            "sync past 50 never-reading streams, median",
            show(past),
        ),
        Row::new(
            "never-reading",
            "past never-reading / idle",
            ratio.map_or("starved".to_owned(), |ratio| format!("{ratio:.2}x")),
            "<= 2x",
            ratio.is_some_and(|ratio| ratio <= 2.0),
        ),
    ]
}

/// SYNC_RUNS fresh syncs one after another, each printed; a run that does
/// not sync within STARVED is `None` and ends the series.
async fn timed_syncs(server: &TestServer, what: &str) -> Vec<Option<Duration>> {
    let mut runs = Vec::new();
    for run in 1..=SYNC_RUNS {
        let Some((tagger, wall)) = fresh_sync(server, STARVED).await else {
            println!("{what}, run {run}: no sync within {STARVED:?}");
            runs.push(None);
            break;
        };
        let entities = tagger.mirror().len();
        println!(
            "{what}, run {run}: {} to synced, {entities} entities",
            ms(wall)
        );
        check(entities == ENTITIES, "the mirror holds every entity");
        runs.push(Some(wall));
        tagger.stop().await;
    }
    runs
}
