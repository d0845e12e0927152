//! What the scenarios share: the loaded server and its clients (the
//! fixtures of `tests/common`), the workload and its churn, and waiting.

use std::future::Future;
use std::time::{Duration, Instant};

use remote_tagger::client::{ClientStatus, RemoteTagger};
use remote_tagger::domain::EntityId;
use remote_tagger::server::{ServeConfig, Source, StoreHandle};
use remote_tagger::workload::{Workload, WorkloadConfig};

use crate::common::{TestServer, client_config};
use crate::report::check;

pub const ENTITIES: usize = 100_000;
pub const SEED: u64 = 1;
/// Fresh clients timed from `start` to synced.
pub const SYNC_RUNS: usize = 7;
/// Live churn of the fan-out and stalled scenarios: 2,000 events/s.
pub const CHURN_BATCH: usize = 20;
pub const CHURN_PERIOD: Duration = Duration::from_millis(10);
/// Only to turn a hang into a report instead of a stuck bench (100 clients
/// syncing on 2 busy cores take minutes).
pub const PATIENCE: Duration = Duration::from_secs(900);

/// The tests' server (a loopback port, its token and certificate in a
/// temporary directory), loaded with the static 100k workload: the
/// scenarios apply churn themselves, to know when each event happened.
pub async fn bench_server(tweak: impl FnOnce(&mut ServeConfig)) -> TestServer {
    TestServer::start(|config| {
        config.source = Source::Workload {
            entities: ENTITIES,
            seed: SEED,
            churn_per_sec: 0.0,
        };
        tweak(config);
    })
    .await
}

/// A client of `server` straight to it, verifying its certificate.
pub fn direct_client(server: &TestServer) -> RemoteTagger {
    RemoteTagger::start(client_config(server, &server.addr.to_string())).expect("client config")
}

/// A fresh client started and synced, and how long that took; `None` if it
/// did not sync within `limit`.
pub async fn fresh_sync(server: &TestServer, limit: Duration) -> Option<(RemoteTagger, Duration)> {
    let started = Instant::now();
    let tagger = direct_client(server);
    match tokio::time::timeout(limit, tagger.wait_synced()).await {
        Ok(()) => Some((tagger, started.elapsed())),
        Err(_) => {
            tagger.stop().await;
            None
        }
    }
}

/// The workload the servers are loaded with; churn drawn from a copy stays
/// consistent with the server's store (same seed, same events).
pub fn bench_workload() -> Workload {
    Workload::new(WorkloadConfig {
        entities: ENTITIES,
        seed: SEED,
    })
}

pub fn churn_rate() -> f64 {
    CHURN_BATCH as f64 / CHURN_PERIOD.as_secs_f64()
}

/// The events [`churn`] applies over `duration`.
pub fn churn_events(duration: Duration) -> usize {
    (duration.as_nanos() / CHURN_PERIOD.as_nanos()) as usize * CHURN_BATCH
}

/// Applies `CHURN_BATCH` events every `CHURN_PERIOD` for `duration` on an
/// absolute schedule (a late tick catches up, so the rate holds under load),
/// and returns each event's id with the instant just before its batch was
/// applied (fan-out happens inside `apply`).
pub async fn churn(
    store: &StoreHandle,
    workload: &mut Workload,
    duration: Duration,
) -> Vec<(EntityId, Instant)> {
    let started = tokio::time::Instant::now();
    let ticks = (duration.as_nanos() / CHURN_PERIOD.as_nanos()) as u32;
    let mut applied = Vec::with_capacity(churn_events(duration));
    for tick in 1..=ticks {
        tokio::time::sleep_until(started + CHURN_PERIOD * tick).await;
        let events = workload.next_events(CHURN_BATCH);
        let ids: Vec<EntityId> = events.iter().map(|event| event.id().clone()).collect();
        let at = Instant::now();
        let effective = store.apply(events);
        check(
            effective == CHURN_BATCH,
            "every churn event changes the store",
        );
        applied.extend(ids.into_iter().map(|id| (id, at)));
    }
    applied
}

/// Waits until the client's status satisfies `done`, and returns it.
pub async fn wait_status(
    tagger: &RemoteTagger,
    what: &str,
    done: impl Fn(&ClientStatus) -> bool,
) -> ClientStatus {
    let mut status = tagger.status();
    patient(what, status.wait_for(|s| done(s)))
        .await
        .expect("the driver runs")
        .clone()
}

pub async fn patient<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("HANG: waited {PATIENCE:?} for {what}"))
}
