//! The YAML config: what to watch, how to index it, what to render, what to run.
//!
//! Loading validates everything it can without a cluster and reports every problem
//! at once, each with its YAML path and position (DESIGN section 2).

mod actions;
mod groups;
mod humane;
mod resources;
pub mod schema;
mod settings;
mod templates;
mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use validate::{Validator, display_path};
use yaml::{Node, NodeValue, Position};

use crate::action::Action;
pub use crate::index::OnMissingKey;
use crate::output::Template;
pub use crate::report::StatusSettings;
pub use actions::{ActionEntry, ExecEntry, ExecSettings, HttpEntry, parse_signal};
pub use groups::{ActionsOnStart, DEFAULT_GROUP, Group, GroupEntry};
pub use humane::ByteSize;
pub use resources::{CacheEntry, Resource, StoreKind, WatchedResource};
pub use settings::{AdminSettings, FetchSettings, Readiness, RenderSettings, Wait};
pub use templates::{GuardEntry, SyntaxEntry, TemplateEntry};
pub use validate::sort_issues;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted YAML path, e.g. `watched_resources.ingresses.index_by[0]`.
    pub path: String,
    /// Where the offending node is, when known.
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) if p.line > 0 => write!(f, "{}:{}: {}: {}", p.line, p.column, self.path, self.message),
            _ => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read and has one or more problems, all listed.
    #[error("{} has {} problem(s):\n{}", path.display(), issues.len(), list(path, issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

fn list(path: &Path, issues: &[Issue]) -> String {
    let file = path.display();
    issues
        .iter()
        .map(|i| format!("  {file}:{i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A loaded and validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself.
    pub file: PathBuf,
    /// The directory relative paths in the config are resolved against.
    pub base_dir: PathBuf,
    pub watched_resources: BTreeMap<String, Resource>,
    pub templates: BTreeMap<String, Template>,
    /// The default group's actions.
    pub actions: Vec<Action>,
    /// Whether the default group's first render after the start runs its actions.
    pub actions_on_start: ActionsOnStart,
    /// The named groups, by name.
    pub groups: BTreeMap<String, Group>,
    /// How exec mode (`run -- CMD`) reloads and stops its command.
    pub exec: ExecSettings,
    pub render: RenderSettings,
    pub admin: AdminSettings,
    /// Where to report each render's result, if anywhere.
    pub status: Option<StatusSettings>,
    /// The YAML tree, kept so that later checks (template compilation) can point
    /// at the line they are about.
    pub(crate) tree: Node,
}

/// The sections a config may have.
const TOP_LEVEL_KEYS: &[&str] = &[
    "watched_resources",
    "templates",
    "actions",
    "actions_on_start",
    "groups",
    "exec",
    "render",
    "admin",
    "status",
];

impl Config {
    /// Reads and validates a config file. Templates are not compiled here; the
    /// renderer does that and reports through [`Config::issue_at`].
    pub fn load(path: &Path) -> Result<Config> {
        let (text, base_dir) = Config::read(path)?;
        Config::parse(&text, path, &base_dir).map_err(|issues| Error::Invalid {
            path: path.to_owned(),
            issues,
        })
    }

    /// Validates config text; `file` names it, `base_dir` anchors relative paths.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> std::result::Result<Config, Vec<Issue>> {
        match Config::parse_lenient(text, file, base_dir)? {
            (config, issues) if issues.is_empty() => Ok(config),
            (_, issues) => Err(issues),
        }
    }

    /// Like [`Config::parse`], but also returns the config made of the entries
    /// that are valid, so that later checks (template compilation) can add
    /// their problems to the same list. Fails outright only on invalid YAML.
    pub fn parse_lenient(
        text: &str,
        file: &Path,
        base_dir: &Path,
    ) -> std::result::Result<(Config, Vec<Issue>), Vec<Issue>> {
        let tree = Node::parse(text).map_err(|e| {
            vec![Issue {
                path: "(document)".into(),
                position: e.location().map(|l| Position {
                    line: l.line() as u32,
                    column: l.column() as u32,
                }),
                message: format!("not valid YAML: {}", e.without_snippet()),
            }]
        })?;
        let mut v = Validator {
            tree: &tree,
            issues: Vec::new(),
        };
        let mut config = v.config(file, base_dir);
        let mut issues = v.issues;
        sort_issues(&mut issues);
        config.tree = tree;
        Ok((config, issues))
    }

    /// Reads a config file for [`Config::parse_lenient`].
    pub fn read(path: &Path) -> Result<(String, PathBuf)> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        // A config in the working directory has an empty parent: paths then
        // stay relative (`out/x`, not `./out/x`).
        let base_dir = path.parent().unwrap_or(Path::new("")).to_owned();
        Ok((text, base_dir))
    }

    /// An issue about the node at `path` (dotted segments), with its position.
    pub fn issue_at(&self, path: &[&str], message: String) -> Issue {
        let segments: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        Issue {
            path: path.join("."),
            position: Some(self.tree.deepest(&segments).position),
            message,
        }
    }
}

impl Validator<'_> {
    /// The whole config: each section validated on its own, every problem kept.
    fn config(&mut self, file: &Path, base_dir: &Path) -> Config {
        let mut config = Config {
            file: file.to_owned(),
            base_dir: base_dir.to_owned(),
            watched_resources: BTreeMap::new(),
            templates: BTreeMap::new(),
            actions: Vec::new(),
            actions_on_start: ActionsOnStart::default(),
            groups: BTreeMap::new(),
            exec: ExecSettings::default(),
            render: RenderSettings::default(),
            admin: AdminSettings::default(),
            status: None,
            tree: Node {
                position: Position::default(),
                value: NodeValue::Null,
            },
        };
        let Some(entries) = self.tree.entries() else {
            if !matches!(self.tree.value, NodeValue::Null) {
                self.issue(&[], format!("expected a mapping, found {}", self.tree.type_name()));
            } else {
                self.issue(&[], "the config is empty: `templates` is required");
            }
            return config;
        };
        for (key, _) in entries {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                self.issue(
                    std::slice::from_ref(key),
                    format!("unknown key `{key}`, expected one of {}", TOP_LEVEL_KEYS.join(", ")),
                );
            }
        }
        config.watched_resources = self.watched_resources();
        for (path, again, first) in self.tree.duplicate_keys() {
            let key = path.last().cloned().unwrap_or_default();
            self.issues.push(Issue {
                path: display_path(&path),
                position: Some(again.position),
                message: format!(
                    "`{key}` is given twice (first at line {}); names and keys must be unique",
                    first.position.line
                ),
            });
        }
        config.templates = self.templates(file, base_dir);
        config.actions = self.action_list(&["actions".into()], base_dir);
        config.actions_on_start = self.actions_on_start();
        config.groups = self.groups(&config.templates, base_dir);
        if let Some(exec) = self.exec_settings() {
            config.exec = exec;
        }
        if let Some(render) = self.render_settings() {
            config.render = render;
        }
        if let Some(admin) = self.admin_settings(&config) {
            config.admin = admin;
        }
        config.status = self.status_settings();
        config
    }
}

#[cfg(test)]
mod tests;
