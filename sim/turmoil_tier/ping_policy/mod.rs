//! HTTP/2 PINGs against a server that enforces grpc-go's default ping
//! policy (a Datadog Agent is a grpc-go server): the real client driver
//! with its default ping settings (and, as a control, the old ones), the
//! real server with its default 9-minute keep-alive, and between them a
//! proxy that enforces the policy ([`proxy`], [`policy`]), all on turmoil's
//! network for 30 simulated minutes of an idle stream. What is checked is
//! counted: PINGs, strikes, GOAWAYs, connections, syncs, snapshots.

mod policy;
mod proxy;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use remote_tagger::client::{ClientConfig, RemoteTagger, TlsMode, TlsSettings};
use remote_tagger::core::Event;
use remote_tagger::domain::EntityEvent;
use remote_tagger::server::{
    Authenticator, DEFAULT_KEEPALIVE_INTERVAL, Epoch, Security, ServiceConfig, Store, StoreHandle,
    TaggerService, serve_incoming,
};
use remote_tagger::workload::{Workload, WorkloadConfig};

use super::TempDir;
use super::net::{TurmoilDialer, incoming};
use proxy::PingLog;

const SERVER: &str = "server";
const PROXY: &str = "proxy";
const PORT: u16 = 5001;
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// How long the client keeps its stream open, with nothing to tell it.
const IDLE: Duration = Duration::from_secs(30 * 60);

/// What one run saw.
#[derive(Debug)]
struct Outcome {
    /// Each sync of the client: whether it resumed.
    syncs: Vec<bool>,
    /// Each loss of the client's stream: why.
    losses: Vec<String>,
    snapshots_sent: u64,
    resumes_accepted: u64,
    pings: PingLog,
}

/// One client whose stream stays idle for [`IDLE`], through the enforcing
/// proxy to a server with the default service settings but its keep-alive
/// interval; `configure` sets the client's ping settings.
fn idle_stream(server_keepalive: Duration, configure: impl FnOnce(&mut ClientConfig)) -> Outcome {
    let dir = TempDir::new(0).unwrap();
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut config = ClientConfig::new(
        format!("{PROXY}:{PORT}"),
        &token_file,
        TlsSettings::new(TlsMode::InsecurePlaintext),
    );
    config.core.seed = 1;
    config.core.streaming_id = "sim:idle".into();
    configure(&mut config);

    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH)
        .simulation_duration(IDLE + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .build();
    let store: Rc<RefCell<Option<StoreHandle>>> = Rc::default();
    let log: Rc<RefCell<PingLog>> = Rc::default();
    let client_events: Rc<RefCell<Vec<Event>>> = Rc::default();

    let server_store = store.clone();
    sim.host(SERVER, move || {
        server(server_store.clone(), server_keepalive)
    });
    let proxy_log = log.clone();
    sim.host(PROXY, move || enforcing_proxy(proxy_log.clone()));
    let events = client_events.clone();
    sim.client("client", async move {
        let dialer = TurmoilDialer {
            gate: Arc::default(),
            connections: Arc::default(),
        };
        let tagger = RemoteTagger::start_with_dialer(config, Arc::new(dialer))?;
        let mut subscription = tagger.subscribe();
        let end = tokio::time::Instant::now() + IDLE;
        loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(end) => break,
                event = subscription.recv() => events.borrow_mut().push(event?),
            }
        }
        tagger.stop().await;
        Ok(())
    });
    sim.run().expect("the simulation runs to its end");

    let stats = store.borrow().as_ref().expect("the server started").stats();
    let events = client_events.take();
    Outcome {
        syncs: events
            .iter()
            .filter_map(|event| match event {
                Event::Synced { resumed, .. } => Some(*resumed),
                _ => None,
            })
            .collect(),
        losses: events
            .iter()
            .filter_map(|event| match event {
                Event::ConnectionLost { reason, .. } => Some(reason.to_string()),
                _ => None,
            })
            .collect(),
        snapshots_sent: stats.snapshots_sent,
        resumes_accepted: stats.resumes_accepted,
        pings: log.take(),
    }
}

