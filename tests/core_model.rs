//! State-machine test of the client core: random op sequences drive the core
//! and the reference model server through the shared harness, which checks
//! every invariant after every step (see `remote_tagger::harness`).

use std::time::Instant;

use proptest::prelude::*;
use remote_tagger::domain::Cardinality;
use remote_tagger::harness::{
    self, CONVERGE_STEPS, HARNESS_PREFIXES, HarnessConfig, NetworkConfig, Op,
};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..5_000).prop_map(|millis| Op::Advance { millis }),
        1 => (500_000u32..900_000).prop_map(|millis| Op::Advance { millis }),
        3 => Just(Op::AdvanceToTimeout),
        3 => Just(Op::NetworkStep),
        5 => Just(Op::AcceptOpen),
        2 => Just(Op::FailOpen),
        6 => (1u8..6).prop_map(|count| Op::Deliver { count }),
        2 => Just(Op::KeepAlive),
        2 => Just(Op::BreakStream),
        8 => (any::<u8>(), any::<u8>()).prop_map(|(entity, variant)| Op::ServerUpsert { entity, variant }),
        3 => any::<u8>().prop_map(|entity| Op::ServerDelete { entity }),
        1 => Just(Op::DeleteUnknown),
        1 => any::<u8>().prop_map(|kind| Op::Malformed { kind }),
        1 => Just(Op::ServerRestart),
        1 => Just(Op::ServerDropStreams),
        1 => Just(Op::Partition),
        1 => Just(Op::Hold),
        1 => Just(Op::Heal),
        1 => (0u16..200, 0u16..100).prop_map(|(millis, jitter_millis)| Op::SetLatency { millis, jitter_millis }),
        1 => (0u16..300).prop_map(|per_mille| Op::SetLoss { per_mille }),
        1 => any::<bool>().prop_map(|enabled| Op::SetExtensions { enabled }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(kind, back)| Op::Stale { kind, back }),
    ]
}

fn config() -> impl Strategy<Value = HarnessConfig> {
    let all_prefixes: Vec<usize> = (0..HARNESS_PREFIXES.len()).collect();
    (
        any::<u64>(),
        prop::sample::select(Cardinality::ALL.to_vec()),
        prop::sample::subsequence(all_prefixes, 1..=HARNESS_PREFIXES.len()),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        1usize..5,
        1usize..10,
    )
        .prop_map(
            |(
                seed,
                cardinality,
                prefixes,
                extensions,
                server_ignores_prefixes,
                chunk_events,
                log_capacity,
            )| HarnessConfig {
                seed,
                cardinality,
                prefixes,
                extensions,
                server_ignores_prefixes,
                chunk_events,
                log_capacity,
                network: NetworkConfig::default(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn core_keeps_every_invariant_and_converges(config in config(), ops in prop::collection::vec(op(), 0..120)) {
        let start = Instant::now();
        let mut run = harness::run(config, &ops, start).map_err(|v| TestCaseError::fail(v.0))?;
        run.converge(CONVERGE_STEPS).map_err(|v| TestCaseError::fail(v.0))?;
    }

    #[test]
    fn same_seed_and_ops_give_the_same_trace(config in config(), ops in prop::collection::vec(op(), 0..80)) {
        let start = Instant::now();
        let first = harness::run(config.clone(), &ops, start).map_err(|v| TestCaseError::fail(v.0))?;
        let second = harness::run(config, &ops, start).map_err(|v| TestCaseError::fail(v.0))?;
        prop_assert_eq!(first.trace(), second.trace());
    }
}

/// Different seeds must give different traces once a backoff delay is drawn.
#[test]
fn different_seeds_give_different_traces() {
    let ops = [
        Op::FailOpen,
        Op::AdvanceToTimeout,
        Op::FailOpen,
        Op::AdvanceToTimeout,
    ];
    let start = Instant::now();
    let trace = |seed| {
        let config = HarnessConfig {
            seed,
            ..HarnessConfig::default()
        };
        harness::run(config, &ops, start).unwrap().trace().to_vec()
    };
    assert_eq!(trace(1), trace(1));
    assert_ne!(trace(1), trace(2));
}
