//! The subscriber buffer counts changes, not batches (issue 20): how long
//! a subscriber may lag must not depend on how finely its source cuts
//! batches. The stream is read as tonic would read it, straight from the
//! service, so nothing drains the hub's queue while the test applies.

use remote_tagger::domain::{Entity, EntityEvent, EntityId};
use remote_tagger::proto::encoded::agent_secure_server::AgentSecure as _;
use remote_tagger::proto::model as pb;
use remote_tagger::server::{
    Authenticator, Epoch, ServiceConfig, Store, StoreHandle, TaggerService,
};
use tokio_stream::StreamExt as _;
use tonic::Code;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A batch of `count` new entities, numbered from `first`.
fn batch(first: usize, count: usize) -> Vec<EntityEvent> {
    (first..first + count)
        .map(|i| {
            EntityEvent::Added(Entity::new(
                EntityId::parse(&format!("process://{i}")).unwrap(),
            ))
        })
        .collect()
}

/// A service over an empty store whose subscribers buffer `buffer` changes,
/// and a synced stream of it that reads no more.
async fn synced_stream(
    buffer: usize,
) -> (
    StoreHandle,
    <TaggerService as remote_tagger::proto::encoded::agent_secure_server::AgentSecure>::TaggerStreamEntitiesStream,
){
    let store = StoreHandle::new(Store::new(Epoch::from_seed(7), 100));
    let config = ServiceConfig {
        subscriber_buffer: buffer,
        ..ServiceConfig::default()
    };
    let service = TaggerService::new(store.clone(), Authenticator::fixed(TOKEN).unwrap(), config);
    let mut request = tonic::Request::new(pb::StreamTagsRequest {
        cardinality: pb::TagCardinality::High as i32,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let mut stream = service
        .tagger_stream_entities(request)
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.next().await.unwrap().unwrap();
    assert!(snapshot.snapshot_complete);
    (store, stream)
}

/// Two batches of 3 changes, queued while the stream does not run, pass a
/// buffer of 4 changes: the second evicts. Counted in batches (as before),
/// 2 batches fitted in a buffer of 4 and nothing was evicted.
#[tokio::test]
async fn batches_that_bring_the_queued_changes_past_the_buffer_evict() {
    let (store, mut stream) = synced_stream(4).await;
    // No await between the two: the stream's task cannot take the first.
    store.apply(batch(0, 3));
    store.apply(batch(3, 3));
    assert_eq!(store.stats().subscribers_evicted, 1, "{:?}", store.stats());
    let status = loop {
        match stream.next().await.unwrap() {
            Ok(response) => assert!(response.events.len() <= 3),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("more than 4 changes"),
        "{status:?}"
    );
}

/// Into an empty buffer any batch goes, however large (a source's first
/// load, a relay's reconcile), and a subscriber that keeps up is never
/// evicted by batches one at a time.
#[tokio::test]
async fn a_batch_larger_than_the_buffer_goes_into_an_empty_one() {
    let (store, mut stream) = synced_stream(4).await;
    store.apply(batch(0, 10));
    let mut received = 0;
    while received < 10 {
        received += stream.next().await.unwrap().unwrap().events.len();
    }
    for round in 0..3 {
        store.apply(batch(10 + round * 3, 3));
        assert_eq!(stream.next().await.unwrap().unwrap().events.len(), 3);
    }
    assert_eq!(store.stats().subscribers_evicted, 0, "{:?}", store.stats());
}
