//! The YAML config: what to watch, how to index it, what to render, what to run.
//!
//! Loading validates everything it can without a cluster and reports every problem
//! at once, each with its YAML path and position (DESIGN section 2).

mod humane;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::index::{FieldPath, Indexer};
use crate::source::selector::{FieldSelector, LabelSelector};
use yaml::{Node, NodeValue, Position};

pub use humane::ByteSize;

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
    pub actions: Vec<Action>,
    pub render: RenderSettings,
    pub admin: AdminSettings,
    /// Where to report each render's result, if anywhere.
    pub status: Option<StatusSettings>,
    /// The YAML tree, kept so that later checks (template compilation) can point
    /// at the line they are about.
    pub(crate) tree: Node,
}

/// A `watched_resources` entry as the user writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchedResource {
    /// `apiVersion` of the kind, e.g. `v1` or `networking.k8s.io/v1`.
    pub api_version: String,
    /// The kind, e.g. `Ingress` or a CRD's kind.
    pub kind: String,
    /// Namespaces to watch; empty means all. Ignored for cluster-scoped kinds.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Kubernetes label selector, applied server-side.
    #[serde(default)]
    pub label_selector: String,
    /// Kubernetes field selector, applied server-side.
    #[serde(default)]
    pub field_selector: String,
    /// Expressions whose values form each object's key.
    #[serde(default = "default_index_by")]
    pub index_by: Vec<String>,
    /// `full` keeps whole objects, `on-demand` only references.
    #[serde(default)]
    pub store: StoreKind,
    /// Fields pruned from every object before it is stored.
    #[serde(default = "default_ignore_fields")]
    pub ignore_fields: Vec<String>,
    /// What a missing `index_by` value does to an object.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// Cache bounds of an on-demand store.
    #[serde(default)]
    pub cache: Option<CacheSettings>,
}

fn default_index_by() -> Vec<String> {
    vec!["metadata.namespace".into(), "metadata.name".into()]
}

fn default_ignore_fields() -> Vec<String> {
    vec!["metadata.managedFields".into()]
}

/// Which store holds a resource's objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Full,
    OnDemand,
}

/// What happens to an object whose `index_by` value is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMissingKey {
    /// The missing part of the key is `""`.
    #[default]
    Empty,
    /// The object is not stored (and counted).
    Skip,
}

/// Bounds of an on-demand store's cache.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// How long a fetched body may be used before it is fetched again.
    #[serde(default = "default_cache_ttl", with = "humane::duration")]
    pub ttl: Duration,
    /// How many bodies the cache holds at most (least recently used go first).
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: default_cache_ttl(),
            max_entries: default_cache_entries(),
        }
    }
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(120)
}

fn default_cache_entries() -> usize {
    512
}

/// A validated `watched_resources` entry.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The entry's name: `resources.<name>` in templates.
    pub name: String,
    pub spec: WatchedResource,
    pub indexer: Indexer,
    pub ignore_fields: Vec<FieldPath>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub cache: CacheSettings,
}

/// A `templates` entry as the user writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateEntry {
    /// Template file, relative to the config file.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Template text given in the config itself.
    #[serde(default)]
    pub inline: Option<String>,
    /// Single-file output.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Directory output: the files the template emits with `file(name, content)`.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// File mode of written files, octal (`"0644"`).
    #[serde(default, deserialize_with = "mode_text")]
    pub mode: Option<String>,
    /// fsync each staged file and the directory before renaming (durable writes).
    #[serde(default)]
    pub fsync: bool,
    /// Command that validates a staged file; `{file}` is replaced by its path.
    #[serde(default)]
    pub check: Vec<String>,
    /// How long `check` may run.
    #[serde(default = "default_check_timeout", with = "humane::duration")]
    pub check_timeout: Duration,
}

