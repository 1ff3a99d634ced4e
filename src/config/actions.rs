//! `actions`: what runs after a render that changed a file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

use crate::action::signal::SignalTarget;
use crate::action::{Action, HttpAction};

use super::humane::{self, DurationText};
use super::validate::Validator;
use super::yaml::NodeValue;

/// An `actions` entry as the user writes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "oneOf" = [{ "required": ["command"] }, { "required": ["http"] }, { "required": ["signal"] }],
    "dependentRequired" = { "process": ["signal"], "pid_file": ["signal"] },
    "dependentSchemas" = { "signal": { "oneOf": [{ "required": ["process"] }, { "required": ["pid_file"] }] } },
))]
pub struct ActionEntry {
    /// Program and arguments; no shell unless you write one.
    #[serde(default)]
    #[schemars(length(min = 1), extend("prefixItems" = [{ "type": "string", "pattern": "\\S" }]))]
    pub command: Option<Vec<String>>,
    /// An HTTP request.
    #[serde(default)]
    pub http: Option<HttpEntry>,
    /// A signal (`HUP`, `USR1`, `USR2`, `TERM`, …) sent to `process` or `pid_file`.
    #[serde(default)]
    #[schemars(with = "Option<SignalName>")]
    pub signal: Option<String>,
    /// With `signal`: every process whose comm or `argv[0]` basename is this.
    #[serde(default)]
    #[schemars(pattern(r"\S"))]
    pub process: Option<String>,
    /// With `signal`: the file holding the pid to signal.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub pid_file: Option<PathBuf>,
    /// How long the command may run.
    #[serde(
        default = "default_action_timeout",
        deserialize_with = "humane::duration::deserialize"
    )]
    #[schemars(with = "DurationText")]
    pub timeout: Duration,
}

fn default_action_timeout() -> Duration {
    Duration::from_secs(30)
}

/// An `http` action as the user writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpEntry {
    /// `http://` or `https://` URL to call (a reload endpoint).
    #[schemars(pattern(r"^https?://[^/?#]+"))]
    pub url: String,
    /// HTTP method.
    #[serde(default = "default_http_method")]
    #[schemars(pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub method: String,
    /// Timeout of one attempt.
    #[serde(
        default = "default_action_timeout",
        deserialize_with = "humane::duration::deserialize"
    )]
    #[schemars(with = "DurationText")]
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

/// The signal a config names: `HUP`, `USR1`, … with or without `SIG`, in
/// any case. `None` for a name that is no signal.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    // SIGSTOP would freeze the process with no way back from here.
    format!("SIG{bare}").parse().ok().filter(|s| *s != Signal::SIGSTOP)
}

/// The schema of a signal name: one [`parse_signal`] reads, in any case,
/// with or without `SIG`. Editors complete the names of the `enum`.
struct SignalName;

impl JsonSchema for SignalName {
    fn schema_name() -> Cow<'static, str> {
        "Signal".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Signal::iterator()
            .filter(|s| *s != Signal::SIGSTOP)
            .map(|s| s.as_str().trim_start_matches("SIG"))
            .collect();
        // JSON Schema patterns have no case-insensitive flag: `[Hh][Uu][Pp]`.
        let any_case = |name: &str| -> String {
            name.chars()
                .map(|c| match c.is_ascii_alphabetic() {
                    true => format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()),
                    false => c.to_string(),
                })
                .collect()
        };
        let alternatives: Vec<String> = names.iter().map(|n| any_case(n)).collect();
        json_schema!({
            "description": "A signal name such as HUP, USR1, USR2 or TERM, in any case, with or without SIG.",
            "anyOf": [
                { "type": "string", "enum": names },
                {
                    "type": "string",
                    "pattern": format!(r"^\s*({})?({})\s*$", any_case("SIG"), alternatives.join("|")),
                },
            ],
        })
    }
}

/// `exec:` as the user writes it: how exec mode (`run -- CMD`) reloads and
/// stops its command.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecEntry {
    /// Signal that reloads the command after a change; without one it is
    /// restarted.
    #[serde(default)]
    #[schemars(with = "Option<SignalName>")]
    pub reload_signal: Option<String>,
    /// Signal that asks the command to stop.
    #[serde(default = "default_kill_signal")]
    #[schemars(with = "SignalName")]
    pub kill_signal: String,
    /// How long the command may take to stop before it is killed (SIGKILL).
    #[serde(default = "default_kill_timeout", deserialize_with = "humane::duration::deserialize")]
    #[schemars(with = "DurationText")]
    pub kill_timeout: Duration,
}

fn default_kill_signal() -> String {
    "TERM".into()
}

/// Below Kubernetes' default grace period of 30s, so that the command's own
/// exit status, not the kubelet's SIGKILL, ends the pod.
fn default_kill_timeout() -> Duration {
    Duration::from_secs(20)
}

