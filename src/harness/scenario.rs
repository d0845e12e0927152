//! Seeded scenarios of the pure simulation tier: a named kind of trouble and
//! a seed give a timed schedule of faults and server churn, which runs on the
//! [`Harness`] with the emulated network deciding everything
//! else. Every invariant is checked after every step; at the end the faults
//! heal and the client must converge within [`liveness_bound`].

use std::fmt;
use std::time::{Duration, Instant};

use super::network::SCALED_KEEPALIVE_DETECTION;
use super::{HARNESS_PREFIXES, Harness, HarnessConfig, NetworkConfig, Op, Violation};
use crate::core::BackoffConfig;
use crate::defaults;
use crate::domain::Cardinality;
use crate::rng::SplitMix64;

/// How long faults and churn go on before everything heals.
pub const FAULT_PHASE: Duration = Duration::from_secs(60 * 60);

/// Milliseconds between two drops of `flapping`: well within the backoff's
/// reset period, so no stream earns a reset.
const FLAP_EVERY_MS: (u64, u64) = (1_000, 3_000);

/// A named kind of trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Latency, jitter and churn, no fault.
    Steady,
    /// Lost messages kill streams at random.
    Lossy,
    /// Partitions: opens fail at once, the backoff grows to its cap.
    Partitions,
    /// Holds: opens hang to the connect timeout.
    Holds,
    /// Server restarts and stream drops.
    Restarts,
    /// Short disconnects with the change log intact: every reconnect resumes.
    ShortDisconnects,
    /// A server without the extensions (plain Datadog).
    PlainDatadog,
    /// A server that drops every stream within seconds of syncing it.
    Flapping,
    /// Everything at once, malformed and stale input included.
    Chaos,
}

impl Scenario {
    /// Every scenario, in the order the sweeps run them.
    pub const ALL: [Scenario; 9] = [
        Scenario::Steady,
        Scenario::Lossy,
        Scenario::Partitions,
        Scenario::Holds,
        Scenario::Restarts,
        Scenario::ShortDisconnects,
        Scenario::PlainDatadog,
        Scenario::Flapping,
        Scenario::Chaos,
    ];

    /// The name the `sim` runner takes (`short-disconnects`).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Lossy => "lossy",
            Scenario::Partitions => "partitions",
            Scenario::Holds => "holds",
            Scenario::Restarts => "restarts",
            Scenario::ShortDisconnects => "short-disconnects",
            Scenario::PlainDatadog => "plain-datadog",
            Scenario::Flapping => "flapping",
            Scenario::Chaos => "chaos",
        }
    }

    /// The scenario of a [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// One line on what goes wrong in it.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::Steady => {
                "latency and jitter, churn, no fault: one snapshot, then live changes only"
            }
            Scenario::Lossy => "lost messages kill streams at random (1-5 % per message)",
            Scenario::Partitions => {
                "partitions from 1 s to 20 min: opens fail at once, backoff grows to its cap"
            }
            Scenario::Holds => {
                "holds from 1 s to 3 min: opens hang to the connect timeout, short holds survive"
            }
            Scenario::Restarts => {
                "server restarts (new epoch, log lost) and stream drops (log intact)"
            }
            Scenario::ShortDisconnects => {
                "short disconnects with the change log intact: every reconnect resumes, one snapshot in all"
            }
            Scenario::PlainDatadog => {
                "a server without the extensions (plain Datadog): drops and partitions"
            }
            Scenario::Flapping => {
                "a server that drops every stream within seconds, right after its snapshot or resume: the backoff climbs its ladder all the same"
            }
            Scenario::Chaos => {
                "everything at once: partitions, holds, loss, latency changes, restarts, malformed and stale input"
            }
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The longest a client may take, once every fault is healed, to be synced
/// with a mirror equal to the server's store:
///
/// 1. noticing that its current attempt is dead: a held open fails at the
///    connect timeout, a stream stalled by a partition dies when HTTP/2
///    keep-alive notices (whichever is longer);
/// 2. then the longest backoff wait: the cap plus its jitter,
///    `max_interval × (1 + randomization)` (5 min × 1.5 = 7.5 min by default);
/// 3. then the sync itself: the open's round trip, then the snapshot (or
///    resume), all sent at once, whose last message lands one delay later:
///    three worst one-way delays.
pub fn liveness_bound(backoff: &BackoffConfig, network: &NetworkConfig) -> Duration {
    let noticing = network.connect_timeout.max(network.keepalive_detection);
    let longest_backoff = backoff.max_interval.mul_f64(1.0 + backoff.randomization);
    let sync = network.max_one_way_delay() * 3;
    noticing + longest_backoff + sync
}

