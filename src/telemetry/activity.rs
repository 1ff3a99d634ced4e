//! Signs of life: when a watch or the pipeline loop last showed any, so
//! that a hung one can be told from a quiet one (`/healthz`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When something last showed life, as milliseconds since the status was
/// created: a watch (any bytes of a successful response, bookmarks
/// included, or the first response after a failed request), or the
/// pipeline loop (a turn).
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    millis: AtomicU64,
    /// Successful responses whose body is still open.
    open: AtomicUsize,
    /// When the current streak of failed requests (no connection, error
    /// answers) began, as milliseconds since `base` plus one; 0: none.
    failing_since: AtomicU64,
}

impl Activity {
    pub fn new(base: Instant) -> Activity {
        Activity {
            millis: AtomicU64::new(base.elapsed().as_millis() as u64),
            base,
            open: AtomicUsize::new(0),
            failing_since: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        self.millis
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.millis.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// A response opened; it is open until [`Self::closed`]. It ends a
    /// streak of failures, and the first one after them starts the silence
    /// afresh: what came before was an outage, not a silent connection. One
    /// opened again after a clean end (kube-rs drops a connection idle too
    /// long) does not.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        if self.failing_since.swap(0, Ordering::Relaxed) != 0 {
            self.touch();
        }
    }

    /// A request failed: no connection, or an error answer.
    pub fn failed(&self) {
        let now = self.base.elapsed().as_millis() as u64 + 1;
        let _ = self
            .failing_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How long requests have been failing, if the last one failed.
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.base.elapsed().saturating_sub(Duration::from_millis(since - 1))),
        }
    }

    /// A response opened with [`Self::opened`] ended or was dropped.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a response is open now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }
}
