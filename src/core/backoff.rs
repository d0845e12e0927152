//! The reconnect backoff: a pure exponential policy with seeded jitter.
//!
//! Same shape as the Datadog Agent's (cenkalti/backoff `ExponentialBackOff`):
//! each failure draws a delay uniformly from `interval * [1 - r, 1 + r]`, then
//! the interval grows by the multiplier up to the cap. It never gives up. The
//! jitter comes from a seed the core owns, so a run replays exactly. When
//! it goes back to the initial interval is the core's rule (see
//! [`BackoffConfig::reset_after`]).

use std::time::Duration;

use crate::defaults;
use crate::rng::SplitMix64;

/// The backoff's constants (wire-spec section 4).
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// The first delay around which jitter is drawn (spec: 1 s).
    pub initial_interval: Duration,
    /// The cap the interval stops growing at.
    pub max_interval: Duration,
    /// How much the interval grows after each failure.
    pub multiplier: f64,
    /// Jitter as a fraction of the interval: 0.5 means +-50 %.
    pub randomization: f64,
    /// How long a stream must stay up after its first good message before
    /// the backoff goes back to `initial_interval`. The spec resets on the
    /// good message itself, so a server that fails right after each
    /// snapshot was retried every half second, a full snapshot each time;
    /// with this period it is backed off like any other failure.
    pub reset_after: Duration,
}

/// The spec's constants (see [`crate::defaults`]).
impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_interval: defaults::BACKOFF_INITIAL_INTERVAL,
            max_interval: defaults::BACKOFF_MAX_INTERVAL,
            multiplier: defaults::BACKOFF_MULTIPLIER,
            randomization: defaults::BACKOFF_RANDOMIZATION,
            reset_after: defaults::BACKOFF_RESET_AFTER,
        }
    }
}

impl BackoffConfig {
    /// The range a delay drawn at `interval` must fall in (both ends inclusive).
    pub fn jitter_bounds(&self, interval: Duration) -> (Duration, Duration) {
        let delta = interval.mul_f64(self.randomization);
        (interval.saturating_sub(delta), interval + delta)
    }

    /// The interval that follows `interval` after one more failure.
    pub fn grow(&self, interval: Duration) -> Duration {
        interval.mul_f64(self.multiplier).min(self.max_interval)
    }
}

/// Exponential backoff state: the current interval and the jitter source.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    interval: Duration,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff at its initial interval whose jitter is drawn from `seed`: the
    /// same seed gives the same delays.
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Self {
            interval: config.initial_interval,
            config,
            rng: SplitMix64::new(seed),
        }
    }

    /// The delay before the next attempt; grows the interval for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let (low, high) = self.config.jitter_bounds(self.interval);
        let delay = low + (high - low).mul_f64(self.rng.next_f64());
        self.interval = self.config.grow(self.interval);
        delay
    }

    /// Back to the initial interval: called only once a stream proved
    /// healthy (see [`BackoffConfig::reset_after`]).
    pub fn reset(&mut self) {
        self.interval = self.config.initial_interval;
    }

    /// The interval the next delay will be drawn around.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The constants it runs with.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_in_bounds_and_grow_to_the_cap() {
        let config = BackoffConfig::default();
        let mut backoff = Backoff::new(config.clone(), 42);
        let mut expected_interval = config.initial_interval;
        for _ in 0..40 {
            let (low, high) = config.jitter_bounds(expected_interval);
            let delay = backoff.next_delay();
            assert!(
                low <= delay && delay <= high,
                "{delay:?} outside {low:?}..={high:?}"
            );
            expected_interval = config.grow(expected_interval);
            assert_eq!(backoff.interval(), expected_interval);
        }
        assert_eq!(backoff.interval(), config.max_interval);
        backoff.reset();
        assert_eq!(backoff.interval(), config.initial_interval);
    }

    #[test]
    fn jitter_depends_on_the_seed_only() {
        let delays = |seed| {
            let mut backoff = Backoff::new(BackoffConfig::default(), seed);
            (0..10).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1));
        assert_ne!(delays(1), delays(2));
    }
}
