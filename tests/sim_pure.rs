//! The pure simulation tier inside `cargo test`: a few seeds of every
//! scenario (the seed runner's sweep, `sim/ci.sh`, runs thousands), and the
//! determinism the seed runner's replay commands rely on.

use remote_tagger::harness::scenario::{Scenario, Schedule};

/// Seeds per scenario here: enough to catch a broken core quickly (and to
/// give cargo-mutants a pure-tier test), few enough for a debug build.
const SEEDS_PER_SCENARIO: u64 = 12;

#[test]
fn every_scenario_keeps_every_invariant_and_converges() {
    for scenario in Scenario::ALL {
        for seed in 0..SEEDS_PER_SCENARIO {
            if let Err(violation) = Schedule::new(scenario, seed).run() {
                panic!(
                    "{violation}\nreplay: cargo run --release --features sim --bin sim -- --seed {seed} --scenario {scenario} --tier pure"
                );
            }
        }
    }
}

#[test]
fn same_seed_same_trace_and_different_seed_different_trace() {
    for scenario in Scenario::ALL {
        let hash = |seed| Schedule::new(scenario, seed).run().unwrap().trace_hash;
        assert_eq!(hash(7), hash(7), "{scenario}: seed 7 does not replay");
        assert_ne!(hash(7), hash(8), "{scenario}: seeds 7 and 8 gave one trace");
    }
}
