//! The gRPC service: `TaggerStreamEntities`, `TaggerFetchEntity` and
//! `TaggerGenerateContainerIDFromOriginInfo` of `datadog.api.v1.AgentSecure`,
//! over a [`StoreHandle`] (origins: see [`super::origin`]).
//!
//! Each stream runs in its own task that writes into a one-slot channel
//! tonic reads from; a send that cannot be queued within the send timeout
//! means the client stopped reading, and ends the stream.
//!
//! The task also watches for tonic dropping the channel's receiver (the
//! client cancelled the stream or its connection closed) and then ends at
//! once, unsubscribing, whether or not anything was due to be sent.
//!
//! Snapshots are produced at most `max_concurrent_snapshots` at once, to
//! bound the CPU and memory of initial syncs; a stream holds its slot while
//! its client keeps taking what it produces, and gives it back once its
//! client has taken nothing for `snapshot_stall_grace` (see
//! `send_snapshot`), so clients that never read delay no one for long. At most `max_subscriptions` streams are
//! open at once; one more is refused with RESOURCE_EXHAUSTED.
//!
//! Every end the server chooses carries an error status saying why, never
//! OK: Datadog's Rust client reopens at once after an OK end, where an
//! error makes it back off (so does ours).
//!
//! What each response holds and the revision it carries (a resume point)
//! are the `frames` module's: this service decides when to send.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::connections::Admission;
use super::frames::{self, ChangeBatch, Framer, SnapshotResponses};
use super::hub::{ResumeRefused, Stop, StoreHandle};
use super::origin::OriginResolver;
use super::stats::{GaugeGuard, Telemetry, increment};
use super::store::PrefixFilter;
use crate::defaults;
use crate::domain::{Cardinality, EntityId};
use crate::origin::OriginInfo;
use crate::proto::encoded::EncodedStreamTagsResponse;
use crate::proto::encoded::agent_secure_server::{AgentSecure, AgentSecureServer};
use crate::proto::model as pb;

/// Tunables of the streaming service; `Default` is the Datadog Agent's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Largest gRPC message a client accepts; responses hold at most half of
    /// it in encoded events, and at most 64 KiB (see [`Self::chunk_budget`]).
    pub max_message_size: usize,
    /// An empty response is sent after this long without a send, so clients
    /// (whose receive watchdog is 10 min) know the stream is alive.
    pub keepalive_interval: Duration,
    /// A response that cannot be handed to the transport within this long
    /// ends the stream.
    pub send_timeout: Duration,
    /// Change batches buffered per subscriber; a subscriber whose buffer is
    /// full is evicted.
    pub subscriber_buffer: usize,
    /// Snapshots being produced at once (at least 1); further streams wait.
    /// A stream whose client has taken no chunk for
    /// [`Self::snapshot_stall_grace`] holds no slot until it does.
    pub max_concurrent_snapshots: usize,
    /// How long a snapshot's stream keeps its slot while its client takes
    /// nothing. A client that reads, however slowly, waits this much less
    /// between two chunks, and keeps the slot: were the slot given back at
    /// every full flow-control window, every waiting stream would subscribe
    /// at once, and their snapshots would trickle out together while their
    /// live buffers filled (100 clients in one Go process were evicted over
    /// and over, issue 20).
    pub snapshot_stall_grace: Duration,
    /// At shutdown, how long open connections get to close before they are
    /// abandoned (a client that stopped reading never closes).
    pub shutdown_grace: Duration,
    /// Tagger streams served at once over all connections (at least 1); one
    /// more is refused with RESOURCE_EXHAUSTED. Each may hold a snapshot and
    /// HTTP/2 buffers while its client does not read, so this bounds them.
    pub max_subscriptions: usize,
    /// HTTP/2 streams one connection may have open at once, advertised as
    /// its `SETTINGS_MAX_CONCURRENT_STREAMS`; HTTP/2 refuses more.
    pub max_streams_per_connection: u32,
    /// Requests that need no token (health checks and watches, reflection)
    /// served at once over all connections (at least 1); one more is
    /// refused with RESOURCE_EXHAUSTED.
    pub max_unauthenticated_requests: usize,
    /// A connection that has not sent an authenticated request this long
    /// after it was accepted (its TLS handshake included) is closed, unless
    /// a request that needs no token is still in flight on it: then once
    /// the last one ends.
    pub first_request_timeout: Duration,
    /// TLS handshakes in progress at once (at least 1); accepting pauses at
    /// the limit, so silent peers cannot take every file descriptor.
    pub max_tls_handshakes: usize,
}

