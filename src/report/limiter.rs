//! The rate limiter of Events: the same note at most once per
//! [`EventLimits::repeat_interval`], every Warning a token from a bucket, a
//! recovery only after a posted Warning (see [`super::events`]).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use tokio::time::Instant;

/// Distinct notes remembered for [`EventLimits::repeat_interval`].
const MAX_RECENT_NOTES: usize = 64;

/// How many Events a run of failures may cause (see the module docs).
#[derive(Debug, Clone)]
pub struct EventLimits {
    /// The same note is posted at most once per this, while failures last.
    pub repeat_interval: Duration,
    /// Warnings that may be posted at once; 0 posts none.
    pub burst: u32,
    /// One more Warning may be posted per this, up to `burst`.
    pub refill: Duration,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            repeat_interval: Duration::from_secs(5 * 60),
            burst: 10,
            refill: Duration::from_secs(60),
        }
    }
}

/// Whether an Event is to be posted, by the rules of the module docs. Pure: the
/// caller passes the time in.
#[derive(Debug)]
pub(super) struct Limiter {
    limits: EventLimits,
    tokens: u32,
    refilled: Instant,
    /// Notes posted in this run of failures, with when.
    recent: HashMap<String, Instant>,
    /// Failed renders in a row.
    pub(super) failures: u64,
    /// Whether a Warning was posted for this run of failures.
    warned: bool,
}

impl Limiter {
    pub(super) fn new(limits: EventLimits, now: Instant) -> Limiter {
        Limiter {
            tokens: limits.burst,
            limits,
            refilled: now,
            recent: HashMap::new(),
            failures: 0,
            warned: false,
        }
    }

    /// A render failed with `note`: whether to post a Warning.
    pub(super) fn failure(&mut self, note: &str, now: Instant) -> bool {
        self.failures += 1;
        let interval = self.limits.repeat_interval;
        if self
            .recent
            .get(note)
            .is_some_and(|at| now.saturating_duration_since(*at) < interval)
        {
            return false;
        }
        if !self.take_token(now) {
            return false;
        }
        self.recent
            .retain(|_, at| now.saturating_duration_since(*at) < interval);
        if self.recent.len() >= MAX_RECENT_NOTES
            && let Some(oldest) = self.recent.iter().min_by_key(|(_, at)| **at).map(|(n, _)| n.clone())
        {
            self.recent.remove(&oldest);
        }
        self.recent.insert(note.to_owned(), now);
        self.warned = true;
        true
    }

    /// A render succeeded: the number of failures it ends, if a recovery is to
    /// be posted.
    pub(super) fn success(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.recent.clear();
        std::mem::take(&mut self.warned).then_some(failures)
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let (burst, refill) = (self.limits.burst, self.limits.refill);
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = if refill.is_zero() {
            u128::from(burst)
        } else {
            elapsed.as_nanos() / refill.as_nanos()
        };
        if earned >= u128::from(burst.saturating_sub(self.tokens)) {
            self.tokens = burst;
            self.refilled = now;
        } else if earned > 0 {
            // Less than `burst`, so it fits.
            let earned = earned as u32;
            self.tokens += earned;
            self.refilled += refill * earned;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What makes two notes the same for [`EventLimits::repeat_interval`]: the note
/// with the random part of staged file names (`output`'s `.kube-template-XXXXXX`)
/// masked, since a failed `check` names the staged file and every retry stages a
/// new one.
pub(super) fn repeat_key(note: &str) -> std::borrow::Cow<'_, str> {
    static STAGED: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\.kube-template-[A-Za-z0-9]+").expect("a valid regex"));
    STAGED.replace_all(note, ".kube-template-*")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limits(repeat_interval: Duration, burst: u32, refill: Duration) -> EventLimits {
        EventLimits {
            repeat_interval,
            burst,
            refill,
        }
    }

    #[test]
    fn the_same_failure_is_posted_once_per_repeat_interval() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(5 * MINUTE, 10, MINUTE), t0);
        assert!(limiter.failure("boom", t0));
        for s in 1..300 {
            assert!(!limiter.failure("boom", t0 + Duration::from_secs(s)), "at {s}s");
        }
        assert!(limiter.failure("boom", t0 + 5 * MINUTE));
        assert_eq!(limiter.failures, 301);
    }

    #[test]
    fn a_different_failure_is_posted_at_once() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(EventLimits::default(), t0);
        assert!(limiter.failure("boom", t0));
        assert!(limiter.failure("bang", t0 + Duration::from_secs(1)));
        assert!(!limiter.failure("boom", t0 + Duration::from_secs(2)));
    }

    #[test]
    fn distinct_failures_are_capped_by_the_bucket_then_one_per_refill() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(5 * MINUTE, 10, MINUTE), t0);
        let posted = (0..100).filter(|i| limiter.failure(&format!("error {i}"), t0)).count();
        assert_eq!(posted, 10);
        // Over the next ten minutes, one a minute.
        let mut posted = 0;
        for s in 1..=600 {
            if limiter.failure(&format!("late {s}"), t0 + Duration::from_secs(s)) {
                posted += 1;
            }
        }
        assert_eq!(posted, 10);
    }

    #[test]
    fn an_idle_bucket_refills_to_burst_and_no_more() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(MINUTE, 3, MINUTE), t0);
        assert_eq!((0..5).filter(|i| limiter.failure(&i.to_string(), t0)).count(), 3);
        let later = t0 + 1000 * MINUTE;
        assert_eq!((0..5).filter(|i| limiter.failure(&format!("x{i}"), later)).count(), 3);
    }

    #[test]
    fn recovery_is_posted_once_and_only_after_a_posted_warning() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(MINUTE, 1, 10 * MINUTE), t0);
        assert_eq!(limiter.success(), None, "no failure yet");
        assert!(limiter.failure("boom", t0));
        assert!(!limiter.failure("boom", t0));
        assert_eq!(limiter.success(), Some(2));
        assert_eq!(limiter.success(), None);
        // No token left: the failure is held back, and so is its recovery.
        assert!(!limiter.failure("boom", t0));
        assert_eq!(limiter.success(), None);
    }

    #[test]
    fn a_recovery_forgets_the_notes_so_a_relapse_is_posted() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(EventLimits::default(), t0);
        assert!(limiter.failure("boom", t0));
        assert_eq!(limiter.success(), Some(1));
        assert!(limiter.failure("boom", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_zero_burst_posts_no_warnings() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(MINUTE, 0, MINUTE), t0);
        assert!(!limiter.failure("boom", t0 + 10 * MINUTE));
        assert_eq!(limiter.success(), None);
    }

    #[test]
    fn notes_differing_only_in_the_staged_file_name_repeat() {
        let note =
            |name| format!("template `a`: check [\"false\"] rejected /etc/out/.kube-template-{name} (exit status: 1)");
        assert_eq!(repeat_key(&note("Ab12Cd")), repeat_key(&note("xY98zW")));
        assert_ne!(repeat_key(&note("Ab12Cd")), repeat_key("template `b`: boom"));
        let t0 = Instant::now();
        let mut limiter = Limiter::new(EventLimits::default(), t0);
        assert!(limiter.failure(&repeat_key(&note("Ab12Cd")), t0));
        assert!(!limiter.failure(&repeat_key(&note("xY98zW")), t0 + MINUTE));
    }
}
