//! `kube-template k8s-sidecar`: a drop-in for kiwigrid/k8s-sidecar. Its
//! environment variables become a config (one watch per resource kind, a
//! directory output made by a built-in template, a command and an HTTP
//! action, and `render.fetch` for the URLs of keys ending in `.url`, which
//! the template fetches with `fetch_url()`) that the ordinary pipeline runs,
//! so this mode has no watching, fetching or writing of its own.
//!
//! [`Settings::from_env`] reads and checks the variables, reporting every
//! problem at once, each naming its variable; [`Settings::config_yaml`] makes
//! the config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

mod config;
mod env;

/// A problem with one variable. Values of passwords are never shown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required variable is absent or empty.
    #[error("{var} is not set: {why}")]
    Missing { var: &'static str, why: &'static str },
    /// A variable's value cannot be used.
    #[error("{var}={value:?}: {why}")]
    Invalid { var: String, value: String, why: String },
    /// A `*_FILE` variable or flag names a file that cannot be read.
    #[error("{var}: cannot read {}: {source}", path.display())]
    ReadFile {
        var: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A k8s-sidecar variable this mode does not support.
    #[error("{var} is not supported by kube-template k8s-sidecar: {why}")]
    Unsupported { var: String, why: String },
    /// A variable that looks like one of k8s-sidecar's but is none of them.
    #[error("{var} is not a k8s-sidecar variable{}", hint.as_ref().map(|h| format!(" (did you mean {h}?)")).unwrap_or_default())]
    Unknown { var: String, hint: Option<String> },
    /// The generated config could not be written as YAML.
    #[error("cannot write the config as YAML: {0}")]
    Yaml(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What k8s-sidecar's environment asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `LABEL`: the label a ConfigMap or Secret must have.
    pub label: String,
    /// `LABEL_VALUE`: the value it must have; any value when absent.
    pub label_value: Option<String>,
    /// `FOLDER`: where files go, without a trailing `/`.
    pub folder: String,
    /// `FOLDER_ANNOTATION`: the annotation naming another folder for an object.
    pub folder_annotation: String,
    /// `NAMESPACE`.
    pub namespaces: Namespaces,
    /// `RESOURCE`: which kinds are watched.
    pub kinds: Vec<Kind>,
    /// `RESOURCE_NAME`: only these objects, when any (and not all namespaces).
    pub resource_names: Vec<ResourceName>,
    /// `METHOD`.
    pub method: Method,
    /// `UNIQUE_FILENAMES`: file names carry namespace, kind and object name.
    pub unique_filenames: bool,
    /// `DEFAULT_FILE_MODE`, as config text (`"0644"`).
    pub file_mode: Option<String>,
    /// `SCRIPT`: run after a batch of changes.
    pub script: Option<String>,
    /// `REQ_*`: the request sent after a batch of changes.
    pub request: Option<Request>,
    /// How the URLs of `.url` keys are fetched.
    pub fetch: Fetch,
    /// `REQ_SKIP_INIT`: the first render after the start runs neither the
    /// request nor `SCRIPT` (`actions_on_start: skip`).
    pub skip_init: bool,
    /// `HEALTH_HOST:HEALTH_PORT`.
    pub health_listen: String,
    /// `LOG_LEVEL`, as a tracing level.
    pub log_level: &'static str,
    /// `LOG_FORMAT=JSON` (k8s-sidecar's default) rather than `LOGFMT`.
    pub log_json: bool,
    /// `WATCH_SERVER_TIMEOUT`.
    pub watch_timeout: Option<Duration>,
    /// `SKIP_TLS_VERIFY`: the Kubernetes API's certificate is not verified.
    pub skip_tls_verify: bool,
    /// Variables accepted but without effect here, and why: logged at start.
    pub notes: Vec<String>,
}

/// `NAMESPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// Absent: the pod's own namespace (outside a pod, the kubeconfig context's).
    Own,
    /// `ALL`.
    All,
    /// A comma list.
    Only(Vec<String>),
}

/// A kind k8s-sidecar watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// The name k8s-sidecar uses in `RESOURCE`, `RESOURCE_NAME` and unique file names.
    pub fn word(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// One `RESOURCE_NAME` entry: `name`, `kind/name` or `namespace/kind/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    pub namespace: Option<String>,
    pub kind: Option<Kind>,
    pub name: String,
}

/// `METHOD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Watch and keep the files current (the default).
    Watch,
    /// Write the files once and exit (`run --once`).
    List,
    /// k8s-sidecar polls every `SLEEP_TIME`; here it watches, which gives the
    /// same files sooner.
    Sleep,
}

/// The HTTP request of `REQ_URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    /// `GET` or `POST`.
    pub method: String,
    /// The JSON body of a POST (`REQ_PAYLOAD`).
    pub payload: Option<String>,
    /// The `Authorization` header value, from `REQ_USERNAME` and `REQ_PASSWORD`.
    pub authorization: Option<String>,
    /// `REQ_RETRY_TOTAL`.
    pub retries: u32,
    /// `REQ_TIMEOUT`.
    pub timeout: Duration,
    /// `REQ_SKIP_TLS_VERIFY`: an `https://` URL's certificate is not verified.
    pub skip_tls_verify: bool,
}

/// How k8s-sidecar fetches the URL of a key ending in `.url`: with the
/// `REQ_*` settings of its reload request, whether or not `REQ_URL` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    /// The `Authorization` header value, from `REQ_USERNAME` and `REQ_PASSWORD`.
    pub authorization: Option<String>,
    /// `REQ_RETRY_TOTAL`.
    pub retries: u32,
    /// `REQ_TIMEOUT`.
    pub timeout: Duration,
    /// `REQ_SKIP_TLS_VERIFY`.
    pub skip_tls_verify: bool,
    /// `ENABLE_5XX`: a 5xx answer's body is written instead of failing.
    pub enable_5xx: bool,
}

/// Files named by command-line flags rather than variables.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--req-username-file`.
    pub req_username_file: Option<PathBuf>,
    /// `--req-password-file`.
    pub req_password_file: Option<PathBuf>,
}

impl Settings {
    /// Reads k8s-sidecar's variables from `vars` (the process environment, in
    /// `main`); every problem is returned, each naming its variable.
    pub fn from_env(vars: &BTreeMap<String, String>, flags: &Flags) -> Result<Settings, Vec<Error>> {
        env::read(vars, flags)
    }

    /// Whether the run writes the files once and exits.
    pub fn once(&self) -> bool {
        self.method == Method::List
    }

    /// The config that does what the variables ask. `own_namespace` is the
    /// pod's namespace, for an absent `NAMESPACE`; without one, every
    /// namespace is read (manifests given with `--from`).
    pub fn config_yaml(&self, own_namespace: Option<&str>) -> Result<String> {
        config::yaml(self, own_namespace, false)
    }

    /// [`Settings::config_yaml`] to show (`--print-config`): without the
    /// credentials of `REQ_USERNAME` and `REQ_PASSWORD`.
    pub fn printed_config_yaml(&self, own_namespace: Option<&str>) -> Result<String> {
        config::yaml(self, own_namespace, true)
    }
}

#[cfg(test)]
mod tests;