/// A file mode is written as a quoted string: unquoted, YAML reads `0644` as
/// the decimal number 644.
fn mode_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Ok(Some(text)),
        serde_json::Value::Null => Ok(None),
        // YAML may read `0644` as a float; show it as written.
        serde_json::Value::Number(n) => Err(D::Error::custom(format!(
            "bad file mode {}: quote it, e.g. \"0644\" (unquoted, YAML reads 0644 as the decimal number 644)",
            n.as_f64()
                .filter(|f| f.fract() == 0.0)
                .map_or(n.to_string(), |f| format!("{f:.0}"))
        ))),
        other => Err(D::Error::custom(format!(
            "bad file mode {other}: expected octal in quotes such as \"0644\""
        ))),
    }
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A validated template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub source: TemplateSource,
    pub output: OutputTarget,
    /// File mode, e.g. `0o644`.
    pub mode: u32,
    pub fsync: bool,
    pub check: Vec<String>,
    pub check_timeout: Duration,
}

/// Where a template's text comes from.
#[derive(Debug, Clone)]
pub enum TemplateSource {
    /// A file; the name is its path relative to the config directory.
    File { name: String, path: PathBuf },
    /// Text from the config.
    Inline { name: String, text: String },
}

impl TemplateSource {
    /// The name the template has in the environment and in error messages.
    pub fn name(&self) -> &str {
        match self {
            TemplateSource::File { name, .. } | TemplateSource::Inline { name, .. } => name,
        }
    }
}

/// Where a template's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// One file. `written` is the path as the config has it (for `--out`).
    File { path: PathBuf, written: PathBuf },
    /// A directory holding exactly the files the render emitted.
    Directory { path: PathBuf, written: PathBuf },
}

impl OutputTarget {
    pub fn path(&self) -> &Path {
        match self {
            OutputTarget::File { path, .. } | OutputTarget::Directory { path, .. } => path,
        }
    }

    /// The same target moved under `root`, as `render --out` does: an absolute
    /// `/etc/x` becomes `root/etc/x`, a relative `out/x` becomes `root/out/x`,
    /// and `../x` becomes `root/x`.
    pub fn rerooted(&self, root: &Path) -> OutputTarget {
        // `..` climbs no higher than `root`: every output stays below it.
        let move_under = |written: &Path| {
            let mut relative = PathBuf::new();
            for part in written.components() {
                match part {
                    std::path::Component::Normal(name) => relative.push(name),
                    std::path::Component::ParentDir => {
                        relative.pop();
                    }
                    _ => {}
                }
            }
            root.join(relative)
        };
        match self {
            OutputTarget::File { written, .. } => OutputTarget::File {
                path: move_under(written),
                written: written.clone(),
            },
            OutputTarget::Directory { written, .. } => OutputTarget::Directory {
                path: move_under(written),
                written: written.clone(),
            },
        }
    }
}

/// An `actions` entry as the user writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionEntry {
    /// Program and arguments; no shell unless you write one.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An HTTP request.
    #[serde(default)]
    pub http: Option<HttpAction>,
    /// How long the command may run.
    #[serde(default = "default_action_timeout", with = "humane::duration")]
    pub timeout: Duration,
}

fn default_action_timeout() -> Duration {
    Duration::from_secs(30)
}

/// An HTTP action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    /// `http://` URL to call (a local reload endpoint).
    pub url: String,
    /// HTTP method.
    #[serde(default = "default_http_method")]
    pub method: String,
    /// Timeout of one attempt.
    #[serde(default = "default_action_timeout", with = "humane::duration")]
    pub timeout: Duration,
    /// Further attempts after a failure, with backoff.
    #[serde(default)]
    pub retries: u32,
    /// Request headers, e.g. `Authorization` or `Content-Type`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body; none when absent.
    #[serde(default)]
    pub body: Option<String>,
    /// With an `https://` URL: accept any certificate (a daemon's self-signed one).
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

fn default_http_method() -> String {
    "POST".into()
}

/// A validated action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Command { argv: Vec<String>, timeout: Duration },
    Http(HttpAction),
}

/// `render:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSettings {
    /// Quiescence before a render.
    #[serde(default)]
    pub wait: Wait,
    /// Template instruction budget per render of one template.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Largest output one template may produce (all its files together).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: ByteSize,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            wait: Wait::default(),
            fuel: default_fuel(),
            max_output_bytes: default_max_output(),
        }
    }
}

