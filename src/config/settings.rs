//! `render`, `admin` and `status`: how the pipeline renders and reports.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::Config;
use super::humane::{self, ByteSize, DurationText};
use super::validate::{self, Validator, dns_label, dns_subdomain, listen_shape};
use super::yaml::NodeValue;
use crate::action::Action;
use crate::report::StatusSettings;

/// `render:` settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderSettings {
    /// Quiescence before a render.
    #[serde(default)]
    pub wait: Wait,
    /// Template instruction budget per render of one template.
    #[serde(default = "default_fuel")]
    #[schemars(range(min = 1))]
    pub fuel: u64,
    /// Largest output one template may produce (all its files together).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: ByteSize,
    /// Lets templates fetch URLs with `fetch_url()`; absent: they cannot.
    #[serde(default)]
    pub fetch: Option<FetchSettings>,
}

/// `render.fetch:` how `fetch_url()` fetches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchSettings {
    /// Timeout of one attempt, body included.
    #[serde(
        default = "default_fetch_timeout",
        deserialize_with = "humane::duration::deserialize"
    )]
    #[schemars(with = "DurationText")]
    pub timeout: Duration,
    /// Further attempts after a connection error, a timeout or a 5xx answer.
    #[serde(default = "default_fetch_retries")]
    pub retries: u32,
    /// Request headers, e.g. `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// With an `https://` URL: accept any certificate.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// A 5xx answer's body is the content instead of a failure.
    #[serde(default)]
    pub server_error_bodies: bool,
    /// How many fetched URLs are kept (least recently used go first); a URL
    /// not kept is fetched again at the next render.
    #[serde(default = "default_fetch_max_entries")]
    #[schemars(range(min = 1))]
    pub max_entries: usize,
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_fetch_retries() -> u32 {
    2
}

fn default_fetch_max_entries() -> usize {
    1024
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            wait: Wait::default(),
            fuel: default_fuel(),
            max_output_bytes: default_max_output(),
            fetch: None,
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
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// How long no event may arrive before the render starts.
    #[serde(default = "default_wait_min", deserialize_with = "humane::duration::deserialize")]
    #[schemars(with = "DurationText")]
    pub min: Duration,
    /// The longest a render waits after the first event, however many follow.
    #[serde(default = "default_wait_max", deserialize_with = "humane::duration::deserialize")]
    #[schemars(with = "DurationText")]
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin HTTP server: `host:port`.
    #[serde(default = "default_listen")]
    #[schemars(pattern(validate::LISTEN))]
    pub listen: String,
    /// What `/readyz` means: `serving` (ready once synced with a good render
    /// on disk, and from then on) or `strict` (also the last render succeeded
    /// and every watch is connected).
    #[serde(default)]
    pub readiness: Readiness,
    /// How long the pipeline loop may go without turning (one render with its
    /// checks and actions is one turn) before `/healthz` fails.
    #[serde(
        default = "default_stall_timeout",
        deserialize_with = "humane::duration::deserialize"
    )]
    #[schemars(with = "DurationText")]
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
    let lists = std::iter::once(("actions".to_string(), &config.actions)).chain(
        config
            .groups
            .values()
            .map(|g| (format!("groups.{}.actions", g.name), &g.actions)),
    );
    let actions = lists.flat_map(|(at, list)| {
        list.iter().enumerate().map(move |(i, action)| match action {
            Action::Command { timeout, .. } => (format!("{at}.{i}.timeout"), *timeout),
            Action::Http(http) => (
                format!("{at}.{i}.timeout × {} attempts", http.retries + 1),
                http.timeout * (http.retries + 1),
            ),
            // A signal is sent, not waited on.
            Action::Signal { .. } => (format!("{at}.{i}"), Duration::ZERO),
        })
    });
    checks.chain(actions).max_by_key(|(_, wait)| *wait)
}

/// `admin.readiness`: what `/readyz` means (DESIGN section 7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Ready once synced with a good render on disk; render failures and API
    /// outages are reported, not taken out of the Service.
    #[default]
    Serving,
    /// Ready only while the last render succeeded and every watch is connected.
    Strict,
}

impl Validator<'_> {
    /// The `render` section, when given and readable.
    pub(super) fn render_settings(&mut self) -> Option<RenderSettings> {
        let node = self.section("render")?;
        let render = self.typed::<RenderSettings>(&["render".into()], &node, &["wait", "fetch"])?;
        self.check_wait(&["render".into(), "wait".into()], render.wait);
        if render.fuel == 0 {
            self.issue(
                &["render".into(), "fuel".into()],
                "must be at least 1: with no fuel every render fails",
            );
        }
        if render.fetch.as_ref().is_some_and(|f| f.max_entries == 0) {
            self.issue(
                &["render".into(), "fetch".into(), "max_entries".into()],
                "must be at least 1: with none kept, every render fetches every URL again",
            );
        }
        Some(render)
    }

    /// A `wait` (of `render`, or of a group) at `path`: neither bound too
    /// long, `min` no longer than `max`.
    pub(super) fn check_wait(&mut self, path: &[String], wait: Wait) {
        for (key, length) in [("min", wait.min), ("max", wait.max)] {
            if length > MAX_WAIT {
                let at = [path, &[key.to_string()]].concat();
                let written = match &self.tree.deepest(&at).value {
                    NodeValue::String(text) => text.clone(),
                    _ => humantime::format_duration(length).to_string(),
                };
                self.issue(
                    &at,
                    format!(
                        "`{written}` is too long: a render waits at most {}",
                        humantime::format_duration(MAX_WAIT)
                    ),
                );
            }
        }
        if wait.min > wait.max {
            self.issue(
                path,
                format!(
                    "`min` ({}) is longer than `max` ({})",
                    humantime::format_duration(wait.min),
                    humantime::format_duration(wait.max)
                ),
            );
        }
    }

    /// The `admin` section, when given and readable; `config` holds the
    /// sections it is checked against.
    pub(super) fn admin_settings(&mut self, config: &Config) -> Option<AdminSettings> {
        let node = self.section("admin")?;
        let admin = self.typed::<AdminSettings>(&["admin".into()], &node, &[])?;
        if admin.stall_timeout.is_zero() {
            self.issue(
                &["admin".into(), "stall_timeout".into()],
                "must be longer than 0s: the pipeline loop could never be healthy",
            );
        } else if let Some((what, longest)) = longest_wait(config)
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
        Some(admin)
    }

    /// The `status` section, when given and readable.
    pub(super) fn status_settings(&mut self) -> Option<StatusSettings> {
        let node = self.section("status")?;
        let status = self.typed::<StatusSettings>(&["status".into()], &node, &[])?;
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
        Some(status)
    }
}