/// Default of [`ServiceConfig::max_message_size`]: Datadog's 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = defaults::MAX_MESSAGE_SIZE;
/// Default of [`ServiceConfig::keepalive_interval`]: a Datadog Agent's.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = defaults::SERVER_KEEPALIVE_INTERVAL;
/// Default of [`ServiceConfig::send_timeout`]: a Datadog Agent's.
pub const DEFAULT_SEND_TIMEOUT: Duration = defaults::SEND_TIMEOUT;
/// Default of [`ServiceConfig::subscriber_buffer`], in change batches.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 1000;
/// Default of [`ServiceConfig::max_concurrent_snapshots`].
pub const DEFAULT_MAX_CONCURRENT_SNAPSHOTS: usize = defaults::MAX_CONCURRENT_SNAPSHOTS;
/// Default of [`ServiceConfig::snapshot_stall_grace`]: far longer than a
/// reading client's pause between two 64 KiB chunks,
/// even on a loaded machine; short beside the send timeout.
pub const DEFAULT_SNAPSHOT_STALL_GRACE: Duration = Duration::from_secs(1);
/// Default of [`ServiceConfig::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A node's Agent processes and relays are a few dozen clients at most.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1_000;
/// A tagger client opens one stream per connection; HTTP/2 advises at
/// least 100.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Probes and `grpcurl` make a handful of requests.
pub const DEFAULT_MAX_UNAUTHENTICATED_REQUESTS: usize = 64;
/// Clients send their request as soon as they are connected.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A handshake takes milliseconds: more at once is a flood.
pub const DEFAULT_MAX_TLS_HANDSHAKES: usize = 128;

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
            max_concurrent_snapshots: DEFAULT_MAX_CONCURRENT_SNAPSHOTS,
            snapshot_stall_grace: DEFAULT_SNAPSHOT_STALL_GRACE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_unauthenticated_requests: DEFAULT_MAX_UNAUTHENTICATED_REQUESTS,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            max_tls_handshakes: DEFAULT_MAX_TLS_HANDSHAKES,
        }
    }
}

impl ServiceConfig {
    /// The summed size of encoded events at which a response is cut (the
    /// first event of a response always goes, however large).
    pub fn chunk_budget(&self) -> usize {
        frames::chunk_budget(self.max_message_size)
    }
}

/// Live change batches drained into one round of responses at most: enough
/// to coalesce a burst of small batches, few enough to keep latency low.
const MAX_COALESCED_BATCHES: usize = 64;

/// The tagger service; cheap to clone (shared state).
#[derive(Clone)]
pub struct TaggerService {
    inner: Arc<Inner>,
}

struct Inner {
    store: StoreHandle,
    auth: Authenticator,
    config: ServiceConfig,
    snapshot_slots: Semaphore,
    /// One permit per stream that may be open ([`ServiceConfig::max_subscriptions`]).
    subscriptions: Arc<Semaphore>,
    origins: OriginResolver,
}

impl TaggerService {
    /// A service of `store` that admits requests `auth` accepts. Its store
    /// comes from no host: origin requests get no container (see
    /// [`Self::with_origins`]).
    pub fn new(store: StoreHandle, auth: Authenticator, config: ServiceConfig) -> Self {
        Self::with_origins(
            store,
            auth,
            config,
            OriginResolver::unsupported("in-process"),
        )
    }

    /// A service that answers origin requests with `origins`.
    pub fn with_origins(
        store: StoreHandle,
        auth: Authenticator,
        config: ServiceConfig,
        origins: OriginResolver,
    ) -> Self {
        let slots = config.max_concurrent_snapshots.max(1);
        let subscriptions = config.max_subscriptions.max(1);
        Self {
            inner: Arc::new(Inner {
                store,
                auth,
                config,
                snapshot_slots: Semaphore::new(slots),
                subscriptions: Arc::new(Semaphore::new(subscriptions)),
                origins,
            }),
        }
    }

    /// The store it serves.
    pub fn store(&self) -> &StoreHandle {
        &self.inner.store
    }

    /// The limits and timeouts it runs with.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The tonic service. No encoding limit: a single entity larger than the
    /// chunk budget still goes out alone (the client's limit decides).
    pub fn into_server(self) -> AgentSecureServer<Self> {
        AgentSecureServer::new(self).max_encoding_message_size(usize::MAX)
    }

