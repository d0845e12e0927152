//! A tagger server shaped like a plain Datadog Agent's, for the CLI's tests:
//! the generated `AgentSecure` service behind the Agent's IPC TLS (its
//! certificate template, the client certificate required, see
//! [`AgentIpcIncoming`]), the bearer token enforced as the Agent enforces
//! it, and none of this project's extension fields on any response (no
//! epoch, no `snapshotComplete`). What it sends is scripted ([`Script`]).
//! It runs on its own runtime, so plain `#[test]`s can drive the binary
//! with `std::process` while it serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use remote_tagger::domain::{Cardinality, Entity, EntityEvent};
use remote_tagger::proto::api::agent_secure_server::{AgentSecure, AgentSecureServer};
use remote_tagger::proto::model as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::PATIENCE;
use super::agent_tls::{AgentCert, AgentIpcIncoming, token};

/// What the server does with each request.
#[derive(Clone)]
pub enum Script {
    /// Answers nothing, ever: a stream gets not even its response headers
    /// (a Go server sends them with its first message), and a fetch or an
    /// origin request never returns.
    Silent,
    /// Sends the entities as one batch, then a change to one of them every
    /// `every`, forever: a busy node whose stream never goes quiet.
    Churning {
        entities: Vec<Entity>,
        every: Duration,
    },
    /// Sends the entities as one batch and then nothing; a fetch answers
    /// an entity's tags.
    Serving { entities: Vec<Entity> },
    /// Fails every stream and fetch with UNAVAILABLE and this message.
    Failing { message: String },
}