/// The most connect attempts a client can make within `window` while no
/// stream lives long enough to reset its backoff: the first at once, then
/// one after each delay of the ladder, every delay as short as its jitter
/// allows. Unbounded (`usize::MAX`) if the jitter can draw a zero delay.
pub fn most_attempts_within(backoff: &BackoffConfig, window: Duration) -> usize {
    let mut attempts = 1;
    let mut interval = backoff.initial_interval;
    let mut elapsed = Duration::ZERO;
    loop {
        let shortest = backoff.jitter_bounds(interval).0;
        if shortest.is_zero() {
            return usize::MAX;
        }
        elapsed += shortest;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
        interval = backoff.grow(interval);
    }
}

/// A scenario's seeded plan: the harness it runs on and what happens when.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The kind of trouble.
    pub scenario: Scenario,
    /// The seed the plan and the run are drawn from.
    pub seed: u64,
    /// The harness the plan runs on.
    pub config: HarnessConfig,
    /// Faults and churn at times since the start, in time order.
    pub events: Vec<(Duration, Op)>,
}

/// What a passing run measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Stable hash of the application-level trace (see [`trace_hash`]).
    pub trace_hash: u64,
    /// The trace: ops, network events, commands, events, timers.
    pub trace: Vec<String>,
    /// Simulated time from start to convergence.
    pub simulated: Duration,
    /// From the heal to convergence, and the bound it must stay within.
    pub time_to_converge: Duration,
    /// The most [`time_to_converge`](Self::time_to_converge) may be.
    pub liveness_bound: Duration,
    /// Streams the server answered with a snapshot.
    pub snapshots_sent: u64,
    /// Streams the server answered with a resume.
    pub resumes_sent: u64,
    /// Connect attempts until the heal.
    pub attempts_before_heal: usize,
}