    /// Checks the request's token; once one passes, its connection is no
    /// longer subject to the first-request timeout.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let result = self.inner.auth.check(request.metadata()).await;
        match &result {
            Ok(()) => {
                if let Some(admission) = request.extensions().get::<Admission>() {
                    admission.authenticated();
                }
            }
            Err(_) => increment(&self.inner.store.telemetry().auth_failures),
        }
        result
    }

    /// A place among the [`ServiceConfig::max_subscriptions`] streams.
    fn subscription_place(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.inner
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                increment(&self.inner.store.telemetry().requests_refused);
                Status::resource_exhausted(format!(
                    "the server already serves its limit of {} tagger streams (--max-subscriptions); retry later",
                    self.inner.config.max_subscriptions.max(1)
                ))
            })
    }
}

fn invalid_cardinality(value: i32) -> Status {
    Status::invalid_argument(format!(
        "invalid cardinality {value} (expected LOW=0, ORCHESTRATOR=1 or HIGH=2)"
    ))
}

/// What a client asked for, validated.
struct StreamRequest {
    cardinality: Cardinality,
    filter: PrefixFilter,
    /// Epoch and revision to resume after, if the client sent them.
    resume: Option<(String, u64)>,
}

impl StreamRequest {
    fn parse(request: pb::StreamTagsRequest) -> Result<Self, Status> {
        let cardinality = Cardinality::from_proto(request.cardinality)
            .map_err(|_| invalid_cardinality(request.cardinality))?;
        let resume = (!request.resume_epoch.is_empty())
            .then_some((request.resume_epoch, request.resume_revision));
        Ok(Self {
            cardinality,
            filter: PrefixFilter::from_request(&request.prefixes),
            resume,
        })
    }
}

type ResponseSender = mpsc::Sender<EncodedStreamTagsResponse>;

/// One stream's responses as tonic reads them: whatever the stream's task
/// sent, then the status it ended with. The task hands its status over
/// beside the channel rather than through it, so the status needs no free
/// slot: a client that stopped reading still gets it after the responses
/// queued before it.
#[derive(Debug)]
pub struct TaggerResponses {
    responses: mpsc::Receiver<EncodedStreamTagsResponse>,
    /// The ending status; `None` once it was yielded.
    end: Option<oneshot::Receiver<Status>>,
}

impl TaggerResponses {
    fn new() -> (Self, ResponseSender, oneshot::Sender<Status>) {
        // One slot: the task learns at once when tonic stops taking
        // responses, which is what the send timeout measures.
        let (responses_tx, responses) = mpsc::channel(1);
        let (end_tx, end) = oneshot::channel();
        let stream = Self {
            responses,
            end: Some(end),
        };
        (stream, responses_tx, end_tx)
    }
}

impl Stream for TaggerResponses {
    type Item = Result<EncodedStreamTagsResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(end) = this.end.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(response) = std::task::ready!(this.responses.poll_recv(cx)) {
            return Poll::Ready(Some(Ok(response)));
        }
        let status = std::task::ready!(Pin::new(end).poll(cx)).unwrap_or_else(|_| {
            // The task is gone without a word: it panicked.
            Status::internal("tagger stream ended unexpectedly on the server; reconnect to resync")
        });
        this.end = None;
        Poll::Ready(Some(Err(status)))
    }
}

#[tonic::async_trait]
impl AgentSecure for TaggerService {
    type TaggerStreamEntitiesStream = TaggerResponses;

    async fn tagger_stream_entities(
        &self,
        request: Request<pb::StreamTagsRequest>,
    ) -> Result<Response<Self::TaggerStreamEntitiesStream>, Status> {
        self.authenticate(&request).await?;
        let request = request.into_inner();
        let streaming_id = request.streaming_id.clone();
        let request = StreamRequest::parse(request)?;
        let place = self.subscription_place()?;
        tracing::debug!(
            streaming_id,
            cardinality = %request.cardinality,
            resume = request.resume.is_some(),
            "tagger stream opened"
        );
        let (responses, sender, end) = TaggerResponses::new();
        tokio::spawn(
            self.clone()
                .stream(request, sender, end, streaming_id, place),
        );
        Ok(Response::new(responses))
    }

