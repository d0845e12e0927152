//! The emulated network between the core and the model server: what a
//! driver's connection goes through, as pure data with deadlines.
//!
//! A pending open resolves (accepted or failed) at a known instant, every
//! response in flight has an arrival instant (FIFO on its stream, like TCP),
//! and a stream that lost a message or stalled has a death instant (when
//! HTTP/2 keep-alive notices). The harness jumps time straight to the
//! earliest of these and the core's own deadline, so an hour of faults costs
//! a few hundred steps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::core::ConnectionId;
use crate::defaults;
use crate::proto::model::StreamTagsResponse;
use crate::rng::SplitMix64;

/// How the network behaves. The default is an instant, lossless network
/// without server keep-alives: explicit ops (proptest) then decide everything.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// One-way delay of every message...
    pub latency: Duration,
    /// ...plus a uniform extra delay of up to this much.
    pub jitter: Duration,
    /// Chance that a message is lost. TCP cannot skip it, so the connection
    /// dies when the message was due.
    pub loss_per_mille: u16,
    /// The driver's limit on connecting: an open that hangs (held link) fails then.
    pub connect_timeout: Duration,
    /// How long HTTP/2 keep-alive takes to notice a stalled or cut link
    /// (PING interval plus PING timeout).
    pub keepalive_detection: Duration,
    /// The server sends an empty response after this long without a send.
    pub server_keepalive: Option<Duration>,
}

/// How long a stalled link goes unnoticed here: an HTTP/2 keep-alive scaled
/// down (PING after 20 s, 10 s to answer), as the turmoil tier scales its
/// timings. The driver's default takes 5 min 20 s
/// ([`defaults::HTTP2_KEEPALIVE_INTERVAL`] plus
/// [`defaults::HTTP2_KEEPALIVE_TIMEOUT`], kept long for the servers' ping
/// policy), longer than any hold of the `holds` scenario (3 min at most):
/// with it none would be noticed before it heals.
pub(super) const SCALED_KEEPALIVE_DETECTION: Duration = Duration::from_secs(30);

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss_per_mille: 0,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            keepalive_detection: SCALED_KEEPALIVE_DETECTION,
            server_keepalive: None,
        }
    }
}

impl NetworkConfig {
    /// The longest a message can take from one end to the other.
    pub fn max_one_way_delay(&self) -> Duration {
        self.latency + self.jitter
    }
}

/// Whether the server can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Up,
    /// Packets are dropped: opens fail at once, open streams are lost.
    Partitioned,
    /// Packets are held back: opens hang until the connect timeout, open
    /// streams stall and die unless released before keep-alive notices.
    Held,
}

/// What the driver holds: nothing, a pending open, or an open stream.
#[derive(Debug)]
pub(super) enum Link {
    Idle,
    Pending(PendingOpen),
    Open(OpenStream),
}

impl Link {
    /// The attempt the link belongs to, if any.
    pub(super) fn id(&self) -> Option<ConnectionId> {
        match self {
            Link::Idle => None,
            Link::Pending(pending) => Some(pending.id),
            Link::Open(stream) => Some(stream.id),
        }
    }
}

#[derive(Debug)]
pub(super) struct PendingOpen {
    pub id: ConnectionId,
    pub opened_at: Instant,
    pub resolution: Resolution,
}

/// When and how a pending open ends if nothing else happens first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolution {
    AcceptAt(Instant),
    FailAt(Instant),
}

#[derive(Debug)]
pub(super) struct OpenStream {
    pub id: ConnectionId,
    pub queue: VecDeque<InFlight>,
    /// When the server last sent on this stream (its keep-alive clock).
    pub last_send: Instant,
    /// A message was lost: the stream dies when it was due.
    pub lost_at: Option<Instant>,
    /// The link stalled under the stream (hold or partition).
    pub stall: Option<Stall>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Stall {
    pub since: Instant,
    /// A partition dropped data: the stream is lost even if healed in time.
    pub lossy: bool,
}

#[derive(Debug)]
pub(super) struct InFlight {
    pub arrives_at: Instant,
    pub response: StreamTagsResponse,
}

/// The next thing the network does on its own. The order breaks ties
/// between events due at the same instant: a death first, so what was due
/// with it never arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LinkEvent {
    Accept,
    Fail,
    Die,
    Arrive,
    ServerKeepAlive,
}

/// The network's state: conditions, reachability and the jitter source.
#[derive(Debug)]
pub(super) struct Network {
    pub config: NetworkConfig,
    pub reachability: Reachability,
    rng: SplitMix64,
}

impl Network {
    pub(super) fn new(config: NetworkConfig, seed: u64) -> Self {
        Self {
            config,
            reachability: Reachability::Up,
            // Its own stream of randomness: the core's jitter must not shift
            // when the network draws more or fewer numbers.
            rng: SplitMix64::new(seed ^ 0x6e65_7477_6f72_6b21),
        }
    }