/// A validated `exec:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecSettings {
    /// Sent on a change; `None` restarts the command instead.
    pub reload_signal: Option<Signal>,
    /// Sent to stop the command.
    pub kill_signal: Signal,
    /// How long a stopping command may take before it is killed.
    pub kill_timeout: Duration,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            reload_signal: None,
            kill_signal: Signal::SIGTERM,
            kill_timeout: default_kill_timeout(),
        }
    }
}

impl Validator<'_> {
    /// The list of actions at `at` (`actions`, `groups.NAME.actions`): each
    /// valid action, in order.
    pub(super) fn action_list(&mut self, at: &[String], base_dir: &Path) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(node) = at.iter().try_fold(self.tree, |node, key| node.get(key)).cloned() {
            match &node.value {
                NodeValue::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = [at, &[i.to_string()]].concat();
                        if let Some(entry) = self.typed::<ActionEntry>(&path, item, &["http"])
                            && let Some(action) = self.action(&path, entry, base_dir)
                        {
                            actions.push(action);
                        }
                    }
                }
                NodeValue::Null => {}
                _ => self.issue(at, format!("expected a list, found {}", node.type_name())),
            }
        }
        actions
    }

    /// The `exec` section; its signals known ones, its timeout not zero.
    pub(super) fn exec_settings(&mut self) -> Option<ExecSettings> {
        let node = self.tree.get("exec").cloned()?;
        if matches!(node.value, NodeValue::Null) {
            return None;
        }
        let entry = self.typed::<ExecEntry>(&["exec".into()], &node, &[])?;
        let before = self.issues.len();
        let mut signal = |key: &str, name: &str| {
            let signal = parse_signal(name);
            if signal.is_none() {
                self.issue(
                    &["exec".into(), key.into()],
                    format!("`{name}` is not a signal: expected a name such as HUP, USR1, USR2 or TERM"),
                );
            }
            signal
        };
        let reload_signal = entry.reload_signal.as_deref().map(|name| signal("reload_signal", name));
        let kill_signal = signal("kill_signal", &entry.kill_signal);
        if entry.kill_timeout.is_zero() {
            self.issue(
                &["exec".into(), "kill_timeout".into()],
                "must be longer than 0s: the command would get no time to stop",
            );
        }
        if self.issues.len() > before {
            return None;
        }
        Some(ExecSettings {
            reload_signal: reload_signal.flatten(),
            kill_signal: kill_signal?,
            kill_timeout: entry.kill_timeout,
        })
    }

    fn action(&mut self, path: &[String], entry: ActionEntry, base_dir: &Path) -> Option<Action> {
        let at = |key: &str| [path, &[key.to_string()]].concat();
        if entry.signal.is_none() {
            for (key, given) in [
                ("process", entry.process.is_some()),
                ("pid_file", entry.pid_file.is_some()),
            ] {
                if given {
                    self.issue(&at(key), format!("`{key}` only goes with `signal`"));
                }
            }
        }
        let kinds: Vec<&str> = [
            ("command", entry.command.is_some()),
            ("http", entry.http.is_some()),
            ("signal", entry.signal.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, given)| given.then_some(kind))
        .collect();
        if let Some((last, rest)) = kinds.split_last()
            && !rest.is_empty()
        {
            let rest = rest.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            self.issue(path, format!("has both {rest} and `{last}`; give one per action"));
            return None;
        }
        if let Some(name) = &entry.signal {
            let signal = parse_signal(name);
            if signal.is_none() {
                self.issue(
                    &at("signal"),
                    format!("`{name}` is not a signal: expected a name such as HUP, USR1, USR2 or TERM"),
                );
            }
            let target = match (entry.process, entry.pid_file) {
                (Some(process), None) if process.trim().is_empty() => {
                    self.issue(&at("process"), "must not be empty");
                    None
                }
                (Some(process), None) => Some(SignalTarget::Process(process)),
                (None, Some(file)) if file.as_os_str().is_empty() => {
                    self.issue(&at("pid_file"), "must not be empty");
                    None
                }
                (None, Some(file)) => Some(SignalTarget::PidFile(base_dir.join(file))),
                (Some(_), Some(_)) => {
                    self.issue(path, "has both `process` and `pid_file`; give one");
                    None
                }
                (None, None) => {
                    self.issue(
                        path,
                        "`signal` needs `process` (a process name) or `pid_file` (a file holding a pid)",
                    );
                    None
                }
            };
            return Some(Action::Signal {
                signal: signal?,
                target: target?,
            });
        }
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
                Some(Action::Http(HttpAction {
                    url: http.url,
                    method: http.method,
                    timeout: http.timeout,
                    retries: http.retries,
                    headers: http.headers,
                    body: http.body,
                    insecure_skip_tls_verify: http.insecure_skip_tls_verify,
                }))
            }
            (Some(_), Some(_)) => unreachable!("refused above: more than one kind"),
            (None, None) => {
                self.issue(path, "needs `command`, `http` or `signal`");
                None
            }
        }
    }
}