    async fn tagger_fetch_entity(
        &self,
        request: Request<pb::FetchEntityRequest>,
    ) -> Result<Response<pb::FetchEntityResponse>, Status> {
        self.authenticate(&request).await?;
        let request = request.into_inner();
        let wire_id = request
            .id
            .ok_or_else(|| Status::invalid_argument(r#"missing "id" parameter"#))?;
        let cardinality = Cardinality::from_proto(request.cardinality)
            .map_err(|_| invalid_cardinality(request.cardinality))?;
        // An id the store cannot hold (empty prefix or uid) is simply an
        // unknown entity: empty tags, not an error.
        let tags = EntityId::from_proto(&wire_id)
            .ok()
            .and_then(|id| self.inner.store.entity(&id))
            .map(|stored| stored.entity().tags(cardinality))
            .unwrap_or_default();
        Ok(Response::new(pb::FetchEntityResponse {
            id: Some(wire_id),
            cardinality: request.cardinality,
            tags,
        }))
    }

    /// Every request past authentication gets an answer, empty when no
    /// container is found (see [`crate::server::OriginResolver`]).
    async fn tagger_generate_container_id_from_origin_info(
        &self,
        request: Request<pb::GenerateContainerIdFromOriginInfoRequest>,
    ) -> Result<Response<pb::GenerateContainerIdFromOriginInfoResponse>, Status> {
        self.authenticate(&request).await?;
        let origin = OriginInfo::from_proto(request.get_ref());
        let container_id = self.inner.origins.answer(&origin, &self.inner.store).await;
        Ok(Response::new(
            pb::GenerateContainerIdFromOriginInfoResponse { container_id },
        ))
    }
}

/// How a stream ended. Streams have no natural end: they stop on one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The client closed the stream or the connection.
    ClientGone,
    /// A response could not be handed over within the send timeout.
    SendTimeout,
    /// The subscriber's buffer overflowed.
    Evicted,
    Shutdown,
}

/// What can end a stream from the server side while it sends or waits.
struct Halt {
    store: StoreHandle,
    /// Set once subscribed: the hub's eviction or shutdown notice.
    subscription: Option<oneshot::Receiver<Stop>>,
}

impl Halt {
    async fn wait(&mut self) -> StreamEnd {
        match &mut self.subscription {
            Some(stop) => match stop.await {
                Ok(Stop::Evicted) => StreamEnd::Evicted,
                // A hub that drops a subscription without a reason is closing.
                Ok(Stop::Shutdown) | Err(_) => StreamEnd::Shutdown,
            },
            None => {
                self.store.closed().await;
                StreamEnd::Shutdown
            }
        }
    }
}

/// The sending end of one stream, with what makes its responses.
struct Sink<'a> {
    responses: ResponseSender,
    config: &'a ServiceConfig,
    telemetry: &'a Telemetry,
    framer: Framer,
    last_send: Instant,
    /// Store revision the client holds everything of (for this filter and
    /// cardinality); keep-alives carry it. 0 until the first sync.
    synced_revision: u64,
}

impl Sink<'_> {
    async fn send(
        &mut self,
        response: EncodedStreamTagsResponse,
        halt: &mut Halt,
    ) -> Result<(), StreamEnd> {
        let events = response.events.len();
        room(&self.responses, self.config.send_timeout, halt)
            .await?
            .send(response);
        self.last_send = Instant::now();
        increment(&self.telemetry.sends);
        self.telemetry
            .count_events(self.framer.cardinality(), events);
        Ok(())
    }

    /// Whether a response can be handed over at once: tonic took the last.
    fn has_room(&self) -> bool {
        self.responses.capacity() > 0
    }

    /// Waits until a response can be handed over, up to `limit`: false if
    /// there is still no room then.
    async fn room_within(&self, limit: Duration, halt: &mut Halt) -> Result<bool, StreamEnd> {
        // The room stays: nothing else sends on this stream.
        match room(&self.responses, limit, halt).await {
            Ok(_room) => Ok(true),
            Err(StreamEnd::SendTimeout) => Ok(false),
            Err(end) => Err(end),
        }
    }

    /// Waits until a response can be handed over, within what is left of
    /// the send timeout after `waited`.
    async fn wait_for_room(&self, waited: Duration, halt: &mut Halt) -> Result<(), StreamEnd> {
        let left = self.config.send_timeout.saturating_sub(waited);
        room(&self.responses, left, halt).await.map(drop)
    }

    /// Resolves once the client is gone: tonic dropped the responses when
    /// the stream was cancelled or its connection closed.
    async fn client_gone(&self) {
        self.responses.closed().await
    }

    fn keepalive_due(&self) -> Instant {
        self.last_send + self.config.keepalive_interval
    }

    async fn send_keepalive(&mut self, halt: &mut Halt) -> Result<(), StreamEnd> {
        let keepalive = self.framer.keepalive(self.synced_revision);
        self.send(keepalive, halt).await?;
        increment(&self.telemetry.keepalives);
        Ok(())
    }

    /// Sends the changes of `batches` (those matching `filter`, reduced to the stream's
    /// cardinality) in chunks; afterwards the client is synced up to
    /// `end_revision`. With `resumed`, the first response is sent even when
    /// nothing matches, flagged as the start of a resumed stream.
    async fn send_changes(
        &mut self,
        batches: &[ChangeBatch],
        end_revision: u64,
        filter: &PrefixFilter,
        resumed: bool,
        halt: &mut Halt,
    ) -> Result<(), StreamEnd> {
        let responses =
            self.framer
                .changes(batches, filter, self.synced_revision, end_revision, resumed);
        for (response, synced_revision) in responses {
            self.send(response, halt).await?;
            self.synced_revision = synced_revision;
        }
        self.synced_revision = end_revision;
        Ok(())
    }
}

