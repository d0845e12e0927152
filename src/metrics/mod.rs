//! Prometheus exposition of the client's and the server's telemetry.
//!
//! The core, the mirror and the server keep plain counters; the collectors
//! here read them at scrape time (`RemoteTagger::status()`, the mirror's
//! `stored_by_prefix()` and `query_counts()`, `StoreHandle::stats()`), so no
//! metrics library reaches into the hot paths and a scrape always sees one
//! consistent reading per source.
//!
//! Names follow `shared/wire-spec.md` (sections 2 and 3) where it has them;
//! the rest are this project's, prefixed `tagger_client_` or `tagger_server_`.
//! Counters carry the `_total` suffix of the Prometheus convention
//! (`tagger_receives_total`), as the Datadog openmetrics check expects.
//!
//! ```no_run
//! # async fn demo(tagger: &remote_tagger::client::RemoteTagger) -> Result<(), remote_tagger::metrics::MetricsError> {
//! use remote_tagger::metrics;
//! let registry = metrics::client_registry(tagger);
//! let endpoint = metrics::MetricsEndpoint::spawn("127.0.0.1:9101".parse().unwrap(), registry).await?;
//! println!("scrape http://{}/metrics", endpoint.local_addr());
//! # Ok(()) }
//! ```

mod endpoint;

use std::fmt;
use std::sync::{Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

pub use endpoint::{DEFAULT_IDLE_TIMEOUT, METRICS_PATH, MetricsEndpoint, MetricsError};

use crate::build_info;
use crate::client::{ClientStatus, RemoteTagger};
use crate::core::ConnectionState;
use crate::domain::Cardinality;
use crate::mirror::MirrorReader;
use crate::server::{OriginResult, StoreHandle};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry's metrics in the Prometheus text format (0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// A registry with a client's metrics and the build info.
pub fn client_registry(tagger: &RemoteTagger) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ClientCollector::new(tagger)));
    registry.register_collector(Box::new(BuildInfoCollector));
    registry
}

/// A registry with a server's metrics and the build info.
pub fn server_registry(store: &StoreHandle) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector::new(store.clone())));
    registry.register_collector(Box::new(BuildInfoCollector));
    registry
}

/// The client's metrics, read from a [`RemoteTagger`] at each scrape.
#[derive(Debug)]
pub struct ClientCollector {
    status: watch::Receiver<ClientStatus>,
    /// Readers are per thread (`Send`, not `Sync`); scrapes are rare.
    mirror: Mutex<MirrorReader>,
    /// Stands in for the last message until the first arrives, so the age
    /// grows from the start instead of being absent.
    started: Instant,
}

impl ClientCollector {
    /// A collector of `tagger`'s status and mirror.
    pub fn new(tagger: &RemoteTagger) -> Self {
        Self {
            status: tagger.status(),
            mirror: Mutex::new(tagger.mirror()),
            started: Instant::now(),
        }
    }
}

impl Collector for ClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self.status.borrow().clone();
        let (stored, unknown_prefix, queries) = {
            let mirror = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
            (
                mirror.stored_by_prefix(),
                mirror.unknown_prefix_entities(),
                mirror.query_counts(),
            )
        };
        let telemetry = &status.telemetry;
        let e = &mut encoder;
        counter(
            e,
            "tagger_receives",
            "Responses received from the tagger server, keep-alives included.",
            telemetry.receives,
        )?;
        counter(
            e,
            "tagger_client_stream_errors",
            "Connect attempts that failed and streams that were lost.",
            telemetry.stream_errors,
        )?;
        counter(
            e,
            "tagger_updated_entities",
            "Entity changes applied to the mirror.",
            telemetry.updated_entities,
        )?;
        family(
            e,
            "tagger_stored_entities",
            "Entities in the mirror, by entity-ID prefix.",
            MetricType::Gauge,
            stored.iter().map(|(prefix, count)| {
                ([("source", "remote"), ("prefix", prefix.as_str())], *count)
            }),
        )?;
        // Not a `prefix` label of the family above: the names come from the
        // server, so they would make an unbounded label set.
        gauge(
            e,
            "tagger_unknown_prefix_entities",
            "Entities in the mirror whose prefix is not in this build's table (a newer Agent's); not in tagger_stored_entities.",
            unknown_prefix,
        )?;
        family(
            e,
            "tagger_queries",
            "Tag queries answered by the mirror, by cardinality and status (success, empty_tags).",
            MetricType::Counter,
            queries.iter().map(|(cardinality, status, count)| {
                (
                    [
                        ("cardinality", cardinality.as_str()),
                        ("status", status.as_str()),
                    ],
                    count,
                )
            }),
        )?;
        counter(
            e,
            "tagger_client_snapshots",
            "Complete snapshots swapped into the mirror.",
            telemetry.snapshots,
        )?;
        counter(
            e,
            "tagger_client_resumes",
            "Streams resumed without a snapshot.",
            telemetry.resumes,
        )?;
        family(
            e,
            "tagger_client_rejected_events",
            "Events skipped, by reason (malformed, or a known prefix not subscribed to).",
            MetricType::Counter,
            telemetry
                .rejected_events
                .iter()
                .map(|(reason, count)| ([("reason", *reason)], *count)),
        )?;
        gauge(
            e,
            "tagger_client_synced",
            "1 when the mirror reflects the server, else 0 (it keeps serving its last content).",
            i64::from(status.state == ConnectionState::Synced),
        )?;
        gauge(
            e,
            "tagger_client_backoff_delay_seconds",
            "While waiting to reconnect, the delay drawn for this wait; 0 when not backing off.",
            status.retry_delay.unwrap_or_default().as_secs_f64(),
        )?;
        let last_message = status
            .last_message_at
            .map_or(self.started, Instant::from_std);
        gauge(
            e,
            "tagger_client_last_message_age_seconds",
            "Seconds since the last message from the server (keep-alives included), or since the client started if none yet.",
            last_message.elapsed().as_secs_f64(),
        )
    }
}

