//! `groups`: independent sets of templates (DESIGN 2.1), each rendered,
//! checked and written all or nothing and reloaded by its own actions, and
//! the `actions_on_start` of the default group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::validate::Validator;
use super::yaml::NodeValue;
use super::{ActionEntry, Wait};
use crate::action::Action;
use crate::output::Template;

/// The name of the group of the templates without `group:`, whose actions
/// are the top-level `actions`.
pub const DEFAULT_GROUP: &str = "default";

/// A `groups` entry as the user writes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// Run in order after a render of the group that changed one of its
    /// files; validated as the top-level `actions` are.
    #[serde(default)]
    #[schemars(with = "Option<Vec<ActionEntry>>")]
    pub actions: IgnoredAny,
    /// Quiescence before a render of the group; default: `render.wait`.
    #[serde(default)]
    pub wait: Option<Wait>,
    /// Whether the first render after the start runs the actions.
    #[serde(default)]
    pub actions_on_start: ActionsOnStart,
}

/// `actions_on_start`: whether the first render after the start runs the
/// actions when it changed a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionsOnStart {
    /// It does, as every later render does.
    #[default]
    Run,
    /// It does not: the daemon started after the files were written (by an
    /// init container) and read them already (k8s-sidecar's `REQ_SKIP_INIT`).
    Skip,
}

/// A validated named group.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub actions: Vec<Action>,
    /// `None`: `render.wait`.
    pub wait: Option<Wait>,
    pub actions_on_start: ActionsOnStart,
}

impl Validator<'_> {
    /// The `groups` section, checked against the templates' `group:`: every
    /// group a template names exists, and every group has a template.
    pub(super) fn groups(
        &mut self,
        templates: &BTreeMap<String, Template>,
        base_dir: &Path,
    ) -> BTreeMap<String, Group> {
        let mut groups = BTreeMap::new();
        let mut named = BTreeSet::new();
        for (name, entry) in self.named_entries("groups") {
            named.insert(name.clone());
            let path = vec!["groups".to_string(), name.clone()];
            if name == DEFAULT_GROUP {
                self.issue(
                    &path,
                    "`default` is the group of the templates without `group:`: its actions are the top-level `actions`, its `actions_on_start` the top-level one",
                );
                continue;
            }
            let before = self.issues.len();
            let entry = self.typed::<GroupEntry>(&path, &entry, &["wait"]);
            let actions = self.action_list(&[path.clone(), vec!["actions".into()]].concat(), base_dir);
            if let Some(wait) = entry.as_ref().and_then(|e| e.wait) {
                self.check_wait(&[path.clone(), vec!["wait".into()]].concat(), wait);
            }
            if let Some(entry) = entry
                && self.issues.len() == before
            {
                groups.insert(
                    name.clone(),
                    Group {
                        name,
                        actions,
                        wait: entry.wait,
                        actions_on_start: entry.actions_on_start,
                    },
                );
            }
        }
        let mut used = BTreeSet::new();
        for template in templates.values() {
            let Some(group) = &template.group else { continue };
            used.insert(group.clone());
            if !named.contains(group) {
                let known = match named
                    .iter()
                    .filter(|n| *n != DEFAULT_GROUP)
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    known if known.is_empty() => "there is no `groups` section".to_string(),
                    known => format!("known: {}", known.join(", ")),
                };
                self.issue(
                    &["templates".into(), template.name.clone(), "group".into()],
                    format!("unknown group `{group}` ({known}); leave `group` out for the default group"),
                );
            }
        }
        for name in named.iter().filter(|n| *n != DEFAULT_GROUP && !used.contains(*n)) {
            self.issue(
                &["groups".into(), name.clone()],
                format!("no template has `group: {name}`: a group needs at least one"),
            );
        }
        groups
    }

    /// The top-level `actions_on_start`: the default group's.
    pub(super) fn actions_on_start(&mut self) -> ActionsOnStart {
        let Some(node) = self.section("actions_on_start") else {
            return ActionsOnStart::default();
        };
        let value = match &node.value {
            NodeValue::String(text) => Some(text.as_str()),
            _ => None,
        };
        match value {
            Some("run") => ActionsOnStart::Run,
            Some("skip") => ActionsOnStart::Skip,
            _ => {
                let message = match value {
                    Some(text) => format!("unknown value `{text}`, expected `run` or `skip`"),
                    None => format!("expected `run` or `skip`, found {}", node.type_name()),
                };
                self.issue(&["actions_on_start".into()], message);
                ActionsOnStart::default()
            }
        }
    }
}
