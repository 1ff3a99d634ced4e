//! `actions`: what runs after a render that changed a file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::humane;
use super::validate::Validator;
use super::yaml::NodeValue;

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
    /// `http://` or `https://` URL to call (a reload endpoint).
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

impl Validator<'_> {
    /// The `actions` section: each valid action, in order.
    pub(super) fn actions(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(node) = self.tree.get("actions").cloned() {
            match &node.value {
                NodeValue::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = vec!["actions".to_string(), i.to_string()];
                        if let Some(entry) = self.typed::<ActionEntry>(&path, item, &["http"])
                            && let Some(action) = self.action(&path, entry)
                        {
                            actions.push(action);
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
        actions
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
