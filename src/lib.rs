//! remote-tagger: a wire-compatible Datadog Agent remote tagger.

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
mod prefetch;
pub mod rng;
pub mod server;
mod trust;
pub mod wire;
pub mod workload;
