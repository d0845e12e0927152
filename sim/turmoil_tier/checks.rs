//! What the turmoil tier checks from outside the client and server: ERROR
//! logs and panics, mirror contents against the server's store states, and
//! backoff delays.

use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use remote_tagger::core::BackoffConfig;
use remote_tagger::domain::{Cardinality, Entity};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Collects every ERROR-level event (none is allowed) with its message.
#[derive(Clone, Default)]
pub struct ErrorLog(Arc<Mutex<Vec<String>>>);

impl ErrorLog {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<S: Subscriber> Layer<S> for ErrorLog {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        let mut text = format!("{}: ", event.metadata().target());
        event.record(&mut MessageText(&mut text));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text);
    }
}

struct MessageText<'a>(&'a mut String);

impl tracing::field::Visit for MessageText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

thread_local! {
    /// Panics on this thread, recorded by the hook of [`install_panic_hook`].
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records every panic on the thread it happens on (tokio catches the
/// panics of spawned tasks, so they would go unnoticed), then defers to the
/// default hook. Installed once per process.
pub fn install_panic_hook_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|panics| panics.borrow_mut().push(info.to_string()));
            default(info);
        }));
    });
}

/// The panics recorded on this thread since the last call.
pub fn take_panics() -> Vec<String> {
    PANICS.with(|panics| std::mem::take(&mut *panics.borrow_mut()))
}

/// What one client mirrors: its cardinality and requested prefixes.
#[derive(Debug, Clone)]
pub struct View {
    pub cardinality: Cardinality,
    pub prefixes: Vec<String>,
}

impl View {
    /// Order-independent hash of a set of entities as this view sees them
    /// (filtered and reduced; a mirror's entities already are): the wrapping
    /// sum of the entities' hashes, so a mirror and the server's store
    /// compare in one number each.
    pub fn hash<'a>(&self, entities: impl IntoIterator<Item = &'a Entity>) -> u64 {
        entities
            .into_iter()
            .filter(|entity| self.prefixes.iter().any(|p| p == entity.id.prefix()))
            .map(|entity| entity_hash(&entity.reduced(self.cardinality)))
            .fold(0u64, u64::wrapping_add)
    }
}

fn entity_hash(entity: &Entity) -> u64 {
    let mut hasher = DefaultHasher::new();
    entity.id.as_str().hash(&mut hasher);
    entity.low.hash(&mut hasher);
    entity.orchestrator.hash(&mut hasher);
    entity.high.hash(&mut hasher);
    entity.standard.hash(&mut hasher);
    hasher.finish()
}

/// Every state the server's store has been in, as one client's view sees it.
#[derive(Debug, Default)]
pub struct History(HashSet<u64>);

impl History {
    pub fn record(&mut self, view_hash: u64) {
        self.0.insert(view_hash);
    }

    pub fn contains(&self, view_hash: u64) -> bool {
        self.0.contains(&view_hash)
    }
}

/// Checks each `ConnectionLost` delay of one client against the backoff.
///
/// The core resets the backoff once a stream has stayed up `reset_after`
/// since its first good message. From outside, that first message is not
/// always visible: a change invisible at the client's cardinality starts
/// the period silently, earlier than any event shows. So the check resets
/// only when the visible first good message (a `Synced` or
/// `EntitiesChanged` event) is at least `reset_after` plus `slack` (how
/// late this observer may see events and losses) before the loss; and
/// after `k` losses since that reset, a delay must lie within the jittered
/// bounds of one of the first `k + 1` intervals of the ladder
/// `initial, initial × m, ...` (capped). The pure tier checks the exact one.
#[derive(Debug)]
pub struct BackoffCheck {
    config: BackoffConfig,
    slack: Duration,
    losses_since_reset: usize,
    /// When the current stream's first good message was seen.
    first_good_at: Option<Instant>,
}

impl BackoffCheck {
    pub fn new(config: BackoffConfig, slack: Duration) -> Self {
        Self {
            config,
            slack,
            losses_since_reset: 0,
            first_good_at: None,
        }
    }

