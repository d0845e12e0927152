//! The gRPC service: `TaggerStreamEntities` and `TaggerFetchEntity` of
//! `datadog.api.v1.AgentSecure`, over a [`StoreHandle`].
//!
//! Each stream runs in its own task that writes into a one-slot channel
//! tonic reads from; a send that cannot be queued within the send timeout
//! means the client stopped reading, and ends the stream.
//!
//! Every end the server chooses carries an error status saying why, never
//! OK: Datadog's Rust client reopens at once after an OK end, where an
//! error makes it back off (so does ours).
//!
//! The `revision` of a response is a resume point: once a client has applied
//! that response, it holds the store's state at that revision (for its
//! prefixes and cardinality). Snapshot chunks carry the snapshot's revision,
//! which is only a valid resume point once the chunk marked
//! `snapshotComplete` has arrived; live and resumed responses carry the
//! revision of their last change (the last response of a batch, the batch's
//! end even if later changes were filtered out); keep-alives carry the last
//! revision sent; the empty placeholder a stream gets while it waits for a
//! snapshot slot carries 0 (nothing to resume from yet).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::hub::{ChangeBatch, ResumeRefused, Stop, StoreHandle};
use super::stats::{GaugeGuard, Telemetry, increment};
use super::store::{Chunker, PrefixFilter};
use crate::defaults;
use crate::domain::{Cardinality, EntityId};
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
    /// Snapshots sent at once; further subscribers wait (at least 1).
    pub max_concurrent_snapshots: usize,
    /// At shutdown, how long open connections get to close before they are
    /// abandoned (a client that stopped reading never closes).
    pub shutdown_grace: Duration,
}

