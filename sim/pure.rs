//! The pure tier: the sans-IO core against the harness's model server through
//! its emulated network (see `remote_tagger::harness::scenario`). No tokio,
//! no threads, time jumps straight to the next deadline.

use remote_tagger::harness::scenario::{Scenario, Schedule};

use crate::{SeedOutcome, TierScenario};

pub fn scenarios() -> Vec<TierScenario> {
    TierScenario::all(&Scenario::ALL, Scenario::name, Scenario::description)
}

pub fn run(name: &str, seed: u64) -> Result<SeedOutcome, String> {
    let scenario = Scenario::from_name(name).ok_or_else(|| format!("no pure scenario {name:?}"))?;
    let outcome = Schedule::new(scenario, seed)
        .run()
        .map_err(|violation| violation.0)?;
    Ok(SeedOutcome {
        trace_hash: outcome.trace_hash,
        simulated: outcome.simulated,
        detail: format!(
            "converged {:.1}s after the heal (bound {:.1}s), {} connect attempts before it, {} snapshots, {} resumes, {} trace lines",
            outcome.time_to_converge.as_secs_f64(),
            outcome.liveness_bound.as_secs_f64(),
            outcome.attempts_before_heal,
            outcome.snapshots_sent,
            outcome.resumes_sent,
            outcome.trace.len()
        ),
        trace: outcome.trace,
    })
}