/// Room for one response in `responses`, waited for up to `timeout`.
async fn room<'a>(
    responses: &'a ResponseSender,
    timeout: Duration,
    halt: &mut Halt,
) -> Result<mpsc::Permit<'a, EncodedStreamTagsResponse>, StreamEnd> {
    let reserved = tokio::select! {
        biased;
        end = halt.wait() => return Err(end),
        reserved = tokio::time::timeout(timeout, responses.reserve()) => reserved,
    };
    match reserved {
        Ok(Ok(room)) => Ok(room),
        Ok(Err(_)) => Err(StreamEnd::ClientGone),
        Err(_) => Err(StreamEnd::SendTimeout),
    }
}

/// A snapshot slot held; the in-flight gauge counts it.
struct SnapshotSlot<'a> {
    _permit: SemaphorePermit<'a>,
    _in_flight: GaugeGuard<'a>,
}

impl TaggerService {
    /// Runs one stream to its end, then hands tonic the status saying why
    /// and gives its `place` back.
    async fn stream(
        self,
        request: StreamRequest,
        responses: ResponseSender,
        end_status: oneshot::Sender<Status>,
        streaming_id: String,
        place: OwnedSemaphorePermit,
    ) {
        let inner = &*self.inner;
        let config = &inner.config;
        let telemetry = inner.store.telemetry();
        let _subscriber = GaugeGuard::raise(&telemetry.subscribers);
        let mut sink = Sink {
            responses,
            config,
            telemetry,
            framer: Framer::new(
                inner.store.epoch(),
                request.cardinality,
                config.chunk_budget(),
            ),
            last_send: Instant::now(),
            synced_revision: 0,
        };
        let end = self.run_stream(&request, &mut sink).await;
        let status = match end {
            StreamEnd::ClientGone => {
                tracing::debug!(streaming_id, "tagger stream closed by the client");
                // Nobody is left to read it.
                Status::cancelled("the client closed the stream")
            }
            StreamEnd::SendTimeout => {
                increment(&telemetry.stream_errors);
                tracing::warn!(
                    streaming_id,
                    timeout = ?config.send_timeout,
                    "tagger stream ended: the client did not take a response within the send timeout"
                );
                Status::deadline_exceeded(format!(
                    "the client did not take a response within the {:?} send timeout; reconnect to resync",
                    config.send_timeout
                ))
            }
            StreamEnd::Evicted => {
                increment(&telemetry.stream_errors);
                tracing::warn!(
                    streaming_id,
                    buffer = config.subscriber_buffer,
                    "tagger stream ended: the subscriber fell behind and was evicted"
                );
                Status::resource_exhausted(format!(
                    "the subscriber fell behind: more than {} change batches were waiting for it; reconnect to resync",
                    config.subscriber_buffer.max(1)
                ))
            }
            StreamEnd::Shutdown => {
                tracing::debug!(streaming_id, "tagger stream ended: server shutting down");
                Status::unavailable("the tagger server is shutting down; reconnect later")
            }
        };
        // Set before the responses' sender goes (with `sink`), so the stream
        // finds it once the responses before it are read.
        let _ = end_status.send(status);
        drop(place);
    }