fn default_fuel() -> u64 {
    100_000_000
}

fn default_max_output() -> ByteSize {
    ByteSize(64 << 20)
}

/// Render after `min` without events, but never later than `max` after the first.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    #[serde(default = "default_wait_min", with = "humane::duration")]
    pub min: Duration,
    #[serde(default = "default_wait_max", with = "humane::duration")]
    pub max: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            min: default_wait_min(),
            max: default_wait_max(),
        }
    }
}

/// The longest `render.wait`: longer ones are mistakes (and a deadline that
/// far ahead overflows the clock).
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

fn default_wait_min() -> Duration {
    Duration::from_millis(200)
}

fn default_wait_max() -> Duration {
    Duration::from_secs(2)
}

/// `admin:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin HTTP server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// What `/readyz` means: `serving` (ready once synced with a good render
    /// on disk, and from then on) or `strict` (also the last render succeeded
    /// and every watch is connected).
    #[serde(default)]
    pub readiness: Readiness,
    /// How long the pipeline loop may go without turning (one render with its
    /// checks and actions is one turn) before `/healthz` fails.
    #[serde(default = "default_stall_timeout", with = "humane::duration")]
    pub stall_timeout: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: default_listen(),
            readiness: Readiness::default(),
            stall_timeout: default_stall_timeout(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:9090".into()
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The longest a render may wait on one thing it runs, a `check` or an
/// action (all attempts of an HTTP one), and where it is set.
fn longest_wait(config: &Config) -> Option<(String, Duration)> {
    let checks = config
        .templates
        .values()
        .filter(|t| !t.check.is_empty())
        .map(|t| (format!("templates.{}.check_timeout", t.name), t.check_timeout));
    let actions = config.actions.iter().enumerate().map(|(i, action)| match action {
        Action::Command { timeout, .. } => (format!("actions.{i}.timeout"), *timeout),
        Action::Http(http) => (
            format!("actions.{i}.timeout × {} attempts", http.retries + 1),
            http.timeout * (http.retries + 1),
        ),
    });
    checks.chain(actions).max_by_key(|(_, wait)| *wait)
}

/// `admin.readiness`: what `/readyz` means (DESIGN section 7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Ready once synced with a good render on disk; render failures and API
    /// outages are reported, not taken out of the Service.
    #[default]
    Serving,
    /// Ready only while the last render succeeded and every watch is connected.
    Strict,
}

/// `status:` — a ConfigMap whose annotations carry the last render's result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    /// Name of the ConfigMap (it must exist; only its annotations are written).
    pub config_map: String,
    /// Its namespace; default: the pod's (`POD_NAMESPACE`).
    #[serde(default)]
    pub namespace: Option<String>,
}

const TOP_LEVEL_KEYS: &[&str] = &["watched_resources", "templates", "actions", "render", "admin", "status"];

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

struct Validator<'a> {
    tree: &'a Node,
    issues: Vec<Issue>,
}

