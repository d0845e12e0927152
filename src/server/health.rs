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
//! reachable without it.

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

use super::{ServeError, TaggerService};
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
