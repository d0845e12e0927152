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
    pub use datadog::model::v1 as model;
}

pub mod client;
pub mod core;
pub mod defaults;
pub mod domain;
pub mod harness;
pub mod mirror;
pub mod rng;
pub mod server;
pub mod workload;