/// The running fixture; stops when dropped.
pub struct PlainDatadog {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct Counts {
    streams: AtomicUsize,
    fetches: AtomicUsize,
}

impl PlainDatadog {
    pub fn start(script: Script) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auth_token"), token()).unwrap();
        let identity = AgentCert::generate().pem;
        std::fs::write(dir.path().join("ipc_cert.pem"), &identity).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let versions = tokio_rustls::rustls::DEFAULT_VERSIONS;
        let incoming = runtime.block_on(AgentIpcIncoming::listen(&identity, versions));
        let counts = Arc::new(Counts::default());
        let service = Service {
            script,
            counts: counts.clone(),
        };
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AgentSecureServer::new(service))
                .serve_with_incoming(incoming.connections)
                .await
                .unwrap();
        });
        Self {
            dir,
            addr: incoming.addr,
            counts,
            runtime: Some(runtime),
        }
    }

    /// `--target`, `--auth-token-file` and `--ca-file` for this server.
    pub fn client_args(&self) -> Vec<String> {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--target".to_owned(),
            self.addr.to_string(),
            "--auth-token-file".to_owned(),
            file("auth_token"),
            "--ca-file".to_owned(),
            file("ipc_cert.pem"),
        ]
    }

    /// Streams opened with the right token so far.
    pub fn streams(&self) -> usize {
        self.counts.streams.load(Ordering::SeqCst)
    }

    /// Fetches made with the right token so far.
    pub fn fetches(&self) -> usize {
        self.counts.fetches.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds (a client reached the server, say).
    pub fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PlainDatadog {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Service {
    script: Script,
    counts: Arc<Counts>,
}

impl Service {
    /// The Agent's check: `authorization: Bearer <token>`, else UNAUTHENTICATED.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request.metadata().get("authorization");
        match presented.and_then(|value| value.to_str().ok()) {
            Some(value) if value == format!("Bearer {}", token()) => Ok(()),
            _ => Err(Status::unauthenticated("invalid auth token")),
        }
    }
}

fn batch(events: impl IntoIterator<Item = EntityEvent>) -> pb::StreamTagsResponse {
    pb::StreamTagsResponse {
        events: events
            .into_iter()
            .map(|event| event.to_proto(Cardinality::High))
            .collect(),
        ..Default::default()
    }
}

type Responses = ReceiverStream<Result<pb::StreamTagsResponse, Status>>;

#[tonic::async_trait]
impl AgentSecure for Service {
    type TaggerStreamEntitiesStream = Responses;

    async fn tagger_stream_entities(
        &self,
        request: Request<pb::StreamTagsRequest>,
    ) -> Result<Response<Responses>, Status> {
        self.authenticate(&request)?;
        self.counts.streams.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        match self.script.clone() {
            Script::Silent => std::future::pending().await,
            Script::Failing { message } => return Err(Status::unavailable(message)),
            Script::Serving { entities } => {
                let first = batch(entities.into_iter().map(EntityEvent::Added));
                tokio::spawn(async move {
                    let _ = sender.send(Ok(first)).await;
                    // Keeps the stream open until the client goes.
                    sender.closed().await;
                });
            }
            Script::Churning { entities, every } => {
                tokio::spawn(async move {
                    let first = batch(entities.iter().cloned().map(EntityEvent::Added));
                    if sender.send(Ok(first)).await.is_err() {
                        return;
                    }
                    for change in 0u64.. {
                        tokio::time::sleep(every).await;
                        let mut entity = entities[change as usize % entities.len()].clone();
                        entity.high.push(format!("change:{change}"));
                        if sender
                            .send(Ok(batch([EntityEvent::Modified(entity)])))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn tagger_fetch_entity(
        &self,
        request: Request<pb::FetchEntityRequest>,
    ) -> Result<Response<pb::FetchEntityResponse>, Status> {
        self.authenticate(&request)?;
        self.counts.fetches.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let wanted = request.id.clone().unwrap_or_default();
        let wanted = format!("{}://{}", wanted.prefix, wanted.uid);
        let entities = match &self.script {
            Script::Silent => std::future::pending().await,
            Script::Failing { message } => return Err(Status::unavailable(message.clone())),
            Script::Serving { entities } | Script::Churning { entities, .. } => entities,
        };
        let tags = entities
            .iter()
            .find(|entity| entity.id.as_str() == wanted)
            .map(|entity| entity.tags(Cardinality::High))
            .unwrap_or_default();
        Ok(Response::new(pb::FetchEntityResponse {
            id: request.id,
            cardinality: request.cardinality,
            tags,
        }))
    }

    /// As the Agent's handler: every field of the request dereferenced (a
    /// request leaving one out crashes the Agent; here INTERNAL says which),
    /// an explicit container ID answered, and anything else, which this
    /// server cannot resolve, INVALID_ARGUMENT as the Agent answers it.
    async fn tagger_generate_container_id_from_origin_info(
        &self,
        request: Request<pb::GenerateContainerIdFromOriginInfoRequest>,
    ) -> Result<Response<pb::GenerateContainerIdFromOriginInfoResponse>, Status> {
        self.authenticate(&request)?;
        if matches!(self.script, Script::Silent) {
            std::future::pending::<()>().await;
        }
        let request = request.into_inner();
        let nil = |field: &str| Status::internal(format!("nil pointer dereference: {field}"));
        let local = request.local_data.ok_or_else(|| nil("LocalData"))?;
        let external = request.external_data.ok_or_else(|| nil("ExternalData"))?;
        local.process_id.ok_or_else(|| nil("LocalData.ProcessID"))?;
        local.inode.ok_or_else(|| nil("LocalData.Inode"))?;
        local.pod_uid.ok_or_else(|| nil("LocalData.PodUID"))?;
        external.init.ok_or_else(|| nil("ExternalData.Init"))?;
        external
            .container_name
            .ok_or_else(|| nil("ExternalData.ContainerName"))?;
        external.pod_uid.ok_or_else(|| nil("ExternalData.PodUID"))?;
        let container_id = local
            .container_id
            .ok_or_else(|| nil("LocalData.ContainerID"))?;
        if container_id.is_empty() {
            return Err(Status::invalid_argument(
                "unable to resolve container ID from OriginInfo",
            ));
        }
        Ok(Response::new(
            pb::GenerateContainerIdFromOriginInfoResponse { container_id },
        ))
    }
}
