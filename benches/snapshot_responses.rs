//! Shared by the `end_to_end` and `vs_go` benches (each includes it with
//! `#[path]`): the floor both compare a sync with is prost decoding these.

use prost::Message as _;
use remote_tagger::domain::{Cardinality, Entity, EntityEvent};
use remote_tagger::server::{Epoch, Framer, PrefixFilter, ServiceConfig, Store};

/// The snapshot of `entities` a HIGH client gets, encoded as our server
/// sends it: every entity as an ADDED event, in responses of the server's
/// default chunk budget.
pub fn snapshot_responses(entities: Vec<Entity>, seed: u64) -> Vec<Vec<u8>> {
    let mut store = Store::new(Epoch::from_seed(seed), 0);
    store.apply(entities.into_iter().map(EntityEvent::Added));
    let framer = Framer::new(
        store.epoch().clone(),
        Cardinality::High,
        ServiceConfig::default().chunk_budget(),
    );
    framer
        .snapshot(store.snapshot(&PrefixFilter::all()))
        .map(|response| response.encode_to_vec())
        .collect()
}
