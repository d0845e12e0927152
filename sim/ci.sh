#!/usr/bin/env bash
# CI's simulation sweeps: builds the seed runner once (release, `sim`
# feature), then sweeps the pure tier and the turmoil tier across all their
# scenarios (without --scenario, each seed picks one). Each sweep prints its
# stats line and `seeds=COUNT failed=COUNT`; a failing seed prints its replay
# command. Exits non-zero if any seed failed.
#
# Sizes (the defaults fit CI's budget on 2 cores): SIM_PURE_SEEDS,
# SIM_TURMOIL_SEEDS, and SIM_SEED_START to explore seeds other than 0.. .
set -euo pipefail
cd "$(dirname "$0")/.."

pure_seeds=${SIM_PURE_SEEDS:-10000}
turmoil_seeds=${SIM_TURMOIL_SEEDS:-200}
start=${SIM_SEED_START:-0}

cargo build --locked --release --features sim --bin sim
# The runner's own checks (error capture, backoff ladder, trace order...).
cargo test --locked --release --features sim --bin sim
sim=target/release/sim

status=0
sweep() {
    local tier=$1 count=$2 began=$SECONDS
    echo "=== sim: $tier tier, seeds $start..$((start + count))"
    "$sim" --tier "$tier" --seeds "$start..$((start + count))" || status=1
    echo "=== sim: $tier tier took $((SECONDS - began))s"
}
sweep pure "$pure_seeds"
sweep turmoil "$turmoil_seeds"
exit "$status"