/// The real server, plaintext, default service settings but the keep-alive
/// interval, with a small store that does not change.
async fn server(
    store_slot: Rc<RefCell<Option<StoreHandle>>>,
    keepalive_interval: Duration,
) -> turmoil::Result {
    let store = StoreHandle::new(Store::new(Epoch::from_seed(1), 1_000));
    let workload = Workload::new(WorkloadConfig {
        entities: 50,
        seed: 1,
    });
    store.apply(workload.snapshot().into_iter().map(EntityEvent::Added));
    *store_slot.borrow_mut() = Some(store.clone());
    let config = ServiceConfig {
        keepalive_interval,
        ..ServiceConfig::default()
    };
    let service = TaggerService::new(store, Authenticator::fixed(TOKEN)?, config);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    serve_incoming(
        service,
        Security::InsecurePlaintext,
        incoming(listener),
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// Accepts clients and relays each to the server through the policy.
async fn enforcing_proxy(log: Rc<RefCell<PingLog>>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let server = turmoil::net::TcpStream::connect((SERVER, PORT)).await?;
        tokio::task::spawn_local(proxy::relay(client, server, log.clone()));
    }
}

#[test]
fn an_idle_stream_with_the_default_pings_stays_up_for_30_minutes() {
    let outcome = idle_stream(DEFAULT_KEEPALIVE_INTERVAL, |_| {});
    assert_eq!(outcome.syncs, [false], "{outcome:?}");
    assert_eq!(
        (outcome.snapshots_sent, outcome.resumes_accepted),
        (1, 0),
        "{outcome:?}"
    );
    assert_eq!(outcome.pings.connections, 1, "{outcome:?}");
    // The client did ping, 5 min 10 s after each read: at 5:10, then 5:10
    // after each of the server's keep-alives (9:00, 18:00).
    assert_pinged_within_the_policy(&outcome, 3);
}

/// At least `times` PINGs, none of them a strike, none closer to the last
/// than grpc-go's `MinTime`, and the stream never lost.
fn assert_pinged_within_the_policy(outcome: &Outcome, times: usize) {
    let pings = &outcome.pings;
    assert_eq!(outcome.losses, Vec::<String>::new(), "{outcome:?}");
    assert_eq!((pings.strikes, pings.too_many_pings), (0, 0), "{outcome:?}");
    assert!(pings.pings.len() >= times, "{outcome:?}");
    assert!(
        pings.closest_pings.is_some_and(|c| c >= policy::MIN_TIME),
        "{outcome:?}"
    );
}

/// Without the server's keep-alives, PINGs come back to back at the
/// interval: the spacing rule itself is what must hold.
#[test]
fn pings_without_anything_read_in_between_keep_grpc_gos_spacing() {
    // No keep-alive from the server, and no watchdog to cut the stream.
    let outcome = idle_stream(2 * IDLE, |config| config.core.receive_timeout = 2 * IDLE);
    // One every 5 min 10 s and a round trip: 5 in 30 minutes.
    assert_pinged_within_the_policy(&outcome, 5);
}

/// The settings before this fixture existed (a PING every 20 s, idle or
/// not): the proxy must cut the stream again and again, or it proves nothing.
#[test]
fn the_old_20_second_pings_get_too_many_pings_and_the_client_resyncs() {
    let outcome = idle_stream(DEFAULT_KEEPALIVE_INTERVAL, |config| {
        config.http2_keepalive_interval = Duration::from_secs(20);
        config.http2_keepalive_while_idle = true;
    });
    let pings = &outcome.pings;
    assert!(pings.too_many_pings >= 10, "{outcome:?}");
    assert_eq!(pings.connections, pings.too_many_pings + 1, "{outcome:?}");
    // (The client reads the GOAWAY, whose last stream id is its own stream's,
    // then the end of the connection: it reports a broken pipe, not why.)
    assert_eq!(outcome.losses.len(), pings.too_many_pings, "{outcome:?}");
    // Every cut costs a new stream and a resync (a resume from our server;
    // a full snapshot from a Datadog Agent, which cannot resume).
    assert_eq!(outcome.syncs.len(), outcome.losses.len() + 1, "{outcome:?}");
    assert_eq!(
        outcome.snapshots_sent + outcome.resumes_accepted,
        outcome.syncs.len() as u64,
        "{outcome:?}"
    );
}