    async fn run_stream(&self, request: &StreamRequest, sink: &mut Sink<'_>) -> StreamEnd {
        let inner = &*self.inner;
        let store = &inner.store;
        let telemetry = store.telemetry();
        let buffer = inner.config.subscriber_buffer;

        if let Some((epoch, revision)) = &request.resume {
            match store.subscribe_resuming(epoch, *revision, buffer) {
                Ok(resumed) => {
                    increment(&telemetry.resumes_accepted);
                    let mut halt = Halt {
                        store: store.clone(),
                        subscription: Some(resumed.subscription.stop),
                    };
                    sink.synced_revision = *revision;
                    if let Err(end) = sink
                        .send_changes(
                            &[resumed.changes],
                            resumed.revision,
                            &request.filter,
                            true,
                            &mut halt,
                        )
                        .await
                    {
                        return end;
                    }
                    return live(
                        resumed.subscription.batches,
                        &request.filter,
                        sink,
                        &mut halt,
                    )
                    .await;
                }
                Err(ResumeRefused::Closed) => return StreamEnd::Shutdown,
                Err(ResumeRefused::NotInLog) => increment(&telemetry.resumes_refused),
            }
        }

        let mut halt = Halt {
            store: store.clone(),
            subscription: None,
        };
        let slot = match self.snapshot_slot(sink, &mut halt, true).await {
            Ok(slot) => slot,
            Err(end) => return end,
        };
        let Some((snapshot, subscription)) = store.subscribe_with_snapshot(&request.filter, buffer)
        else {
            return StreamEnd::Shutdown;
        };
        halt.subscription = Some(subscription.stop);
        let revision = snapshot.revision;
        let responses = sink.framer.snapshot(snapshot);
        if let Err(end) = self.send_snapshot(responses, slot, sink, &mut halt).await {
            return end;
        }
        increment(&telemetry.snapshots_sent);
        sink.synced_revision = revision;
        live(subscription.batches, &request.filter, sink, &mut halt).await
    }

    /// Sends a snapshot's `responses`, producing each with a snapshot slot
    /// held. When the client has not taken the last chunk within the stall
    /// grace, the slot goes back while the stream waits for it (up to the
    /// send timeout), and is taken again to go on: a client that does not
    /// read keeps no slot from the others for long. What it keeps is its
    /// snapshot, a pointer to each entity not sent yet (and so those
    /// entities' versions), until the send timeout; `max_subscriptions`
    /// bounds how many streams do.
    async fn send_snapshot(
        &self,
        mut responses: SnapshotResponses,
        slot: SnapshotSlot<'_>,
        sink: &mut Sink<'_>,
        halt: &mut Halt,
    ) -> Result<(), StreamEnd> {
        let telemetry = self.inner.store.telemetry();
        let mut slot = Some(slot);
        let grace = self.inner.config.snapshot_stall_grace;
        loop {
            if !sink.has_room() && !sink.room_within(grace, halt).await? {
                slot = None;
                let _stalled = GaugeGuard::raise(&telemetry.snapshots_stalled);
                sink.wait_for_room(grace, halt).await?;
            }
            if slot.is_none() {
                slot = Some(self.snapshot_slot(sink, halt, false).await?);
            }
            // Encoded here, with the slot held.
            let Some(response) = responses.next() else {
                return Ok(());
            };
            let complete = response.snapshot_complete;
            sink.send(response, halt).await?;
            if complete {
                return Ok(());
            }
        }
    }

    /// Waits for one of the snapshot slots. A stream that has to wait for
    /// its `first` gets an empty response at once (clients must not wait for
    /// headers) and keep-alives while it waits.
    async fn snapshot_slot(
        &self,
        sink: &mut Sink<'_>,
        halt: &mut Halt,
        first: bool,
    ) -> Result<SnapshotSlot<'_>, StreamEnd> {
        let telemetry = self.inner.store.telemetry();
        let slots = &self.inner.snapshot_slots;
        let permit = match slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = GaugeGuard::raise(&telemetry.snapshots_waiting);
                if first {
                    sink.send(sink.framer.placeholder(), halt).await?;
                }
                let acquire = slots.acquire();
                tokio::pin!(acquire);
                loop {
                    tokio::select! {
                        biased;
                        end = halt.wait() => return Err(end),
                        () = sink.client_gone() => return Err(StreamEnd::ClientGone),
                        // The semaphore is never closed; treat it like a shutdown anyway.
                        permit = &mut acquire => break permit.map_err(|_| StreamEnd::Shutdown)?,
                        () = tokio::time::sleep_until(sink.keepalive_due()), if first => {
                            sink.send_keepalive(halt).await?;
                        }
                    }
                }
            }
        };
        Ok(SnapshotSlot {
            _permit: permit,
            _in_flight: GaugeGuard::raise(&telemetry.snapshots_in_flight),
        })
    }
}