/// FNV-1a 64 over the trace lines, each ended by a newline: stable across
/// runs, platforms and Rust versions (unlike `DefaultHasher`).
pub fn trace_hash(lines: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in lines.iter().flat_map(|line| line.bytes().chain([b'\n'])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Schedule {
    /// The plan of `scenario` for `seed`: the same pair always gives the same plan.
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ scenario_salt(scenario));
        let mut plan = Planner {
            rng: &mut rng,
            events: Vec::new(),
        };
        let config = plan.harness_config(scenario);
        plan.prefill();
        match scenario {
            Scenario::Steady => plan.churn(Duration::from_secs(20)),
            Scenario::Lossy => {
                let per_mille = plan.between(10, 50) as u16;
                plan.at(Duration::ZERO, Op::SetLoss { per_mille });
                plan.churn(Duration::from_secs(10));
            }
            Scenario::Partitions => {
                plan.churn(Duration::from_secs(15));
                plan.outages(Op::Partition, 1_000, 20 * 60_000);
            }
            Scenario::Holds => {
                plan.churn(Duration::from_secs(15));
                plan.outages(Op::Hold, 1_000, 3 * 60_000);
            }
            Scenario::Restarts => {
                plan.churn(Duration::from_secs(15));
                plan.restarts();
            }
            Scenario::ShortDisconnects => {
                plan.churn(Duration::from_secs(60));
                plan.short_disconnects();
            }
            Scenario::PlainDatadog => {
                plan.churn(Duration::from_secs(15));
                plan.short_disconnects();
                plan.outages(Op::Partition, 1_000, 5 * 60_000);
            }
            Scenario::Flapping => {
                plan.churn(Duration::from_secs(15));
                plan.flaps();
            }
            Scenario::Chaos => {
                plan.churn(Duration::from_secs(8));
                plan.chaos();
            }
        }
        let mut events = plan.events;
        events.sort_by_key(|(at, _)| *at); // stable: same-time ops keep their order
        Self {
            scenario,
            seed,
            config,
            events,
        }
    }

    /// Runs the plan, heals everything at [`FAULT_PHASE`], and checks that
    /// the client converges in time and that the scenario's efficiency
    /// expectations hold. The harness checks every invariant after every step.
    pub fn run(&self) -> Result<Outcome, Violation> {
        let start = Instant::now();
        let mut harness = Harness::new(self.config.clone(), start)?;
        let bound = liveness_bound(&harness.core().config().backoff, &self.config.network);
        let result = self.drive(&mut harness, start, bound);
        result.map_err(|Violation(what)| {
            Violation(format!(
                "{what}\nscenario {} seed {}\ntrace tail:\n{}",
                self.scenario,
                self.seed,
                harness.trace_tail()
            ))
        })
    }

    fn drive(
        &self,
        harness: &mut Harness,
        start: Instant,
        bound: Duration,
    ) -> Result<Outcome, Violation> {
        for (at, op) in &self.events {
            harness.run_network_until(start + *at, false)?;
            harness.step(op)?;
        }
        harness.run_network_until(start + FAULT_PHASE, false)?;
        let attempts_before_heal = harness.attempts();
        harness.step(&Op::Heal)?;
        harness.step(&Op::SetLoss { per_mille: 0 })?;
        let healed = harness.now();
        if !harness.run_network_until(healed + bound, true)? {
            return Err(Violation(format!(
                "not converged within the liveness bound {bound:?} after the heal: state {:?}",
                harness.core().connection_state()
            )));
        }
        let server = harness.server();
        let outcome = Outcome {
            trace_hash: trace_hash(harness.trace()),
            trace: harness.trace().to_vec(),
            simulated: harness.elapsed(),
            time_to_converge: harness.now() - healed,
            liveness_bound: bound,
            snapshots_sent: server.snapshots_sent(),
            resumes_sent: server.resumes_sent(),
            attempts_before_heal,
        };
        self.check_efficiency(&outcome, &harness.core().config().backoff)?;
        Ok(outcome)
    }

    /// Where no fault forces one, a reconnect must resume, not re-snapshot;
    /// where no stream lives long enough to reset the backoff, attempts
    /// come no faster than its ladder.
    fn check_efficiency(
        &self,
        outcome: &Outcome,
        backoff: &BackoffConfig,
    ) -> Result<(), Violation> {
        let most_attempts = most_attempts_within(backoff, FAULT_PHASE);
        match self.scenario {
            Scenario::Steady | Scenario::ShortDisconnects if outcome.snapshots_sent != 1 => {
                Err(Violation(format!(
                    "{} snapshots sent where only the first was needed ({} resumes)",
                    outcome.snapshots_sent, outcome.resumes_sent
                )))
            }
            Scenario::ShortDisconnects if outcome.resumes_sent == 0 => Err(Violation(
                "short disconnects with the log intact, yet no stream resumed".to_owned(),
            )),
            Scenario::Flapping if outcome.attempts_before_heal > most_attempts => {
                Err(Violation(format!(
                    "{} connect attempts in {FAULT_PHASE:?} of streams dropped within seconds; the backoff ladder allows {most_attempts}",
                    outcome.attempts_before_heal
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Distinct per scenario, so one seed plans different runs in each.
fn scenario_salt(scenario: Scenario) -> u64 {
    let index = Scenario::ALL
        .iter()
        .position(|s| *s == scenario)
        .expect("every scenario is in ALL");
    (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Builds a schedule from the seed's random stream.
struct Planner<'a> {
    rng: &'a mut SplitMix64,
    events: Vec<(Duration, Op)>,
}

impl Planner<'_> {
    /// A uniform integer in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.rng.below(high - low + 1)
    }

    fn millis_between(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    fn chance(&mut self, per_cent: u64) -> bool {
        self.rng.below(100) < per_cent
    }

    fn at(&mut self, at: Duration, op: Op) {
        self.events.push((at, op));
    }

    fn harness_config(&mut self, scenario: Scenario) -> HarnessConfig {
        let cardinality = Cardinality::ALL[self.rng.below(3) as usize];
        let mut prefixes: Vec<usize> = (0..HARNESS_PREFIXES.len())
            .filter(|_| self.chance(70))
            .collect();
        if prefixes.is_empty() {
            prefixes.push(self.rng.below(HARNESS_PREFIXES.len() as u64) as usize);
        }
        let latency = self.millis_between(1, 100);
        let jitter = self.millis_between(0, 50);
        HarnessConfig {
            seed: self.rng.next_u64(),
            cardinality,
            prefixes,
            extensions: scenario != Scenario::PlainDatadog,
            // Now and then a server from before the prefix filter.
            server_ignores_prefixes: self.chance(20),
            chunk_events: self.between(1, 5) as usize,
            // Enough for any outage of short-disconnects; small elsewhere, so
            // long outages outrun the log and force snapshots.
            log_capacity: if scenario == Scenario::ShortDisconnects {
                256
            } else {
                self.between(2, 24) as usize
            },
            network: NetworkConfig {
                latency,
                jitter,
                loss_per_mille: 0,
                connect_timeout: defaults::CONNECT_TIMEOUT,
                keepalive_detection: SCALED_KEEPALIVE_DETECTION,
                server_keepalive: Some(defaults::SERVER_KEEPALIVE_INTERVAL),
            },
        }
    }

    /// The store the server starts with, there before the client's first open lands.
    fn prefill(&mut self) {
        for entity in 0..12u8 {
            if self.chance(60) {
                let variant = self.rng.below(8) as u8;
                self.at(Duration::ZERO, Op::ServerUpsert { entity, variant });
            }
        }
    }

    /// Store changes throughout the fault phase, `mean` apart on average.
    fn churn(&mut self, mean: Duration) {
        let mean_ms = mean.as_millis() as u64;
        let mut at = Duration::ZERO;
        loop {
            at += self.millis_between(1, 2 * mean_ms);
            if at >= FAULT_PHASE {
                return;
            }
            let entity = self.rng.below(256) as u8;
            let op = if self.chance(75) {
                Op::ServerUpsert {
                    entity,
                    variant: self.rng.below(256) as u8,
                }
            } else {
                Op::ServerDelete { entity }
            };
            self.at(at, op);
        }
    }

    /// Non-overlapping outages of kind `fault` (partition or hold), each
    /// lasting `shortest..=longest` ms, then healed.
    fn outages(&mut self, fault: Op, shortest: u64, longest: u64) {
        let mut at = self.millis_between(0, 5 * 60_000);
        while at < FAULT_PHASE {
            // Log-uniform lengths: as many second-long blips as long outages.
            let length = log_uniform(self.rng, shortest, longest);
            self.at(at, fault.clone());
            self.at(at + length, Op::Heal);
            at += length + self.millis_between(10_000, 10 * 60_000);
        }
    }

    fn restarts(&mut self) {
        let mut at = self.millis_between(30_000, 5 * 60_000);
        while at < FAULT_PHASE {
            let op = if self.chance(50) {
                Op::ServerRestart
            } else {
                Op::ServerDropStreams
            };
            self.at(at, op);
            at += self.millis_between(30_000, 15 * 60_000);
        }
    }

    /// The server drops its streams every few seconds, so none lives long
    /// enough to reset the backoff (at most [`FLAP_EVERY_MS`] apart).
    fn flaps(&mut self) {
        let mut at = Duration::ZERO;
        loop {
            at += self.millis_between(FLAP_EVERY_MS.0, FLAP_EVERY_MS.1);
            if at >= FAULT_PHASE {
                return;
            }
            self.at(at, Op::ServerDropStreams);
        }
    }

    /// Streams dropped by the server or broken on the way, the log intact.
    fn short_disconnects(&mut self) {
        let mut at = self.millis_between(10_000, 5 * 60_000);
        while at < FAULT_PHASE {
            let op = if self.chance(50) {
                Op::ServerDropStreams
            } else {
                Op::BreakStream
            };
            self.at(at, op);
            at += self.millis_between(60_000, 10 * 60_000);
        }
    }

    fn chaos(&mut self) {
        let mut at = Duration::ZERO;
        while at < FAULT_PHASE {
            at += self.millis_between(1_000, 3 * 60_000);
            let op = match self.rng.below(11) {
                0 | 1 => {
                    let fault = if self.chance(50) {
                        Op::Partition
                    } else {
                        Op::Hold
                    };
                    let length = log_uniform(self.rng, 500, 10 * 60_000);
                    self.at(at + length, Op::Heal);
                    fault
                }
                2 => Op::SetLoss {
                    per_mille: self.between(0, 80) as u16,
                },
                3 => Op::SetLatency {
                    millis: self.between(0, 2_000) as u16,
                    jitter_millis: self.between(0, 500) as u16,
                },
                4 => Op::ServerRestart,
                5 => Op::ServerDropStreams,
                6 => Op::BreakStream,
                7 => Op::Malformed {
                    kind: self.rng.below(256) as u8,
                },
                8 => Op::DeleteUnknown,
                9 => Op::Stale {
                    kind: self.rng.below(256) as u8,
                    back: self.rng.below(256) as u8,
                },
                _ => Op::SetExtensions {
                    enabled: self.chance(70),
                },
            };
            self.at(at, op);
        }
        // Whatever the dice left, the server speaks the extensions at the end.
        self.at(FAULT_PHASE, Op::SetExtensions { enabled: true });
    }
}

/// A duration in `low..=high` ms whose logarithm is uniform.
fn log_uniform(rng: &mut SplitMix64, low: u64, high: u64) -> Duration {
    let (low, high) = (low as f64, high as f64);
    let millis = low * (high / low).powf(rng.next_f64());
    Duration::from_millis(millis as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_what_the_doc_says_for_the_defaults() {
        let network = NetworkConfig {
            latency: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            ..NetworkConfig::default()
        };
        // 30 s keep-alive detection + 450 s backoff + 3 × 150 ms.
        assert_eq!(
            liveness_bound(&BackoffConfig::default(), &network),
            Duration::from_millis(30_000 + 450_000 + 450)
        );
    }

    #[test]
    fn the_ladder_allows_twelve_attempts_a_minute_by_default() {
        // Shortest delays 250, 375, 563 ms...: eleven of them sum to 42.7 s,
        // twelve to 64.4 s.
        let backoff = BackoffConfig::default();
        assert_eq!(most_attempts_within(&backoff, Duration::from_secs(60)), 12);
        assert_eq!(
            most_attempts_within(&backoff, Duration::from_millis(249)),
            1
        );
        let jitter_to_zero = BackoffConfig {
            randomization: 1.0,
            ..BackoffConfig::default()
        };
        assert_eq!(
            most_attempts_within(&jitter_to_zero, Duration::from_secs(1)),
            usize::MAX
        );
    }

    #[test]
    fn flapping_streams_never_last_the_backoff_reset_period() {
        let longest_life = Duration::from_millis(FLAP_EVERY_MS.1);
        assert!(longest_life < BackoffConfig::default().reset_after);
    }

    #[test]
    fn names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::from_name(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::from_name("nope"), None);
    }
}
