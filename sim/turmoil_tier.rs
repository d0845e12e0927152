//! The turmoil tier (pending the server merge).

use crate::{SeedOutcome, TierScenario};

pub fn scenarios() -> Vec<TierScenario> {
    Vec::new()
}

pub fn run(name: &str, _seed: u64) -> Result<SeedOutcome, String> {
    Err(format!("no turmoil scenario {name:?} yet"))
}
