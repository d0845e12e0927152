//! The built-in source: a seeded synthetic workload ([`crate::workload`]) with
//! a steady churn of events, so `serve` works without any input.

use std::convert::Infallible;
use std::time::Duration;

use super::hub::StoreHandle;
use crate::domain::EntityEvent;
use crate::workload::{Workload, WorkloadConfig};

/// Churn is applied in small batches at this period: smooth enough to look
/// live, coarse enough to keep wake-ups cheap.
const CHURN_TICK: Duration = Duration::from_millis(100);

/// A workload and the rate at which it changes.
#[derive(Debug)]
pub(crate) struct WorkloadSource {
    workload: Workload,
    churn_per_sec: f64,
}

impl WorkloadSource {
    /// Generates the initial store; returns the source and the ADDED events
    /// of the initial entities. `churn_per_sec` must be finite and >= 0.
    pub fn new(entities: usize, seed: u64, churn_per_sec: f64) -> (Self, Vec<EntityEvent>) {
        let workload = Workload::new(WorkloadConfig { entities, seed });
        let initial = workload
            .snapshot()
            .into_iter()
            .map(EntityEvent::Added)
            .collect();
        (
            Self {
                workload,
                churn_per_sec,
            },
            initial,
        )
    }

    /// Applies churn to `store` at the configured rate, forever.
    pub async fn run(mut self, store: StoreHandle) -> Infallible {
        if self.churn_per_sec <= 0.0 {
            return std::future::pending().await;
        }
        let per_tick = self.churn_per_sec * CHURN_TICK.as_secs_f64();
        let mut ticks = tokio::time::interval(CHURN_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Fractional events carry over, so low rates (say 0.5/s) still happen.
        let mut credit = 0.0;
        loop {
            ticks.tick().await;
            credit += per_tick;
            let due = credit.floor();
            credit -= due;
            if due >= 1.0 {
                // `due` is a small whole number: the rate times one tick.
                store.apply(self.workload.next_events(due as usize));
            }
        }
    }
}