    /// A message moved the sync forward at `now`.
    pub fn good(&mut self, now: Instant) {
        self.first_good_at.get_or_insert(now);
    }

    /// The stream was lost at `now`, the next attempt after `retry_in`.
    pub fn loss(&mut self, now: Instant, retry_in: Duration) -> Result<(), String> {
        let proven = self
            .first_good_at
            .take()
            .is_some_and(|at| now >= at + self.config.reset_after + self.slack);
        if proven {
            self.losses_since_reset = 0;
        }
        let mut interval = self.config.initial_interval;
        let mut allowed = Vec::new();
        for _ in 0..=self.losses_since_reset {
            let (low, high) = self.config.jitter_bounds(interval);
            if low <= retry_in && retry_in <= high {
                self.losses_since_reset += 1;
                return Ok(());
            }
            allowed.push(format!("{low:?}..={high:?}"));
            if interval == self.config.max_interval {
                break;
            }
            interval = self.config.grow(interval);
        }
        Err(format!(
            "backoff delay {retry_in:?} after {} losses is outside every allowed range: {}",
            self.losses_since_reset,
            allowed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn error_log_catches_errors_only() {
        let errors = ErrorLog::default();
        let subscriber = tracing_subscriber::registry().with(errors.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("not this one");
            tracing::error!(code = 7, "this one");
        });
        let caught = errors.take();
        assert_eq!(caught.len(), 1, "{caught:?}");
        assert!(caught[0].contains("this one") && caught[0].contains("code=7"));
        assert!(errors.take().is_empty());
    }

    #[test]
    fn backoff_check_follows_the_ladder_and_its_resets() {
        let config = BackoffConfig::default(); // 500 ms, x1.5, +-50 %, reset after 30 s
        let slack = Duration::from_millis(5);
        let mut check = BackoffCheck::new(config.clone(), slack);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // First loss: only the initial interval's range, 250..=750 ms.
        assert!(check.loss(at(0), Duration::from_millis(800)).is_err());
        assert!(check.loss(at(0), Duration::from_millis(700)).is_ok());
        // Second: 750 ms +-50 % is allowed now (so is the first rung).
        assert!(check.loss(at(1), Duration::from_millis(1_100)).is_ok());
        // A good message, then a loss before the reset period: no reset.
        check.good(at(2));
        assert!(check.loss(at(31), Duration::from_millis(1_600)).is_ok());
        // Up the reset period (and the slack) after it: reset.
        check.good(at(40));
        assert!(
            check
                .loss(at(70) + slack, Duration::from_millis(1_100))
                .is_err()
        );
        assert!(check.loss(at(71), Duration::from_millis(100)).is_err());
        // Only the stream's first good message starts the period.
        assert!(check.loss(at(72), Duration::from_millis(700)).is_ok());
        check.good(at(80));
        check.good(at(100));
        assert!(
            check.loss(at(111), Duration::from_millis(1_100)).is_err(),
            "reset 30 s after the first good message"
        );
    }

    #[test]
    fn view_hash_ignores_order_other_prefixes_and_dropped_tags() {
        let view = View {
            cardinality: Cardinality::Low,
            prefixes: vec!["process".to_owned()],
        };
        let entity = |id: &str, high: &str| {
            let mut entity = Entity::new(remote_tagger::domain::EntityId::parse(id).unwrap());
            entity.low = vec!["env:prod".to_owned()];
            entity.high = vec![high.to_owned()];
            entity
        };
        let (a, b) = (entity("process://1", "x"), entity("process://2", "y"));
        let other = entity("container_id://1", "z");
        assert_eq!(view.hash([&a, &b]), view.hash([&b, &other, &a]));
        // A LOW view does not see high tags.
        assert_eq!(
            view.hash([&a]),
            view.hash([&entity("process://1", "changed")])
        );
        assert_ne!(view.hash([&a]), view.hash([&a, &b]));
    }
}
