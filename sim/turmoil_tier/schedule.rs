//! The turmoil tier's scenarios: a named kind of trouble and a seed give a
//! timed list of faults (and store churn) that the checker applies between
//! simulation steps. Every fault is healed by [`FAULT_PHASE`].

use std::time::Duration;

use remote_tagger::rng::SplitMix64;

use super::CLIENTS;

/// How long faults and churn go on; then everything heals.
pub const FAULT_PHASE: Duration = Duration::from_secs(120);

/// Something the checker does to the world at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The sources change one entity (the workload generator's churn).
    Churn,
    Partition(usize),
    Repair(usize),
    Hold(usize),
    Release(usize),
    CrashServer,
    /// Restarts a crashed server (a new store instance, a new epoch).
    BounceServer,
    /// Chance per message that a link breaks (and every connection on it).
    FailRate {
        per_mille: u16,
    },
    /// Every client/server link's latency becomes this (fixed, no jitter:
    /// see [`super::Run::new`]).
    Latency {
        millis: u64,
    },
    /// The client stops reading from its connections...
    Stall(usize),
    /// ...and reads again.
    Resume(usize),
    /// The server's token file gets a new token; new streams of clients
    /// still sending the old one are refused...
    RotateServerToken,
    /// ...until the clients' token file gets it too.
    RotateClientToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Steady,
    Partitions,
    Holds,
    ServerCrash,
    FailRate,
    StalledClient,
    TokenRotation,
    ShortDisconnects,
    Chaos,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Steady,
        Scenario::Partitions,
        Scenario::Holds,
        Scenario::ServerCrash,
        Scenario::FailRate,
        Scenario::StalledClient,
        Scenario::TokenRotation,
        Scenario::ShortDisconnects,
        Scenario::Chaos,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Partitions => "partitions",
            Scenario::Holds => "holds",
            Scenario::ServerCrash => "server-crash",
            Scenario::FailRate => "fail-rate",
            Scenario::StalledClient => "stalled-client",
            Scenario::TokenRotation => "token-rotation",
            Scenario::ShortDisconnects => "short-disconnects",
            Scenario::Chaos => "chaos",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Steady => "churn and latency changes, no fault: one snapshot per client",
            Scenario::Partitions => {
                "client/server partitions of 1-30 s: connects fail at once, streams die by keep-alive"
            }
            Scenario::Holds => "holds of 1-20 s: connects hang to the timeout, short holds survive",
            Scenario::ServerCrash => {
                "the server host crashes (connects hang) and comes back with a new epoch"
            }
            Scenario::FailRate => "periods of random link failures killing whole connections",
            Scenario::StalledClient => {
                "a client stops reading for 1-40 s: the server times it out or evicts it"
            }
            Scenario::TokenRotation => {
                "token rotations (server first, clients later) with disconnects in between"
            }
            Scenario::ShortDisconnects => {
                "10-15 s partitions with the change log intact: every reconnect resumes"
            }
            Scenario::Chaos => "every fault above, overlapping",
        }
    }
}

/// A scenario's seeded plan.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub scenario: Scenario,
    /// The links' latency at the start...
    pub initial_latency: Duration,
    /// ...and the worst it gets (what the liveness bound allows for).
    pub max_latency: Duration,
    /// In time order; same-time faults keep their order.
    pub faults: Vec<(Duration, Fault)>,
}

impl Schedule {
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x7475_726d_6f69_6c21);
        let mut plan = Planner {
            rng: &mut rng,
            faults: Vec::new(),
            max_latency: 0,
        };
        let initial_latency = plan.between(2, 40);
        plan.max_latency = initial_latency;
        match scenario {
            Scenario::Steady => {
                plan.churn(1_000);
                plan.latency_changes();
            }
            Scenario::Partitions => {
                plan.churn(1_000);
                plan.client_outages(Fault::Partition, Fault::Repair, 1_000, 30_000);
            }
            Scenario::Holds => {
                plan.churn(1_000);
                plan.client_outages(Fault::Hold, Fault::Release, 1_000, 20_000);
            }
            Scenario::ServerCrash => {
                plan.churn(1_000);
                plan.server_crashes();
            }
            Scenario::FailRate => {
                plan.churn(500);
                plan.fail_rate_periods();
            }
            Scenario::StalledClient => {
                plan.churn(300);
                plan.client_outages(Fault::Stall, Fault::Resume, 1_000, 40_000);
            }
            Scenario::TokenRotation => {
                plan.churn(1_000);
                plan.token_rotations();
                plan.client_outages(Fault::Partition, Fault::Repair, 8_000, 12_000);
            }
            Scenario::ShortDisconnects => {
                plan.churn(3_000);
                plan.client_outages(Fault::Partition, Fault::Repair, 10_000, 15_000);
            }
            Scenario::Chaos => {
                plan.churn(500);
                plan.latency_changes();
                plan.client_outages(Fault::Partition, Fault::Repair, 500, 20_000);
                plan.client_outages(Fault::Hold, Fault::Release, 500, 20_000);
                plan.client_outages(Fault::Stall, Fault::Resume, 500, 20_000);
                plan.server_crashes();
                plan.fail_rate_periods();
                plan.token_rotations();
            }
        }
        plan.heal_everything();
        let max_latency = Duration::from_millis(plan.max_latency);
        let mut faults = plan.faults;
        faults.sort_by_key(|(at, _)| *at);
        Self {
            scenario,
            initial_latency: Duration::from_millis(initial_latency),
            max_latency,
            faults,
        }
    }
}