impl Validator<'_> {
    fn issue(&mut self, path: &[String], message: impl Into<String>) {
        self.issues.push(Issue {
            path: display_path(path),
            position: Some(self.tree.deepest(path).position),
            message: message.into(),
        });
    }

    fn config(&mut self, file: &Path, base_dir: &Path) -> Config {
        let mut config = Config {
            file: file.to_owned(),
            base_dir: base_dir.to_owned(),
            watched_resources: BTreeMap::new(),
            templates: BTreeMap::new(),
            actions: Vec::new(),
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
        for (name, entry) in self.named_entries("watched_resources") {
            let path = vec!["watched_resources".to_string(), name.clone()];
            if let Some(spec) = self.typed::<WatchedResource>(&path, &entry, &["cache"])
                && let Some(resource) = self.resource(&path, name.clone(), spec)
            {
                config.watched_resources.insert(name, resource);
            }
        }
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
        let templates = self.named_entries("templates");
        if templates.is_empty() && !self.issues.iter().any(|i| i.path.starts_with("templates")) {
            self.issue(&["templates".into()], "at least one template is required");
        }
        for (name, entry) in templates {
            let path = vec!["templates".to_string(), name.clone()];
            if let Some(spec) = self.typed::<TemplateEntry>(&path, &entry, &[])
                && let Some(template) = self.template(&path, name.clone(), spec, base_dir)
            {
                config.templates.insert(name, template);
            }
        }
        self.outputs_do_not_overlap(&config.templates);
        self.outputs_spare_inputs(file, &config.templates);
        if let Some(node) = self.tree.get("actions").cloned() {
            match &node.value {
                NodeValue::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = vec!["actions".to_string(), i.to_string()];
                        if let Some(entry) = self.typed::<ActionEntry>(&path, item, &["http"])
                            && let Some(action) = self.action(&path, entry)
                        {
                            config.actions.push(action);
                        }
                    }
                }
                NodeValue::Null => {}
                _ => self.issue(
                    &["actions".into()],
                    format!("expected a list, found {}", node.type_name()),
                ),
            }
        }
        if let Some(node) = self.tree.get("render").cloned()
            && !matches!(node.value, NodeValue::Null)
            && let Some(render) = self.typed::<RenderSettings>(&["render".into()], &node, &["wait"])
        {
            for (key, length) in [("min", render.wait.min), ("max", render.wait.max)] {
                if length > MAX_WAIT {
                    let path = ["render".into(), "wait".into(), key.into()];
                    let written = match &self.tree.deepest(&path).value {
                        NodeValue::String(text) => text.clone(),
                        _ => humantime::format_duration(length).to_string(),
                    };
                    self.issue(
                        &path,
                        format!(
                            "`{written}` is too long: a render waits at most {}",
                            humantime::format_duration(MAX_WAIT)
                        ),
                    );
                }
            }
            if render.wait.min > render.wait.max {
                self.issue(
                    &["render".into(), "wait".into()],
                    format!(
                        "`min` ({}) is longer than `max` ({})",
                        humantime::format_duration(render.wait.min),
                        humantime::format_duration(render.wait.max)
                    ),
                );
            }
            if render.fuel == 0 {
                self.issue(
                    &["render".into(), "fuel".into()],
                    "must be at least 1: with no fuel every render fails",
                );
            }
            config.render = render;
        }
        if let Some(node) = self.tree.get("admin").cloned()
            && !matches!(node.value, NodeValue::Null)
            && let Some(admin) = self.typed::<AdminSettings>(&["admin".into()], &node, &[])
        {
            if admin.stall_timeout.is_zero() {
                self.issue(
                    &["admin".into(), "stall_timeout".into()],
                    "must be longer than 0s: the pipeline loop could never be healthy",
                );
            } else if let Some((what, longest)) = longest_wait(&config)
                && admin.stall_timeout <= longest
            {
                self.issue(
                    &["admin".into(), "stall_timeout".into()],
                    format!(
                        "{} is not longer than {what} ({}): a render waiting on it would count as a stopped pipeline loop",
                        humantime::format_duration(admin.stall_timeout),
                        humantime::format_duration(longest)
                    ),
                );
            }
            if !listen_shape(&admin.listen) {
                self.issue(
                    &["admin".into(), "listen".into()],
                    format!(
                        "`{}` is not an address to listen on: expected host:port, e.g. 0.0.0.0:9090",
                        admin.listen
                    ),
                );
            }
            config.admin = admin;
        }
        if let Some(node) = self.tree.get("status").cloned()
            && !matches!(node.value, NodeValue::Null)
        {
            config.status = self.typed::<StatusSettings>(&["status".into()], &node, &[]);
            if let Some(status) = &config.status {
                if status.config_map.trim().is_empty() {
                    self.issue(&["status".into(), "config_map".into()], "must not be empty");
                } else if !dns_subdomain(&status.config_map) {
                    self.issue(
                        &["status".into(), "config_map".into()],
                        format!(
                            "`{}` is not a ConfigMap name (lowercase letters, digits, `-` and `.`)",
                            status.config_map
                        ),
                    );
                }
                if let Some(namespace) = status.namespace.as_deref().filter(|n| !dns_label(n)) {
                    self.issue(
                        &["status".into(), "namespace".into()],
                        format!("`{namespace}` is not a namespace name (lowercase letters, digits and `-`)"),
                    );
                }
            }
        }
        config
    }

    /// The entries of a top-level mapping section, or none (with an issue) when it
    /// is not a mapping.
    fn named_entries(&mut self, section: &str) -> Vec<(String, Node)> {
        let Some(node) = self.tree.get(section) else {
            return Vec::new();
        };
        match &node.value {
            NodeValue::Mapping(entries) => entries.clone(),
            NodeValue::Null => Vec::new(),
            _ => {
                let found = node.type_name();
                self.issue(
                    &[section.into()],
                    format!("expected a mapping of names to entries, found {found}"),
                );
                Vec::new()
            }
        }
    }

    /// Deserializes one mapping into a typed entry. Each problem is recorded at
    /// its exact path inside the entry; the offending key is then set aside and
    /// the rest read again, so that an entry with several problems reports them
    /// all. `nested` names the fields that are mappings themselves (serde would
    /// also take a list for a struct).
    fn typed<T: DeserializeOwned>(&mut self, path: &[String], node: &Node, nested: &[&str]) -> Option<T> {
        if !self.expect_mapping(path, node) {
            return None;
        }
        let mut json = node.to_json();
        let mut failed = false;
        for field in nested {
            if let Some(child) = node.get(field)
                && !matches!(child.value, NodeValue::Null)
                && !self.expect_mapping(&[path, &[field.to_string()]].concat(), child)
            {
                failed = true;
                set_aside(&mut json, &[field.to_string()]);
            }
        }
        let mut set_aside_paths: Vec<Vec<String>> = Vec::new();
        // Bounded: each round sets one key aside.
        for _ in 0..64 {
            let err = match serde_path_to_error::deserialize::<_, T>(json.clone()) {
                Ok(value) => return (!failed).then_some(value),
                Err(err) => err,
            };
            let mut inner = Vec::new();
            for segment in err.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => inner.push(index.to_string()),
                    serde_path_to_error::Segment::Map { key } => inner.push(key.clone()),
                    serde_path_to_error::Segment::Enum { variant } => inner.push(variant.clone()),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let message = err.into_inner().to_string();
            // serde names unknown fields in its message, and the path then stops
            // at their parent: point at the unknown key itself.
            if let Some(unknown) = quoted_field(&message, "unknown field `")
                && inner.last() != Some(&unknown)
            {
                inner.push(unknown);
            }
            if let Some(missing) = quoted_field(&message, "missing field `") {
                // Not a problem of its own when it is missing because it was
                // set aside after an earlier one.
                let mut at = inner.clone();
                at.push(missing);
                if !set_aside_paths.contains(&at) {
                    self.issue(&[path, &inner].concat(), plain_serde_message(&message));
                }
                return None;
            }
            self.issue(&[path, &inner].concat(), plain_serde_message(&message));
            failed = true;
            match set_aside(&mut json, &inner) {
                Some(removed) => set_aside_paths.push(removed),
                None => return None,
            }
        }
        None
    }

    /// Records an issue unless `node` is a mapping.
    fn expect_mapping(&mut self, path: &[String], node: &Node) -> bool {
        if matches!(node.value, NodeValue::Mapping(_)) {
            return true;
        }
        self.issue(path, format!("expected a mapping, found {}", node.type_name()));
        false
    }

    fn resource(&mut self, path: &[String], name: String, spec: WatchedResource) -> Option<Resource> {
        let before = self.issues.len();
        let at = |field: &str| -> Vec<String> {
            let mut p = path.to_vec();
            p.push(field.to_string());
            p
        };
        if spec.api_version.trim().is_empty() {
            self.issue(&at("api_version"), "must not be empty");
        } else if !api_version_shape(&spec.api_version) {
            self.issue(
                &at("api_version"),
                format!(
                    "`{}` is not an apiVersion: expected `version` or `group/version`, e.g. `v1` or `networking.k8s.io/v1`",
                    spec.api_version
                ),
            );
        }
        if spec.kind.trim().is_empty() {
            self.issue(&at("kind"), "must not be empty");
        } else if !kind_shape(&spec.kind) {
            self.issue(
                &at("kind"),
                format!(
                    "`{}` is not a kind: expected a name such as `Ingress` or `ConfigMap`",
                    spec.kind
                ),
            );
        }
        for (i, namespace) in spec.namespaces.iter().enumerate() {
            if !dns_label(namespace) {
                self.issue(
                    &[at("namespaces"), vec![i.to_string()]].concat(),
                    format!("`{namespace}` is not a namespace name (lowercase letters, digits and `-`)"),
                );
            }
        }
        let mut paths = Vec::new();
        if spec.index_by.is_empty() {
            self.issue(&at("index_by"), "needs at least one expression");
        }
        for (i, expr) in spec.index_by.iter().enumerate() {
            match FieldPath::parse(expr) {
                Ok(p) => paths.push(p),
                Err(e) => self.issue(
                    &[at("index_by"), vec![i.to_string()]].concat(),
                    format!("bad expression `{expr}`: {e}"),
                ),
            }
        }
        if spec.store == StoreKind::OnDemand {
            // An on-demand store is fed by a metadata-only watch.
            for (i, path) in paths.iter().enumerate() {
                if path.segments().first() != Some(&crate::index::Segment::Field("metadata".into())) {
                    self.issue(
                        &[at("index_by"), vec![i.to_string()]].concat(),
                        format!("`{path}`: an on-demand store indexes by metadata only (its watch carries no bodies)"),
                    );
                }
            }
        }
        let mut ignore_fields = Vec::new();
        for (i, expr) in spec.ignore_fields.iter().enumerate() {
            match FieldPath::parse(expr) {
                Ok(p) => ignore_fields.push(p),
                Err(e) => self.issue(
                    &[at("ignore_fields"), vec![i.to_string()]].concat(),
                    format!("bad expression `{expr}`: {e}"),
                ),
            }
        }
        let labels = LabelSelector::parse(&spec.label_selector)
            .map_err(|e| {
                self.issue(
                    &at("label_selector"),
                    format!("bad selector `{}`: {e}", spec.label_selector),
                )
            })
            .ok();
        let fields = FieldSelector::parse(&spec.field_selector)
            .map_err(|e| {
                self.issue(
                    &at("field_selector"),
                    format!("bad selector `{}`: {e}", spec.field_selector),
                )
            })
            .ok();
        if spec.cache.is_some() && spec.store != StoreKind::OnDemand {
            self.issue(&at("cache"), "`cache` applies only to `store: on-demand`");
        }
        if let Some(cache) = spec.cache
            && cache.max_entries == 0
        {
            self.issue(
                &at("cache")
                    .into_iter()
                    .chain(["max_entries".into()])
                    .collect::<Vec<_>>(),
                "must be at least 1",
            );
        }
        if self.issues.len() > before {
            return None;
        }
        Some(Resource {
            name,
            indexer: Indexer::new(paths, spec.on_missing_key),
            ignore_fields,
            labels: labels?,
            fields: fields?,
            cache: spec.cache.unwrap_or_default(),
            spec,
        })
    }

    fn template(&mut self, path: &[String], name: String, spec: TemplateEntry, base_dir: &Path) -> Option<Template> {
        let before = self.issues.len();
        let source = match (&spec.source, &spec.inline) {
            (Some(file), None) => Some(TemplateSource::File {
                name: file.to_string_lossy().replace('\\', "/"),
                path: base_dir.join(file),
            }),
            (None, Some(text)) => Some(TemplateSource::Inline {
                name: format!("templates.{name}.inline"),
                text: text.clone(),
            }),
            (Some(_), Some(_)) => {
                self.issue(path, "has both `source` and `inline`; give one");
                None
            }
            (None, None) => {
                self.issue(path, "needs `source` (a template file) or `inline` (template text)");
                None
            }
        };
        let output = match (&spec.path, &spec.directory) {
            (Some(file), None) => Some(OutputTarget::File {
                path: base_dir.join(file),
                written: file.clone(),
            }),
            (None, Some(dir)) => Some(OutputTarget::Directory {
                path: base_dir.join(dir),
                written: dir.clone(),
            }),
            (Some(_), Some(_)) => {
                self.issue(path, "has both `path` and `directory`; give one");
                None
            }
            (None, None) => {
                self.issue(
                    path,
                    "needs `path` (one output file) or `directory` (files emitted with file())",
                );
                None
            }
        };
        if let Some(file) = &spec.path {
            let at = [path, &["path".to_string()]].concat();
            let text = file.to_string_lossy();
            if text.trim().is_empty() {
                self.issue(&at, "must not be empty");
            } else if text.ends_with('/') {
                self.issue(
                    &at,
                    format!(
                        "`{text}` names a directory: give a file name, or use `directory` for files emitted with file()"
                    ),
                );
            }
        }
        if let Some(dir) = &spec.directory
            && dir.to_string_lossy().trim().is_empty()
        {
            self.issue(&[path, &["directory".to_string()]].concat(), "must not be empty");
        }
        let mode = match &spec.mode {
            None => Some(0o644),
            Some(text) => match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
                Ok(mode) if mode <= 0o7777 => Some(mode),
                _ => {
                    let at = [path, &["mode".to_string()]].concat();
                    self.issue(&at, format!("bad file mode `{text}`: expected octal such as \"0644\""));
                    None
                }
            },
        };
        if let Some(first) = spec.check.first()
            && first.trim().is_empty()
        {
            self.issue(&[path, &["check".to_string()]].concat(), "the command is empty");
        }
        if self.issues.len() > before {
            return None;
        }
        Some(Template {
            name,
            source: source?,
            output: output?,
            mode: mode?,
            fsync: spec.fsync,
            check: spec.check,
            check_timeout: spec.check_timeout,
        })
    }

    fn outputs_do_not_overlap(&mut self, templates: &BTreeMap<String, Template>) {
        let all: Vec<_> = templates.values().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                // `out/x`, `./out/x` and `out/../out/x` are one file.
                let (pa, pb) = (lexical(a.output.path()), lexical(b.output.path()));
                let clash = pa == pb
                    || matches!(a.output, OutputTarget::Directory { .. }) && pb.starts_with(&pa)
                    || matches!(b.output, OutputTarget::Directory { .. }) && pa.starts_with(&pb);
                if clash {
                    let field = match b.output {
                        OutputTarget::File { .. } => "path",
                        OutputTarget::Directory { .. } => "directory",
                    };
                    self.issue(
                        &["templates".into(), b.name.clone(), field.into()],
                        format!(
                            "output {} overlaps the output of template `{}` ({})",
                            b.output.path().display(),
                            a.name,
                            a.output.path().display()
                        ),
                    );
                }
            }
        }
    }

    /// No output may replace the config file or a template, and no directory
    /// output may hold them: it removes every file it did not render.
    fn outputs_spare_inputs(&mut self, file: &Path, templates: &BTreeMap<String, Template>) {
        let absolute = |p: &Path| lexical(&std::path::absolute(p).unwrap_or_else(|_| p.to_owned()));
        let mut inputs = vec![("the config file".to_string(), absolute(file))];
        for t in templates.values() {
            if let TemplateSource::File { name, path } = &t.source {
                inputs.push((format!("template `{name}`"), absolute(path)));
            }
        }
        for t in templates.values() {
            let out = absolute(t.output.path());
            let (field, hit) = match t.output {
                OutputTarget::File { .. } => ("path", inputs.iter().find(|(_, input)| *input == out)),
                OutputTarget::Directory { .. } => {
                    ("directory", inputs.iter().find(|(_, input)| input.starts_with(&out)))
                }
            };
            if let Some((what, input)) = hit {
                let message = match t.output {
                    OutputTarget::File { .. } => format!("output {} would replace {what}", out.display()),
                    OutputTarget::Directory { .. } => format!(
                        "directory output {} holds {what} ({}), which it would remove as a stale file",
                        out.display(),
                        input.display()
                    ),
                };
                self.issue(&["templates".into(), t.name.clone(), field.into()], message);
            }
        }
    }

    fn action(&mut self, path: &[String], entry: ActionEntry) -> Option<Action> {
        match (entry.command, entry.http) {
            (Some(argv), None) => {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    self.issue(&[path, &["command".to_string()]].concat(), "the command is empty");
                    return None;
                }
                Some(Action::Command {
                    argv,
                    timeout: entry.timeout,
                })
            }
            (None, Some(http)) => {
                let Some(rest) = http.url.strip_prefix("http://").or(http.url.strip_prefix("https://")) else {
                    let at = [path, &["http".to_string(), "url".to_string()]].concat();
                    self.issue(&at, format!("`{}` is not an http:// or https:// URL", http.url));
                    return None;
                };
                if rest.split(['/', '?', '#']).next().is_none_or(str::is_empty) {
                    let at = [path, &["http".to_string(), "url".to_string()]].concat();
                    self.issue(&at, format!("`{}` has no host", http.url));
                    return None;
                }
                if http.method.is_empty()
                    || !http
                        .method
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
                {
                    let at = [path, &["http".to_string(), "method".to_string()]].concat();
                    self.issue(&at, format!("`{}` is not an HTTP method such as POST", http.method));
                    return None;
                }
                Some(Action::Http(http))
            }
            (Some(_), Some(_)) => {
                self.issue(path, "has both `command` and `http`; give one per action");
                None
            }
            (None, None) => {
                self.issue(path, "needs `command` or `http`");
                None
            }
        }
    }
}

