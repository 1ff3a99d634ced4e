//! Groups of templates (DESIGN 2.1): each one rendered, checked and written
//! all or nothing, reloaded by its own actions, waiting and retrying on its
//! own, and rendered again only when a store it reads changed.

use std::collections::BTreeSet;

use tokio::time::Instant;

use crate::action::Action;
use crate::config::{self, ActionsOnStart, Config};
use crate::render::{Reads, Renderer};

/// What a group is, from the config and its compiled templates.
#[derive(Debug, Clone)]
pub struct Group {
    /// `default` for the templates without `group:`.
    pub name: String,
    /// Whether errors and problems name it: false for the one group of a
    /// config without named groups, so that its messages read as before.
    pub named: bool,
    pub templates: BTreeSet<String>,
    pub actions: Vec<Action>,
    pub wait: config::Wait,
    /// Whether the first render after the start runs the actions.
    pub actions_on_start: bool,
    /// The stores its templates read.
    pub reads: Reads,
}

impl Group {
    /// `message` naming the group, where errors name it.
    pub fn label(&self, message: &str) -> String {
        if self.named {
            format!("group {}: {message}", self.name)
        } else {
            message.to_string()
        }
    }

    /// The stores it reads, for `check` and the status page.
    pub fn describe_reads(&self) -> String {
        match &self.reads {
            Reads::All { why } => format!("all stores ({why})"),
            Reads::Stores(stores) if stores.is_empty() => "no store".into(),
            Reads::Stores(stores) => stores.iter().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}

/// Every group of a config with at least one template, the default group
/// first, then the named ones in name order.
pub fn plan(config: &Config, renderer: &Renderer) -> Vec<Group> {
    let named = !config.groups.is_empty();
    let members = |group: Option<&str>| -> BTreeSet<String> {
        config
            .templates
            .values()
            .filter(|t| t.group.as_deref() == group)
            .map(|t| t.name.clone())
            .collect()
    };
    let reads = |templates: &BTreeSet<String>| {
        templates
            .iter()
            .fold(Reads::Stores(BTreeSet::new()), |all, t| all.union(renderer.reads(t)))
    };
    let mut groups = Vec::new();
    let default = members(None);
    if !default.is_empty() {
        groups.push(Group {
            name: config::DEFAULT_GROUP.into(),
            named,
            reads: reads(&default),
            templates: default,
            actions: config.actions.clone(),
            wait: config.render.wait,
            actions_on_start: config.actions_on_start == ActionsOnStart::Run,
        });
    }
    for (name, group) in &config.groups {
        let templates = members(Some(name));
        groups.push(Group {
            name: name.clone(),
            named,
            reads: reads(&templates),
            templates,
            actions: group.actions.clone(),
            wait: group.wait.unwrap_or(config.render.wait),
            actions_on_start: group.actions_on_start == ActionsOnStart::Run,
        });
    }
    groups
}

/// A group in a live run: when it is due, and how its last render went.
#[derive(Debug)]
pub(super) struct Run {
    pub group: Group,
    /// Events on its stores since its last render. The first render is due
    /// once every watch listed, events or not.
    burst: Option<Burst>,
    /// After a failed render (or one that read stale copies): when to try
    /// again, and how many times in a row it failed.
    retry: Option<(Instant, u32)>,
    /// Whether it rendered at all in this run.
    pub rendered: bool,
    /// The error of its last render, if that failed.
    pub error: Option<String>,
    /// Whether its last render read cached copies it could not refresh.
    pub stale: bool,
    /// The shrinks the loss guard refused of its templates.
    pub guards: super::guard::Guards,
}

impl Run {
    pub fn new(group: Group, now: Instant) -> Run {
        Run {
            group,
            burst: Some(Burst { first: now, last: now }),
            retry: None,
            rendered: false,
            error: None,
            stale: false,
            guards: Default::default(),
        }
    }

    /// When it should render next, if at all: `wait` after its last event
    /// (bounded by `wait.max` after the first), at once for the first render,
    /// or when its retry is due.
    pub fn due(&self) -> Option<Instant> {
        match &self.burst {
            Some(burst) if !self.rendered => Some(burst.first),
            Some(burst) => Some(burst.due(self.group.wait)),
            None => self.retry.map(|(at, _)| at),
        }
    }

    /// Whether events on its stores came for `wait.max` since its last
    /// render: its render then goes before more events. Until then, events
    /// already queued join the burst (with `wait.min: 0` too), so a backlog
    /// read at once gives one render, not one each.
    pub fn overdue(&self, now: Instant) -> bool {
        self.rendered && self.burst.is_some_and(|b| b.first + self.group.wait.max <= now)
    }

    /// A store changed: renders again if it reads it.
    pub fn store_changed(&mut self, store: &str, now: Instant) {
        if self.group.reads.includes(store) {
            self.burst.get_or_insert(Burst { first: now, last: now }).last = now;
        }
    }

    /// Renders it at `at` at the latest, events or not (an operator
    /// accepted a shrink; a guard's hold ends).
    pub fn due_by(&mut self, at: Instant) {
        match &mut self.retry {
            Some((retry, _)) => *retry = (*retry).min(at),
            None => self.retry = Some((at, 0)),
        }
    }

    /// Its render began: the events so far are in it.
    pub fn render_started(&mut self) {
        self.burst = None;
    }

    /// Its render ended: `error` if it failed, `stale` if it read copies it
    /// could not refresh; either way it is tried again after a backoff.
    /// Returns the backoff, if any.
    pub fn render_ended(&mut self, error: Option<String>, stale: bool) -> Option<std::time::Duration> {
        self.rendered = true;
        self.stale = stale;
        let again = error.is_some() || stale;
        self.error = error;
        if !again {
            self.retry = None;
            return None;
        }
        let failures = self.retry.map_or(1, |(_, n)| n + 1);
        let delay = retry_delay(failures);
        self.retry = Some((Instant::now() + delay, failures));
        Some(delay)
    }
}

/// The events since the last render: when the first and the last came.
#[derive(Debug, Clone, Copy)]
struct Burst {
    first: Instant,
    last: Instant,
}

impl Burst {
    /// `min` after the last event, but never later than `max` after the first.
    fn due(&self, wait: config::Wait) -> Instant {
        (self.last + wait.min).min(self.first + wait.max)
    }
}

/// Backoff before re-rendering after failures: 1s, 2s, 4s … up to a minute.
fn retry_delay(failures: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(std::time::Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn group(name: &str, reads: &[&str], wait_ms: (u64, u64)) -> Group {
        Group {
            name: name.into(),
            named: true,
            templates: [name.to_string()].into(),
            actions: Vec::new(),
            wait: config::Wait {
                min: Duration::from_millis(wait_ms.0),
                max: Duration::from_millis(wait_ms.1),
            },
            actions_on_start: true,
            reads: Reads::Stores(reads.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_group_waits_for_its_own_stores_with_its_own_wait() {
        let start = Instant::now();
        let mut fast = Run::new(group("fast", &["cms"], (10, 100)), start);
        let mut slow = Run::new(group("slow", &["cms", "secrets"], (1000, 5000)), start);
        assert_eq!(fast.due(), Some(start), "the first render is due at once");
        for run in [&mut fast, &mut slow] {
            run.render_started();
            assert_eq!(run.render_ended(None, false), None);
            assert_eq!(run.due(), None);
        }
        tokio::time::advance(Duration::from_millis(50)).await;
        let now = Instant::now();
        fast.store_changed("secrets", now);
        assert_eq!(fast.due(), None, "fast does not read secrets");
        slow.store_changed("secrets", now);
        fast.store_changed("cms", now);
        slow.store_changed("cms", now);
        assert_eq!(fast.due(), Some(now + Duration::from_millis(10)));
        assert_eq!(slow.due(), Some(now + Duration::from_millis(1000)));
        assert!(!fast.overdue(now));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            fast.overdue(Instant::now()),
            "a burst past wait.max goes before more events"
        );
        assert!(!slow.overdue(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn each_group_backs_off_on_its_own_and_a_success_ends_it() {
        let start = Instant::now();
        let mut failing = Run::new(group("a", &["cms"], (10, 100)), start);
        let mut fine = Run::new(group("b", &["cms"], (10, 100)), start);
        let delays: Vec<_> = (0..3)
            .map(|_| {
                failing.render_started();
                failing.render_ended(Some("boom".into()), false)
            })
            .collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(delays, [secs(1), secs(2), secs(4)]);
        assert_eq!(failing.due(), Some(Instant::now() + Duration::from_secs(4)));
        fine.render_started();
        assert_eq!(fine.render_ended(None, false), None);
        assert_eq!((fine.due(), fine.error.as_deref()), (None, None));
        failing.render_started();
        assert_eq!(
            failing.render_ended(None, true),
            secs(8),
            "stale copies: again, on the streak"
        );
        failing.render_started();
        assert_eq!(failing.render_ended(None, false), None);
        assert_eq!(failing.due(), None);
    }
}
