//! `actions`: what runs after a render that changed a file.

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
    /// The list of actions at `at` (`actions`, `groups.NAME.actions`): each
    /// valid action, in order.
    pub(super) fn action_list(&mut self, at: &[String]) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(node) = at.iter().try_fold(self.tree, |node, key| node.get(key)).cloned() {
            match &node.value {
                NodeValue::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = [at, &[i.to_string()]].concat();
                        if let Some(entry) = self.typed::<ActionEntry>(&path, item, &["http"])
                            && let Some(action) = self.action(&path, entry)
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
                if !http.url.starts_with("http://") {
                    let at = [path, &["http".to_string(), "url".to_string()]].concat();
                    self.issue(
                        &at,
                        format!(
                            "`{}` is not an http:// URL (reload endpoints are local; https is not supported)",
                            http.url
                        ),
                    );
                    return None;
                }
                if http.url["http://".len()..]
                    .split(['/', '?', '#'])
                    .next()
                    .is_none_or(str::is_empty)
                {
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