/// `path` with `.` dropped and `..` applied to the parts before it, without
/// looking at the file system (outputs need not exist yet).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `v1`, `apps/v1`, `networking.k8s.io/v1`, `example.com/v1alpha1`: an
/// optional DNS-subdomain group, then a DNS-label version.
fn api_version_shape(text: &str) -> bool {
    let version = |s: &str| dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase());
    match text.split_once('/') {
        None => version(text),
        Some((group, v)) => dns_subdomain(group) && version(v),
    }
}

/// A Kubernetes DNS label (RFC 1123): a namespace name, one part of a group.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes DNS subdomain: most object names, API groups.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// `host:port` as a listener binds it: `0.0.0.0:9090`, `[::]:9090`,
/// `localhost:9090`.
fn listen_shape(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

/// `Ingress`, `ConfigMap`, a CRD's kind: letters and digits, starting with a
/// letter.
fn kind_shape(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic()) && text.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Orders issues as they appear in the file.
pub fn sort_issues(issues: &mut [Issue]) {
    issues.sort_by_key(|i| i.position.map(|p| (p.line, p.column)));
}

/// Extracts `x` from serde's "unknown field `x`, expected …" (with that
/// `prefix`) or "missing field `x`".
fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_string())
}

/// Removes the key a problem is about from `json` (the deepest mapping key on
/// `path` before any list index) and returns the path removed.
fn set_aside(json: &mut serde_json::Value, path: &[String]) -> Option<Vec<String>> {
    let mut depth = 0;
    let mut node = &*json;
    for segment in path {
        match node.get(segment.as_str()) {
            Some(next) if node.is_object() => {
                depth += 1;
                node = next;
            }
            _ => break,
        }
    }
    let (parent, key) = path[..depth].split_at(depth.checked_sub(1)?);
    let mut map = &mut *json;
    for segment in parent {
        map = map.get_mut(segment.as_str())?;
    }
    map.as_object_mut()?.remove(&key[0])?;
    Some(path[..depth].to_vec())
}

/// Serde's wording with Rust's names replaced by the YAML ones.
fn plain_serde_message(message: &str) -> String {
    let mut out = message
        .replace("expected a sequence", "expected a list")
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected usize", "expected a whole number");
    if let Some(at) = out.find("expected struct ") {
        let end = out[at + "expected struct ".len()..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |n| at + "expected struct ".len() + n);
        out.replace_range(at..end, "expected a mapping");
    }
    out
}

fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        return "(document)".into();
    }
    let mut out = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

#[cfg(test)]
mod tests;