    fn one_way_delay(&mut self) -> Duration {
        let jitter = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.below(jitter.saturating_add(1))
        };
        self.config.latency + Duration::from_nanos(extra)
    }

    fn lose(&mut self) -> bool {
        self.config.loss_per_mille > 0
            && self.rng.below(1000) < u64::from(self.config.loss_per_mille)
    }

    /// A new open for attempt `id`, resolving according to reachability.
    pub(super) fn open(&mut self, id: ConnectionId, now: Instant) -> PendingOpen {
        let resolution = match self.reachability {
            Reachability::Up => {
                // Connect, request and response headers: a round trip.
                Resolution::AcceptAt(now + self.one_way_delay() + self.one_way_delay())
            }
            Reachability::Partitioned => Resolution::FailAt(now),
            Reachability::Held => Resolution::FailAt(now + self.config.connect_timeout),
        };
        PendingOpen {
            id,
            opened_at: now,
            resolution,
        }
    }

    /// A stream the server just accepted.
    pub(super) fn accepted(&self, id: ConnectionId, now: Instant) -> OpenStream {
        OpenStream {
            id,
            queue: VecDeque::new(),
            last_send: now,
            lost_at: None,
            stall: None,
        }
    }

    /// The server sends `response` on `stream`: it arrives after the delay,
    /// never before what was sent earlier, unless it is lost.
    pub(super) fn send(
        &mut self,
        stream: &mut OpenStream,
        response: StreamTagsResponse,
        now: Instant,
    ) {
        stream.last_send = now;
        // FIFO: never before what was sent earlier, lost or not (so nothing
        // sent after a lost message arrives before the stream dies of it).
        let earlier = stream.queue.back().map(|last| last.arrives_at);
        let arrives_at = [Some(now + self.one_way_delay()), earlier, stream.lost_at]
            .into_iter()
            .flatten()
            .max()
            .expect("the first candidate is always there");
        if self.lose() {
            stream.lost_at = Some(stream.lost_at.map_or(arrives_at, |t| t.min(arrives_at)));
            return;
        }
        stream.queue.push_back(InFlight {
            arrives_at,
            response,
        });
    }

    /// The link to the server goes down (`Partitioned`) or stalls (`Held`).
    pub(super) fn cut(&mut self, how: Reachability, link: &mut Link, now: Instant) {
        self.reachability = how;
        match link {
            Link::Idle => {}
            Link::Pending(pending) => {
                pending.resolution = match how {
                    Reachability::Up => return,
                    Reachability::Partitioned => Resolution::FailAt(now),
                    Reachability::Held => {
                        Resolution::FailAt(pending.opened_at + self.config.connect_timeout)
                    }
                };
            }
            Link::Open(stream) => {
                let lossy = how == Reachability::Partitioned
                    || stream.stall.is_some_and(|stall| stall.lossy);
                let since = stream.stall.map_or(now, |stall| stall.since);
                stream.stall = Some(Stall { since, lossy });
            }
        }
    }

    /// Partitions heal and holds release: what was held moves on.
    pub(super) fn heal(&mut self, link: &mut Link, now: Instant) {
        let was = std::mem::replace(&mut self.reachability, Reachability::Up);
        match link {
            Link::Pending(pending) if was == Reachability::Held => {
                let ready = now + self.one_way_delay() + self.one_way_delay();
                if let Resolution::FailAt(deadline) = pending.resolution
                    && ready < deadline
                {
                    pending.resolution = Resolution::AcceptAt(ready);
                }
            }
            Link::Open(stream) => {
                if stream.stall.is_some_and(|stall| !stall.lossy) {
                    stream.stall = None;
                }
                let released = now + self.config.latency;
                for message in &mut stream.queue {
                    message.arrives_at = message.arrives_at.max(released);
                }
            }
            _ => {}
        }
    }

    /// The next event of `link` and when it happens.
    pub(super) fn next_event(&self, link: &Link) -> Option<(Instant, LinkEvent)> {
        match link {
            Link::Idle => None,
            Link::Pending(pending) => Some(match pending.resolution {
                Resolution::AcceptAt(at) => (at, LinkEvent::Accept),
                Resolution::FailAt(at) => (at, LinkEvent::Fail),
            }),
            Link::Open(stream) => {
                let death = [
                    stream.lost_at,
                    stream
                        .stall
                        .map(|stall| stall.since + self.config.keepalive_detection),
                ]
                .into_iter()
                .flatten()
                .min()
                .map(|at| (at, LinkEvent::Die));
                let flowing = self.reachability == Reachability::Up && stream.stall.is_none();
                let arrival = stream
                    .queue
                    .front()
                    .filter(|_| flowing)
                    .map(|message| (message.arrives_at, LinkEvent::Arrive));
                let keep_alive = self
                    .config
                    .server_keepalive
                    .map(|every| (stream.last_send + every, LinkEvent::ServerKeepAlive));
                [death, arrival, keep_alive].into_iter().flatten().min()
            }
        }
    }
}