/// Forwards live change batches until the stream ends, with keep-alives when
/// idle.
async fn live(
    mut batches: mpsc::Receiver<ChangeBatch>,
    filter: &PrefixFilter,
    sink: &mut Sink<'_>,
    halt: &mut Halt,
) -> StreamEnd {
    let mut pending: Vec<ChangeBatch> = Vec::new();
    loop {
        let received = tokio::select! {
            biased;
            end = halt.wait() => return end,
            () = sink.client_gone() => return StreamEnd::ClientGone,
            batch = batches.recv() => batch,
            () = tokio::time::sleep_until(sink.keepalive_due()) => {
                if let Err(end) = sink.send_keepalive(halt).await {
                    return end;
                }
                continue;
            }
        };
        // A closed channel means the hub dropped us; it said why first.
        let Some(batch) = received else {
            return halt.wait().await;
        };
        pending.push(batch);
        while pending.len() < MAX_COALESCED_BATCHES
            && let Ok(batch) = batches.try_recv()
        {
            pending.push(batch);
        }
        let end_revision = pending
            .iter()
            .rev()
            .find_map(|batch| batch.last())
            .map_or(sink.synced_revision, |change| change.revision);
        if let Err(end) = sink
            .send_changes(&pending, end_revision, filter, false, halt)
            .await
        {
            return end;
        }
        pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;
    use tonic::Code;

    use super::*;

    fn response(revision: u64) -> EncodedStreamTagsResponse {
        EncodedStreamTagsResponse {
            revision,
            ..Default::default()
        }
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A service with one snapshot slot over a store of `entities` entities
    /// of 16 KiB each: four to a chunk.
    fn one_slot_service(entities: usize) -> TaggerService {
        let store = StoreHandle::new(super::super::Store::new(
            super::super::Epoch::from_seed(1),
            10,
        ));
        let tag = "t".repeat(16 * 1024);
        store.apply((0..entities).map(|i| {
            let mut entity =
                crate::domain::Entity::new(EntityId::parse(&format!("process://{i}")).unwrap());
            entity.high = vec![tag.clone()];
            crate::domain::EntityEvent::Added(entity)
        }));
        let config = ServiceConfig {
            max_concurrent_snapshots: 1,
            ..ServiceConfig::default()
        };
        TaggerService::new(store, Authenticator::fixed(TOKEN).unwrap(), config)
    }

    /// A stream of the whole store, run as tonic would run it.
    fn open(service: &TaggerService) -> TaggerResponses {
        let (responses, sender, end) = TaggerResponses::new();
        let request = StreamRequest {
            cardinality: Cardinality::High,
            filter: PrefixFilter::all(),
            resume: None,
        };
        let place = service.subscription_place().unwrap();
        tokio::spawn(
            service
                .clone()
                .stream(request, sender, end, "test".to_owned(), place),
        );
        responses
    }

    async fn wait_for_stats(
        service: &TaggerService,
        done: impl Fn(&super::super::ServerStats) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done(&service.store().stats()) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the stats reached the state awaited");
    }

    /// Reads up to the response that completes the snapshot; its events.
    async fn read_snapshot(stream: &mut TaggerResponses) -> usize {
        let mut events = 0;
        loop {
            let response = stream.next().await.unwrap().unwrap();
            events += response.events.len();
            if response.snapshot_complete {
                return events;
            }
        }
    }

    #[tokio::test]
    async fn a_stream_waits_for_a_slot_with_a_placeholder_then_gets_its_snapshot() {
        let service = one_slot_service(3);
        let held = service.inner.snapshot_slots.try_acquire().unwrap();
        let mut stream = open(&service);
        // Answered at once, with an empty placeholder, not with the snapshot.
        let placeholder = stream.next().await.unwrap().unwrap();
        assert!(placeholder.events.is_empty() && !placeholder.snapshot_complete);
        assert_eq!(placeholder.revision, 0);
        wait_for_stats(&service, |s| s.snapshots_waiting == 1).await;

        drop(held);
        assert_eq!(read_snapshot(&mut stream).await, 3);
        wait_for_stats(&service, |s| {
            (s.snapshots_sent, s.snapshots_waiting, s.snapshots_in_flight) == (1, 0, 0)
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_ends_a_stream_waiting_for_a_slot_with_unavailable() {
        let service = one_slot_service(3);
        let _held = service.inner.snapshot_slots.try_acquire().unwrap();
        let mut stream = open(&service);
        stream.next().await.unwrap().unwrap();
        wait_for_stats(&service, |s| s.snapshots_waiting == 1).await;

        service.store().close();
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::Unavailable,
                "the tagger server is shutting down; reconnect later"
            )
        );
        wait_for_stats(&service, |s| s.snapshots_waiting == 0).await;
    }

    /// The one slot goes to whoever produces: a stream whose client has not
    /// taken its first chunk within the stall grace gives it back, and takes
    /// it again once the client reads.
    #[tokio::test]
    async fn a_stream_whose_client_does_not_read_gives_its_slot_back_until_it_does() {
        let service = one_slot_service(40);
        let mut stalled = open(&service);
        wait_for_stats(&service, |s| {
            (s.snapshots_stalled, s.snapshots_in_flight) == (1, 0)
        })
        .await;

        let mut reading = open(&service);
        assert_eq!(read_snapshot(&mut reading).await, 40);
        assert_eq!(service.store().stats().snapshots_stalled, 1);
        assert_eq!(read_snapshot(&mut stalled).await, 40);
        wait_for_stats(&service, |s| {
            (s.snapshots_sent, s.snapshots_stalled, s.snapshots_in_flight) == (2, 0, 0)
        })
        .await;
    }

    /// A client that keeps reading keeps the one slot, though it never takes
    /// a chunk the moment it is made: the stream waiting behind it only
    /// subscribes once that snapshot is sent. Before, the slot went back
    /// whenever the last chunk was still untaken, and both streams
    /// subscribed and sent their snapshots together.
    #[tokio::test]
    async fn a_stream_whose_client_reads_slowly_keeps_its_slot() {
        let service = one_slot_service(40);
        let mut slow = open(&service);
        wait_for_stats(&service, |s| s.snapshots_in_flight == 1).await;
        let mut waiting = open(&service);
        wait_for_stats(&service, |s| s.snapshots_waiting == 1).await;
        let placeholder = waiting.next().await.unwrap().unwrap();
        assert!(placeholder.events.is_empty());

        // Far within the grace, even on a loaded machine.
        let pause = DEFAULT_SNAPSHOT_STALL_GRACE / 50;
        let mut events = 0;
        loop {
            tokio::time::sleep(pause).await;
            let response = slow.next().await.unwrap().unwrap();
            events += response.events.len();
            if response.snapshot_complete {
                break;
            }
            let stats = service.store().stats();
            assert_eq!(
                (stats.snapshots_waiting, stats.snapshots_stalled),
                (1, 0),
                "the slow reader kept its slot after {events} events: {stats:?}"
            );
        }
        assert_eq!(events, 40);
        assert_eq!(read_snapshot(&mut waiting).await, 40);
    }

    /// The stream's task notices at once that tonic dropped its responses,
    /// though nothing is due to be sent, and unsubscribes.
    #[tokio::test]
    async fn a_stream_dropped_by_tonic_ends_its_subscription() {
        let service = one_slot_service(1);
        let mut stream = open(&service);
        read_snapshot(&mut stream).await;
        assert_eq!(service.store().stats().subscribers, 1);
        drop(stream);
        wait_for_stats(&service, |s| s.subscribers == 0).await;
        assert_eq!(
            service.inner.subscriptions.available_permits(),
            DEFAULT_MAX_SUBSCRIPTIONS
        );
    }

    #[tokio::test]
    async fn the_status_comes_after_every_queued_response() {
        let (mut stream, responses, end) = TaggerResponses::new();
        responses.send(response(1)).await.unwrap();
        end.send(Status::unavailable("why")).unwrap();
        drop(responses);
        assert_eq!(stream.next().await.unwrap().unwrap().revision, 1);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "why")
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_task_gone_without_a_status_still_ends_the_stream_with_an_error() {
        let (mut stream, responses, end) = TaggerResponses::new();
        drop((responses, end));
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("reconnect"), "{status:?}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn the_stream_waits_for_a_status_set_after_the_responses_closed() {
        let (mut stream, responses, end) = TaggerResponses::new();
        drop(responses);
        let reader = tokio::spawn(async move { stream.next().await });
        tokio::task::yield_now().await;
        end.send(Status::resource_exhausted("late")).unwrap();
        let status = reader.await.unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}