struct Planner<'a> {
    rng: &'a mut SplitMix64,
    faults: Vec<(Duration, Fault)>,
    max_latency: u64,
}

impl Planner<'_> {
    /// A uniform integer in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.rng.below(high - low + 1)
    }

    fn at(&mut self, millis: u64, fault: Fault) {
        self.faults.push((Duration::from_millis(millis), fault));
    }

    /// The end of the fault phase, in ms.
    fn phase_end() -> u64 {
        FAULT_PHASE.as_millis() as u64
    }

    /// One churn event every `mean` ms on average, through the fault phase.
    fn churn(&mut self, mean: u64) {
        let mut at = 0;
        loop {
            at += self.between(1, 2 * mean);
            if at >= Self::phase_end() {
                return;
            }
            self.at(at, Fault::Churn);
        }
    }

    /// For each client, outages (`start` .. `end`) of `shortest..=longest` ms
    /// with gaps of 2-20 s, all ended by the fault phase's end.
    fn client_outages(
        &mut self,
        start: fn(usize) -> Fault,
        end: fn(usize) -> Fault,
        shortest: u64,
        longest: u64,
    ) {
        for client in 0..CLIENTS.len() {
            let mut at = self.between(0, 20_000);
            while at < Self::phase_end() {
                let length = self.between(shortest, longest);
                let healed = (at + length).min(Self::phase_end());
                self.at(at, start(client));
                self.at(healed, end(client));
                at = healed + self.between(2_000, 20_000);
            }
        }
    }

    fn server_crashes(&mut self) {
        let mut at = self.between(5_000, 30_000);
        while at < Self::phase_end() {
            let down = self.between(500, 20_000);
            let back = (at + down).min(Self::phase_end());
            self.at(at, Fault::CrashServer);
            self.at(back, Fault::BounceServer);
            at = back + self.between(10_000, 40_000);
        }
    }

    fn fail_rate_periods(&mut self) {
        let mut at = self.between(0, 20_000);
        while at < Self::phase_end() {
            let length = self.between(2_000, 20_000);
            let end = (at + length).min(Self::phase_end());
            let per_mille = self.between(1, 20) as u16;
            self.at(at, Fault::FailRate { per_mille });
            self.at(end, Fault::FailRate { per_mille: 0 });
            at = end + self.between(5_000, 30_000);
        }
    }

    fn latency_changes(&mut self) {
        let mut at = self.between(0, 20_000);
        while at < Self::phase_end() {
            let millis = self.between(1, 200);
            self.max_latency = self.max_latency.max(millis);
            self.at(at, Fault::Latency { millis });
            at += self.between(5_000, 30_000);
        }
    }

    /// At the end of the fault phase, whatever is still broken is healed
    /// (most faults are already: this covers overlapping ones).
    fn heal_everything(&mut self) {
        let end = Self::phase_end();
        for client in 0..CLIENTS.len() {
            self.at(end, Fault::Release(client));
            self.at(end, Fault::Repair(client));
            self.at(end, Fault::Resume(client));
        }
        self.at(end, Fault::FailRate { per_mille: 0 });
        self.at(end, Fault::BounceServer);
    }

    fn token_rotations(&mut self) {
        let mut at = self.between(5_000, 30_000);
        while at < Self::phase_end() {
            let lag = self.between(100, 5_000);
            let client_side = (at + lag).min(Self::phase_end());
            self.at(at, Fault::RotateServerToken);
            self.at(client_side, Fault::RotateClientToken);
            at = client_side + self.between(10_000, 40_000);
        }
    }
}