pub const DEFAULT_MAX_MESSAGE_SIZE: usize = defaults::MAX_MESSAGE_SIZE;
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = defaults::SERVER_KEEPALIVE_INTERVAL;
pub const DEFAULT_SEND_TIMEOUT: Duration = defaults::SEND_TIMEOUT;
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 1000;
pub const DEFAULT_MAX_CONCURRENT_SNAPSHOTS: usize = defaults::MAX_CONCURRENT_SNAPSHOTS;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            subscriber_buffer: DEFAULT_SUBSCRIBER_BUFFER,
            max_concurrent_snapshots: DEFAULT_MAX_CONCURRENT_SNAPSHOTS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ServiceConfig {
    /// The summed size of encoded events at which a response is cut (the
    /// first event of a response always goes, however large).
    pub fn chunk_budget(&self) -> usize {
        (self.max_message_size / 2).min(defaults::CHUNK_TARGET)
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
}

impl TaggerService {
    pub fn new(store: StoreHandle, auth: Authenticator, config: ServiceConfig) -> Self {
        let slots = config.max_concurrent_snapshots.max(1);
        Self {
            inner: Arc::new(Inner {
                store,
                auth,
                config,
                snapshot_slots: Semaphore::new(slots),
            }),
        }
    }

    pub fn store(&self) -> &StoreHandle {
        &self.inner.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The tonic service. No encoding limit: a single entity larger than the
    /// chunk budget still goes out alone (the client's limit decides).
    pub fn into_server(self) -> AgentSecureServer<Self> {
        AgentSecureServer::new(self).max_encoding_message_size(usize::MAX)
    }

    async fn authenticate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let result = self.inner.auth.check(request.metadata()).await;
        if result.is_err() {
            increment(&self.inner.store.telemetry().auth_failures);
        }
        result
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
        tracing::debug!(
            streaming_id,
            cardinality = %request.cardinality,
            resume = request.resume.is_some(),
            "tagger stream opened"
        );
        let (responses, sender, end) = TaggerResponses::new();
        tokio::spawn(self.clone().stream(request, sender, end, streaming_id));
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

/// The sending end of one stream, with the state every response needs.
struct Sink<'a> {
    responses: ResponseSender,
    config: &'a ServiceConfig,
    telemetry: &'a Telemetry,
    cardinality: Cardinality,
    epoch: String,
    last_send: Instant,
    /// Store revision the client holds everything of (for this filter and
    /// cardinality); keep-alives carry it. 0 until the first sync.
    synced_revision: u64,
}

impl Sink<'_> {
    fn response(&self, events: Vec<Bytes>, revision: u64) -> EncodedStreamTagsResponse {
        EncodedStreamTagsResponse {
            events,
            revision,
            snapshot_complete: false,
            server_epoch: self.epoch.clone(),
            resumed: false,
        }
    }

    async fn send(
        &mut self,
        response: EncodedStreamTagsResponse,
        halt: &mut Halt,
    ) -> Result<(), StreamEnd> {
        let events = response.events.len();
        let sent = tokio::select! {
            biased;
            end = halt.wait() => return Err(end),
            sent = tokio::time::timeout(self.config.send_timeout, self.responses.send(response)) => sent,
        };
        match sent {
            Ok(Ok(())) => {
                self.last_send = Instant::now();
                increment(&self.telemetry.sends);
                self.telemetry.count_events(self.cardinality, events);
                Ok(())
            }
            Ok(Err(_)) => Err(StreamEnd::ClientGone),
            Err(_) => Err(StreamEnd::SendTimeout),
        }
    }

    fn keepalive_due(&self) -> Instant {
        self.last_send + self.config.keepalive_interval
    }

    async fn send_keepalive(&mut self, halt: &mut Halt) -> Result<(), StreamEnd> {
        let keepalive = self.response(Vec::new(), self.synced_revision);
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
        mut resumed: bool,
        halt: &mut Halt,
    ) -> Result<(), StreamEnd> {
        let mut chunker = Chunker::new(self.config.chunk_budget());
        // Revision of the last change in the open chunk: once a client has a
        // chunk, it holds everything up to there.
        let mut chunk_revision = self.synced_revision;
        let cardinality = self.cardinality;
        for (change, event) in batches.iter().flat_map(|batch| batch.encoded(cardinality)) {
            if !filter.matches(change.event.id()) {
                continue;
            }
            if let Some(events) = chunker.push(event.clone()) {
                let mut response = self.response(events, chunk_revision);
                response.resumed = std::mem::take(&mut resumed);
                self.send(response, halt).await?;
                self.synced_revision = chunk_revision;
            }
            chunk_revision = change.revision;
        }
        if !chunker.is_empty() || resumed {
            let mut response = self.response(chunker.take(), end_revision);
            response.resumed = resumed;
            self.send(response, halt).await?;
        }
        self.synced_revision = end_revision;
        Ok(())
    }
}

impl TaggerService {
    /// Runs one stream to its end, then hands tonic the status saying why.
    async fn stream(
        self,
        request: StreamRequest,
        responses: ResponseSender,
        end_status: oneshot::Sender<Status>,
        streaming_id: String,
    ) {
        let inner = &*self.inner;
        let config = &inner.config;
        let telemetry = inner.store.telemetry();
        let _subscriber = GaugeGuard::raise(&telemetry.subscribers);
        let mut sink = Sink {
            responses,
            config,
            telemetry,
            cardinality: request.cardinality,
            epoch: inner.store.epoch().as_str().to_owned(),
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
        let permit = match self.snapshot_slot(sink, &mut halt).await {
            Ok(permit) => permit,
            Err(end) => return end,
        };
        let Some((snapshot, subscription)) = store.subscribe_with_snapshot(&request.filter, buffer)
        else {
            return StreamEnd::Shutdown;
        };
        halt.subscription = Some(subscription.stop);
        let in_flight = GaugeGuard::raise(&telemetry.snapshots_in_flight);
        let revision = snapshot.revision;
        for chunk in snapshot.into_chunks(request.cardinality, inner.config.chunk_budget()) {
            let mut response = sink.response(chunk.events, revision);
            response.snapshot_complete = chunk.complete;
            if let Err(end) = sink.send(response, &mut halt).await {
                return end;
            }
        }
        drop(in_flight);
        drop(permit);
        increment(&telemetry.snapshots_sent);
        sink.synced_revision = revision;
        live(subscription.batches, &request.filter, sink, &mut halt).await
    }

    /// Waits for one of the snapshot slots. A stream that has to wait gets
    /// an empty response at once (clients must not wait for headers) and
    /// keep-alives while it waits.
    async fn snapshot_slot(
        &self,
        sink: &mut Sink<'_>,
        halt: &mut Halt,
    ) -> Result<SemaphorePermit<'_>, StreamEnd> {
        let slots = &self.inner.snapshot_slots;
        if let Ok(permit) = slots.try_acquire() {
            return Ok(permit);
        }
        let _waiting = GaugeGuard::raise(&self.inner.store.telemetry().snapshots_waiting);
        sink.send(sink.response(Vec::new(), 0), halt).await?;
        let acquire = slots.acquire();
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                biased;
                end = halt.wait() => return Err(end),
                // The semaphore is never closed; treat it like a shutdown anyway.
                permit = &mut acquire => return permit.map_err(|_| StreamEnd::Shutdown),
                () = tokio::time::sleep_until(sink.keepalive_due()) => sink.send_keepalive(halt).await?,
            }
        }
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
