//! remote-tagger: a wire-compatible Datadog Agent remote tagger.
//!
//! Two halves share one crate:
//!
//! - the **client** ([`RemoteTagger`]) keeps a live local mirror of a
//!   Datadog Agent's tagger (its entity -> tags store), streamed over
//!   `TaggerStreamEntities` with the Agent's auth token and pinned IPC
//!   certificate, and answers tag queries from memory without a round trip;
//! - the **server** ([`server::Server`]) serves that same gRPC API from a
//!   synthetic workload, an entities file, this host's processes and
//!   containers, or another tagger it mirrors.
//!
//! The client is split in two. [`core::ClientCore`] is a sans-IO state
//! machine (connect, receive, watchdog, backoff, resync) that reads no
//! clock, opens no socket and draws no randomness of its own: time and a
//! seed are inputs, so the simulations in `sim/`, the property tests and the
//! fuzzers drive exactly the transitions production runs. [`RemoteTagger`]
//! is its tokio/tonic driver: one task, one `biased` select loop, that
//! carries out the core's commands (open or drop a stream) and feeds the
//! core what arrives and when its timer fires. The core fills the
//! [`mirror`], which any number of threads read without taking a lock.
//!
//! # Example
//!
//! Mirror a tagger, wait for the first sync, query it, and watch a change.
//! The server here is this crate's own, started in a temporary directory
//! where it writes an Agent-style auth token and self-signed IPC
//! certificate; against a Datadog Agent, point the client at its port
//! (5001), `auth_token` and `ipc_cert.pem` instead.
//!
//! ```
//! use remote_tagger::server::{ServeConfig, Server, Source};
//! use remote_tagger::{
//!     Cardinality, ChangeKind, ClientConfig, Entity, EntityEvent, EntityId, Event, RemoteTagger,
//!     TlsSettings,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A tagger server on a loopback port, holding one container.
//! let dir = tempfile::tempdir()?;
//! let (token, cert) = (dir.path().join("auth_token"), dir.path().join("ipc_cert.pem"));
//! let mut serve = ServeConfig::new(&token, &cert);
//! serve.listen = "127.0.0.1:0".parse()?;
//! serve.source = Source::Workload { entities: 0, seed: 1, churn_per_sec: 0.0 };
//! let server = Server::bind(serve).await?.spawn();
//! let id = EntityId::parse("container_id://abc")?;
//! let mut web = Entity::new(id.clone());
//! web.low = vec!["service:web".into()];
//! web.high = vec!["container_name:web-1".into()];
//! server.store().apply([EntityEvent::Added(web.clone())]);
//!
//! // The client: mirror it, verifying the server's certificate.
//! let config = ClientConfig::new(
//!     server.local_addr().to_string(),
//!     &token,
//!     TlsSettings::verify(&cert),
//! );
//! let tagger = RemoteTagger::start(config)?;
//! tagger.wait_synced().await;
//! let mirror = tagger.mirror();
//! assert_eq!(
//!     mirror.tags("container_id://abc", Cardinality::High).to_vec(),
//!     ["service:web", "container_name:web-1"],
//! );
//! assert_eq!(mirror.tags("container_id://abc", Cardinality::Low).to_vec(), ["service:web"]);
//!
//! // Watch changes: the mirror has them applied when the event arrives.
//! let mut events = tagger.subscribe();
//! web.high = vec!["container_name:web-2".into()];
//! server.store().apply([EntityEvent::Modified(web)]);
//! loop {
//!     if let Event::EntitiesChanged(changes) = events.recv().await? {
//!         assert_eq!(changes[0].kind, ChangeKind::Modified);
//!         assert_eq!(changes[0].id, id);
//!         break;
//!     }
//! }
//! assert_eq!(
//!     mirror.tags("container_id://abc", Cardinality::High).to_vec(),
//!     ["service:web", "container_name:web-2"],
//! );
//!
//! tagger.stop().await;
//! server.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The names an embedder needs are re-exported here; each module's docs
//! say what else it holds.
#![warn(missing_docs)]

/// Types generated from `proto/` (the wire format), nested like their proto
/// packages. Application code uses the domain types of [`crate::domain`].
pub mod proto {
    #[allow(missing_docs, clippy::all)]
    pub mod datadog {
        pub mod model {
            pub mod v1 {
                tonic::include_proto!("datadog.model.v1");
            }
        }
        pub mod api {
            pub mod v1 {
                tonic::include_proto!("datadog.api.v1");
            }
        }
    }
    pub use datadog::api::v1 as api;

    /// Our twin of `datadog.api.v1.AgentSecure`, whose stream responses
    /// carry events as encoded bytes (`proto/remote_tagger/encoded.proto`).
    #[allow(missing_docs, clippy::all)]
    pub mod encoded {
        include!(concat!(env!("OUT_DIR"), "/encoded/datadog.api.v1.rs"));
    }
    pub use datadog::model::v1 as model;

    /// The encoded descriptors of `proto/` (imports included), for gRPC
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tagger_descriptor_set.bin"));
}

pub mod alloc;
pub mod build_info;
pub mod client;
pub mod core;
pub mod datadog_config;
pub mod defaults;
pub mod domain;
mod error_text;
pub mod flare;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "test-kit")]
pub mod harness;
pub mod metrics;
pub mod mirror;
pub mod origin;
mod prefetch;
pub mod rng;
pub mod server;
mod trust;
pub mod wire;
pub mod workload;

pub use client::{ClientConfig, ClientError, FetchError, RemoteTagger, TlsSettings, fetch_entity};
pub use core::{ClientStatus, ConnectionState, Event, LossReason};
pub use domain::{Cardinality, DomainError, Entity, EntityEvent, EntityId};
pub use mirror::{ChangeKind, EntityChange, MirrorReader, Tags};
