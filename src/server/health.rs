//! The standard gRPC health service (`grpc.health.v1.Health`) and server
//! reflection (`grpc.reflection.v1` and `v1alpha`), so generic gRPC tools
//! (`grpc_health_probe`, Kubernetes gRPC probes, `grpcurl`) can check and
//! explore the server.
//!
//! Neither requires the bearer token, on purpose:
//! - Health answers only SERVING or NOT_SERVING, and the usual callers
//!   cannot send a token (a Kubernetes gRPC probe sends no metadata).
//! - Reflection describes only the schema, which is the public Datadog
//!   tagger protos plus this project's documented extension fields.
//!
//! Every tagger RPC still requires the token; entities and tags are never
//! reachable without it. What needs no token is bounded apart
//! ([`Unauthenticated`]): a health watch lives as long as its client wants.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_reflection::server::v1::{
    ServerReflection as ReflectionV1, ServerReflectionServer as ReflectionV1Server,
};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ReflectionV1Alpha, ServerReflectionServer as ReflectionV1AlphaServer,
};

use super::connections::{Admission, UnauthenticatedRequest};
use super::stats::increment;
use super::{ServeError, StoreHandle, TaggerService};
use crate::proto::api::agent_secure_server::AgentSecureServer;

/// The names the health service answers for: the whole server ("") and the
/// tagger service.
pub const HEALTH_SERVICE_NAMES: [&str; 2] =
    ["", <AgentSecureServer<TaggerService> as NamedService>::NAME];

/// The health statuses of one server.
pub(super) struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Every name of [`HEALTH_SERVICE_NAMES`] SERVING, and the service that
    /// reports them.
    pub(super) async fn serving() -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Self { reporter };
        health.set(ServingStatus::Serving).await;
        (health, service)
    }

    /// Every name NOT_SERVING: the server is shutting down.
    pub(super) async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        for name in HEALTH_SERVICE_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Reflection over the tagger protos and the health service, in both
/// protocol versions (`grpcurl` and others still ask for v1alpha first).
pub(super) fn reflection_services() -> Result<
    (
        ReflectionV1Server<impl ReflectionV1>,
        ReflectionV1AlphaServer<impl ReflectionV1Alpha>,
    ),
    ServeError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let invalid = |e: tonic_reflection::server::Error| {
        ServeError::Transport(format!("cannot build the reflection service: {e}"))
    };
    Ok((
        builder().build_v1().map_err(invalid)?,
        builder().build_v1alpha().map_err(invalid)?,
    ))
}

/// The places of the requests that need no token, shared by the services
/// that serve them: at most `limit` at once over the whole server.
#[derive(Clone)]
pub(super) struct Unauthenticated {
    places: Arc<Semaphore>,
    limit: usize,
    /// Where refusals are counted.
    store: StoreHandle,
}

impl Unauthenticated {
    pub(super) fn new(limit: usize, store: StoreHandle) -> Self {
        let limit = limit.max(1);
        Self {
            places: Arc::new(Semaphore::new(limit)),
            limit,
            store,
        }
    }

    /// `service`, each of its requests holding a place until its response
    /// ends (a watch: until the client leaves).
    pub(super) fn limit<S>(&self, service: S) -> Limited<S> {
        Limited {
            service,
            places: self.clone(),
        }
    }
}

/// A service whose requests need no token, behind [`Unauthenticated`].
#[derive(Clone)]
pub(super) struct Limited<S> {
    service: S,
    places: Unauthenticated,
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Limited<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Ok(place) = self.places.places.clone().try_acquire_owned() else {
            increment(&self.places.store.telemetry().requests_refused);
            let refused = tonic::Status::resource_exhausted(format!(
                "the server already answers its limit of {} requests without a token (health, reflection; --max-unauthenticated-requests); retry later",
                self.places.limit
            ));
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        // Keeps the connection open past its first-request timeout while
        // the response lasts.
        let in_flight = request
            .extensions()
            .get::<Admission>()
            .map(Admission::unauthenticated_request);
        let response = self.service.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Held {
                    body,
                    _place: place,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body with the request's place and in-flight mark, given back
/// when the body is done or dropped.
struct Held {
    body: Body,
    _place: OwnedSemaphorePermit,
    _in_flight: Option<UnauthenticatedRequest>,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