/// The server's metrics, read from its [`StoreHandle`] at each scrape.
pub struct ServerCollector {
    store: StoreHandle,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCollector").finish_non_exhaustive()
    }
}

impl ServerCollector {
    /// A collector of the server's `store`.
    pub fn new(store: StoreHandle) -> Self {
        Self { store }
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.store.stats();
        let e = &mut encoder;
        counter(
            e,
            "tagger_server_stream_errors",
            "Streams that ended on a failed or timed-out send or an eviction.",
            stats.stream_errors,
        )?;
        gauge(
            e,
            "tagger_subscribers",
            "Streams currently open.",
            stats.subscribers,
        )?;
        counter(
            e,
            "tagger_sends",
            "Responses handed to the transport, keep-alives included.",
            stats.sends,
        )?;
        family(
            e,
            "tagger_events",
            "Events sent, by subscriber cardinality.",
            MetricType::Counter,
            Cardinality::ALL.into_iter().map(|cardinality| {
                (
                    [("cardinality", cardinality.as_str())],
                    stats.events.get(cardinality),
                )
            }),
        )?;
        counter(
            e,
            "tagger_server_keepalives",
            "Keep-alives (empty responses) among the sends.",
            stats.keepalives,
        )?;
        counter(
            e,
            "tagger_server_snapshots_sent",
            "Snapshots sent to the end.",
            stats.snapshots_sent,
        )?;
        gauge(
            e,
            "tagger_server_snapshots_in_flight",
            "Snapshots being produced now, holding a slot.",
            stats.snapshots_in_flight,
        )?;
        gauge(
            e,
            "tagger_server_snapshots_waiting",
            "Streams waiting for a snapshot slot, to start or to go on.",
            stats.snapshots_waiting,
        )?;
        gauge(
            e,
            "tagger_server_snapshots_stalled",
            "Snapshots waiting, without a slot, for their client to take a chunk.",
            stats.snapshots_stalled,
        )?;
        family(
            e,
            "tagger_server_resumes",
            "Resume requests, by result: accepted (only the missed changes sent) or refused (a snapshot sent instead).",
            MetricType::Counter,
            [
                ([("result", "accepted")], stats.resumes_accepted),
                ([("result", "refused")], stats.resumes_refused),
            ],
        )?;
        counter(
            e,
            "tagger_server_subscribers_evicted",
            "Subscribers dropped because their buffer was full.",
            stats.subscribers_evicted,
        )?;
        counter(
            e,
            "tagger_server_auth_failures",
            "Requests refused for a missing or wrong token.",
            stats.auth_failures,
        )?;
        counter(
            e,
            "tagger_server_requests_refused",
            "Requests refused at a limit (--max-subscriptions, --max-unauthenticated-requests).",
            stats.requests_refused,
        )?;
        counter(
            e,
            "tagger_server_source_errors",
            "Source problems (an unreadable or invalid entities file; the last good state is kept).",
            stats.source_errors,
        )?;
        counter(
            e,
            "tagger_server_source_skipped",
            "Host-source items skipped (a process that vanished mid-read, an unreadable or malformed file).",
            stats.source_skipped,
        )?;
        family(
            e,
            "tagger_server_origin_requests",
            "Origin requests (TaggerGenerateContainerIDFromOriginInfo), by how they were answered: container_id (named in the request), pid, inode, external_data (found through it), not_found, empty (nothing to look up), unsupported (the source knows no host).",
            MetricType::Counter,
            OriginResult::ALL.into_iter().map(|result| {
                (
                    [("result", result.as_str())],
                    stats.origin_requests.get(result),
                )
            }),
        )?;
        counter(
            e,
            "tagger_server_origin_cache_hits",
            "Origin requests answered from the cache (counted in tagger_server_origin_requests too).",
            stats.origin_cache_hits,
        )?;
        gauge(
            e,
            "tagger_server_upstream_connected",
            "Relay only: 1 while the stream from the upstream tagger is open.",
            u64::from(stats.upstream_connected),
        )?;
        gauge(
            e,
            "tagger_server_upstream_synced",
            "Relay only: 1 while the relayed store is synced with the upstream (0: serving its last mirror).",
            u64::from(stats.upstream_synced),
        )?;
        gauge(
            e,
            "tagger_server_store_revision",
            "The store's current revision.",
            stats.store_revision,
        )?;
        gauge(
            e,
            "tagger_server_store_entities",
            "Entities in the server's store.",
            stats.store_entities,
        )?;
        gauge(
            e,
            "tagger_server_store_unknown_prefix_entities",
            "Entities in the server's store whose prefix is not in this build's table (a newer Agent's).",
            stats.store_unknown_prefix_entities,
        )
    }
}

/// `remote_tagger_build_info{version,git}` = 1: which build is running.
#[derive(Debug)]
pub struct BuildInfoCollector;

impl Collector for BuildInfoCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        family(
            &mut encoder,
            "remote_tagger_build_info",
            "The running build: crate version and git describe.",
            MetricType::Gauge,
            [(
                [
                    ("version", build_info::VERSION),
                    ("git", build_info::GIT_DESCRIBE),
                ],
                1u64,
            )],
        )
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge<V: EncodeGaugeValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A labelled metric: one sample per label set.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}
