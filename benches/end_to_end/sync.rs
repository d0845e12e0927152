//! Scenario `sync`: fresh clients' initial syncs of the whole store.

use std::hint::black_box;
use std::time::{Duration, Instant};

use prost::Message as _;
use remote_tagger::proto::model::StreamTagsResponse;

use crate::report::{MIB, Row, check, cpu_time, max, median, min, ms, rss_kib};
use crate::snapshot_responses::snapshot_responses;
use crate::support::{
    ENTITIES, PATIENCE, SEED, SYNC_RUNS, bench_server, bench_workload, fresh_sync,
};

/// Scenario 1: a fresh client's sync of the whole store, against prost
/// decoding the same snapshot bytes (the floor any gRPC client pays).
pub async fn initial_sync() -> Vec<Row> {
    println!("\n== sync: initial sync of {ENTITIES} entities, {SYNC_RUNS} fresh clients");
    let server = bench_server(|_| {}).await;
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut rss_growth = Vec::new();
    for run in 1..=SYNC_RUNS {
        let rss_before = rss_kib();
        let cpu_before = cpu_time();
        let (tagger, wall) = fresh_sync(&server, PATIENCE)
            .await
            .expect("HANG: no initial sync");
        let cpu = cpu_time() - cpu_before;
        let entities = tagger.mirror().len();
        // The mirror is alive here: what the process grew by is roughly one
        // client's footprint (allocator reuse makes later runs smaller).
        let grown = rss_kib().saturating_sub(rss_before);
        println!(
            "run {run}: {} wall, {} process CPU, {entities} entities, RSS +{} MiB",
            ms(wall),
            ms(cpu),
            grown / 1024
        );
        check(entities == ENTITIES, "the mirror holds every entity");
        walls.push(wall);
        cpus.push(cpu);
        rss_growth.push(grown);
        tagger.stop().await;
    }
    server.stop().await;

    let chunks = snapshot_responses(bench_workload().snapshot(), SEED);
    let wire: usize = chunks.iter().map(Vec::len).sum();
    let mut decodes = Vec::new();
    for _ in 0..SYNC_RUNS {
        let started = Instant::now();
        let decoded: Vec<StreamTagsResponse> = chunks
            .iter()
            .map(|chunk| StreamTagsResponse::decode(black_box(chunk.as_slice())).expect("decodes"))
            .collect();
        decodes.push(started.elapsed());
        // Freeing is not decoding: the messages drop outside the timing.
        drop(black_box(decoded));
    }
    println!(
        "snapshot: {} responses, {:.1} MiB encoded; prost decode: median {}, min {}",
        chunks.len(),
        wire as f64 / MIB,
        ms(median(&decodes)),
        ms(min(&decodes))
    );
    let sync = median(&walls);
    let ratio = sync.as_secs_f64() / median(&decodes).as_secs_f64();
    vec![
        Row::new(
            "sync",
            "start -> synced, median (min..max)",
            format!("{} ({}..{})", ms(sync), ms(min(&walls)), ms(max(&walls))),
            "< 160 ms",
            sync < Duration::from_millis(160),
        ),
        Row::info(
            "sync",
            "process CPU per sync, median (server + client)",
            ms(median(&cpus)),
        ),
        Row::info(
            "sync",
            "snapshot wire size (encoded responses)",
            format!("{:.1} MiB in {} responses", wire as f64 / MIB, chunks.len()),
        ),
        Row::info(
            "sync",
            "prost decode of those bytes, median (min)",
            format!("{} ({})", ms(median(&decodes)), ms(min(&decodes))),
        ),
        Row::new(
            "sync",
            "sync / prost decode",
            format!("{ratio:.1}x"),
            "<= 2x",
            ratio <= 2.0,
        ),
        Row::info(
            "sync",
            "RSS growth with one synced client, first run (min)",
            format!(
                "{} MiB ({} MiB)",
                rss_growth[0] / 1024,
                rss_growth.iter().min().copied().unwrap_or(0) / 1024
            ),
        ),
    ]
}
