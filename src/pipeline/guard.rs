//! The loss guard in a live run (DESIGN 5.10): per guarded template of a
//! group, since when its shrink has been refused and whether an operator
//! accepted it. A shrink is written once accepted, or once it has been
//! refused for the template's `hold`; a render that no longer shrinks
//! starts the hold afresh.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use crate::config::Config;
use crate::output::guard::Shrink;
use crate::telemetry::accept::Reply;

use super::group;

/// Why a shrink may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Allowed {
    /// An operator accepted it (`kube-template accept`).
    Accepted,
    /// It has been refused for the template's `hold`.
    Held,
}

/// The refused shrinks of one group's templates.
#[derive(Debug, Default)]
pub(super) struct Guards {
    pending: BTreeMap<String, Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The first refusal of this shrink.
    since: Instant,
    accepted: bool,
}

impl Guards {
    /// The guarded templates among `templates` whose shrink may be written
    /// at `now`, and why. A shrink not refused yet starts its hold at `now`.
    pub fn allowed(&self, config: &Config, templates: &BTreeSet<String>, now: Instant) -> BTreeMap<String, Allowed> {
        templates
            .iter()
            .filter_map(|name| {
                let hold = config.templates[name].guard?.hold;
                let pending = self.pending.get(name);
                let allowed = match pending {
                    Some(p) if p.accepted => Allowed::Accepted,
                    Some(p) if now >= p.since + hold => Allowed::Held,
                    None if hold.is_zero() => Allowed::Held,
                    _ => return None,
                };
                Some((name.clone(), allowed))
            })
            .collect()
    }

    /// A render of the group measured `shrinks` (of its guarded templates
    /// among `templates`) and did not write them: each is pending from its
    /// first refusal on; a template that no longer shrinks is not.
    pub fn measured(&mut self, templates: &BTreeSet<String>, shrinks: &[Shrink], now: Instant) {
        for name in templates {
            if shrinks.iter().any(|s| &s.template == name) {
                self.pending.entry(name.clone()).or_insert(Pending {
                    since: now,
                    accepted: false,
                });
            } else {
                self.pending.remove(name);
            }
        }
    }

    /// The group's outputs were written: what is on disk is the new state,
    /// and a later shrink is guarded again.
    pub fn written(&mut self) {
        self.pending.clear();
    }

    /// When the first hold of a refused shrink ends, if any is pending.
    pub fn hold_ends(&self, config: &Config) -> Option<Instant> {
        self.pending
            .iter()
            .filter(|(_, p)| !p.accepted)
            .filter_map(|(name, p)| Some(p.since + config.templates.get(name)?.guard?.hold))
            .min()
    }

    /// Accepts the pending shrink of `template`, or of every template
    /// (`None`); returns the templates accepted.
    fn accept(&mut self, template: Option<&str>) -> Vec<String> {
        self.pending
            .iter_mut()
            .filter(|(name, _)| template.is_none_or(|t| t == name.as_str()))
            .map(|(name, pending)| {
                pending.accepted = true;
                name.clone()
            })
            .collect()
    }
}

/// An operator's acceptance (`kube-template accept`): marks the pending
/// shrinks of `template` (or of every guarded template) accepted once and
/// makes their groups due at `now`.
pub(super) fn accept(config: &Config, groups: &mut [group::Run], template: Option<&str>, now: Instant) -> Reply {
    if let Some(name) = template {
        match config.templates.get(name) {
            None => return Reply::Unknown(format!("no template `{name}` in {}", config.file.display())),
            Some(t) if t.guard.is_none() => {
                return Reply::Unknown(format!("template `{name}` has no `guard:`; nothing is ever refused"));
            }
            Some(_) => {}
        }
    }
    let mut accepted = Vec::new();
    for run in groups {
        let names = run.guards.accept(template);
        if !names.is_empty() {
            run.due_by(now);
            accepted.extend(names);
        }
    }
    if accepted.is_empty() {
        Reply::NothingPending
    } else {
        tracing::warn!(templates = %accepted.join(","), "shrink accepted by an operator; rendering now");
        Reply::Accepted(accepted)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::output::guard::Unit;

    fn config() -> Config {
        let yaml = r#"
watched_resources:
  cms: { api_version: v1, kind: ConfigMap }
templates:
  a: { inline: "x", path: out/a, guard: { max_shrink: 50%, hold: 10s } }
  b: { inline: "x", path: out/b, guard: { max_shrink: 50% } }
  plain: { inline: "x", path: out/plain }
"#;
        Config::parse(yaml, std::path::Path::new("config.yaml"), std::path::Path::new(".")).unwrap()
    }

    fn shrink(template: &str) -> Shrink {
        Shrink {
            template: template.into(),
            path: template.into(),
            unit: Unit::Bytes,
            old: 10,
            new: 0,
            max_shrink: 50,
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrink_is_written_once_it_lasted_its_hold_and_a_pause_starts_the_hold_again() {
        let config = config();
        let all = names(&["a", "b", "plain"]);
        let mut guards = Guards::default();
        let start = Instant::now();
        assert!(
            guards.allowed(&config, &all, start).is_empty(),
            "a first shrink is refused"
        );
        guards.measured(&all, &[shrink("a"), shrink("b")], start);
        assert_eq!(guards.hold_ends(&config), Some(start + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(9)).await;
        guards.measured(&all, &[shrink("a"), shrink("b")], Instant::now());
        assert!(guards.allowed(&config, &all, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let allowed = guards.allowed(&config, &all, Instant::now());
        assert_eq!(allowed, [("a".to_string(), Allowed::Held)].into(), "b holds 10m");
        guards.measured(&all, &[shrink("b")], Instant::now());
        guards.measured(&all, &[shrink("a"), shrink("b")], Instant::now());
        assert!(
            guards.allowed(&config, &all, Instant::now()).is_empty(),
            "a render that did not shrink a started its hold again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_acceptance_is_for_the_pending_shrink_only() {
        let config = config();
        let all = names(&["a", "b", "plain"]);
        let mut guards = Guards::default();
        assert!(guards.accept(None).is_empty(), "nothing pending");
        guards.measured(&all, &[shrink("a"), shrink("b")], Instant::now());
        assert_eq!(guards.accept(Some("b")), ["b"]);
        assert_eq!(
            guards.allowed(&config, &all, Instant::now()),
            [("b".to_string(), Allowed::Accepted)].into()
        );
        assert_eq!(
            guards.hold_ends(&config),
            Some(Instant::now() + Duration::from_secs(10))
        );
        guards.written();
        guards.measured(&all, &[shrink("b")], Instant::now());
        assert!(
            guards.allowed(&config, &all, Instant::now()).is_empty(),
            "a new shrink is guarded again"
        );
    }
}
