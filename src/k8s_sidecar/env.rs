//! Reading k8s-sidecar's variables, with the meaning its README and code give
//! them; stricter where it silently ignores a bad value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Error, Fetch, Flags, Kind, Method, Namespaces, Request, ResourceName, Settings};

/// Every variable k8s-sidecar reads.
const KNOWN: &[&str] = &[
    "LABEL",
    "LABEL_VALUE",
    "FOLDER",
    "FOLDER_ANNOTATION",
    "NAMESPACE",
    "RESOURCE",
    "RESOURCE_NAME",
    "METHOD",
    "SLEEP_TIME",
    "UNIQUE_FILENAMES",
    "DEFAULT_FILE_MODE",
    "IGNORE_ALREADY_PROCESSED",
    "SCRIPT",
    "REQ_URL",
    "REQ_METHOD",
    "REQ_PAYLOAD",
    "REQ_SKIP_INIT",
    "REQ_USERNAME",
    "REQ_PASSWORD",
    "REQ_USERNAME_FILE",
    "REQ_PASSWORD_FILE",
    "REQ_BASIC_AUTH_ENCODING",
    "REQ_RETRY_TOTAL",
    "REQ_RETRY_CONNECT",
    "REQ_RETRY_READ",
    "REQ_RETRY_BACKOFF_FACTOR",
    "REQ_TIMEOUT",
    "REQ_SKIP_TLS_VERIFY",
    "ENABLE_5XX",
    "SKIP_TLS_VERIFY",
    "WATCH_SERVER_TIMEOUT",
    "WATCH_CLIENT_TIMEOUT",
    "ERROR_THROTTLE_SLEEP",
    "HEALTH_HOST",
    "HEALTH_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "LOG_TZ",
    "LOG_CONFIG",
];

/// Prefixes of k8s-sidecar's variables: an unknown variable with one is a typo.
const OWN_PREFIXES: &[&str] = &[
    "REQ_", "LABEL", "FOLDER", "RESOURCE", "WATCH_", "LOG_", "HEALTH_", "SLEEP_",
];

/// The variables, each problem collected rather than returned at once.
struct Reader<'a> {
    vars: &'a BTreeMap<String, String>,
    errors: Vec<Error>,
}

impl Reader<'_> {
    /// A set variable's value; an empty value counts as absent, as in k8s-sidecar.
    fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn invalid(&mut self, var: &str, value: &str, why: impl Into<String>) {
        self.errors.push(Error::Invalid {
            var: var.into(),
            value: value.into(),
            why: why.into(),
        });
    }

    fn required(&mut self, var: &'static str, why: &'static str) -> String {
        match self.get(var) {
            Some(value) => value.to_string(),
            None => {
                self.errors.push(Error::Missing { var, why });
                String::new()
            }
        }
    }

    fn bool(&mut self, var: &str) -> bool {
        match self.get(var).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                let value = self.vars[var].clone();
                self.invalid(var, &value, "expected true or false");
                false
            }
        }
    }

    /// A number of `T` (seconds, counts), or `default` when absent.
    fn number<T: std::str::FromStr + PartialOrd + Copy>(&mut self, var: &str, default: T, min: T, what: &str) -> T {
        let Some(text) = self.get(var).map(str::to_string) else {
            return default;
        };
        match text.trim().parse::<T>() {
            Ok(n) if n >= min => n,
            _ => {
                self.invalid(var, &text, format!("expected {what}"));
                default
            }
        }
    }

    /// One of `choices` (case-insensitive), given in upper case.
    fn choice(&mut self, var: &str, choices: &[&'static str]) -> Option<&'static str> {
        let text = self.get(var)?.to_string();
        let found = choices.iter().find(|c| c.eq_ignore_ascii_case(text.trim())).copied();
        if found.is_none() {
            self.invalid(var, &text, format!("expected one of {}", choices.join(", ")));
        }
        found
    }

    /// A secret value from `VAR` or from the file `VAR_FILE` (or `flag`),
    /// which wins, as in k8s-sidecar.
    fn secret(&mut self, var: &str, flag: Option<&Path>) -> Option<String> {
        let file_var = format!("{var}_FILE");
        let file = flag
            .map(|p| {
                (
                    format!("--{}-file", var.to_ascii_lowercase().replace('_', "-")),
                    p.to_owned(),
                )
            })
            .or_else(|| self.get(&file_var).map(|p| (file_var.clone(), PathBuf::from(p))));
        match file {
            Some((name, path)) => match std::fs::read_to_string(&path) {
                // Files written by hand or by `kubectl create secret` often end in a newline.
                Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_string()).filter(|t| !t.is_empty()),
                Err(source) => {
                    self.errors.push(Error::ReadFile {
                        var: name,
                        path,
                        source,
                    });
                    None
                }
            },
            None => self.get(var).map(str::to_string),
        }
    }
}

pub(super) fn read(vars: &BTreeMap<String, String>, flags: &Flags) -> Result<Settings, Vec<Error>> {
    let mut r = Reader {
        vars,
        errors: unknown(vars),
    };
    let mut notes = Vec::new();

    let label = r.required("LABEL", "the label that selects ConfigMaps and Secrets");
    if !label.is_empty() && !label_key(&label) {
        r.invalid(
            "LABEL",
            &label,
            "not a label key: [prefix/]name, name up to 63 letters, digits, '-', '_', '.'",
        );
    }
    let label_value = r.get("LABEL_VALUE").map(str::to_string);
    if let Some(value) = &label_value
        && !label_value_ok(value)
    {
        r.invalid(
            "LABEL_VALUE",
            value,
            "not a label value: up to 63 letters, digits, '-', '_', '.', starting and ending alphanumeric",
        );
    }
    let folder = r.required("FOLDER", "the directory the files are written to");
    let trimmed = folder.trim_end_matches('/').to_string();
    if trimmed.is_empty() && !folder.is_empty() {
        // Files in FOLDER that no object provides are removed.
        r.invalid(
            "FOLDER",
            &folder,
            "the root directory cannot be the folder: files no ConfigMap or Secret provides are removed from it; give a directory of its own",
        );
    }
    let folder = trimmed;
    let folder_annotation = r
        .get("FOLDER_ANNOTATION")
        .unwrap_or("k8s-sidecar-target-directory")
        .to_string();

    let namespaces = match r.vars.get("NAMESPACE") {
        None => Namespaces::Own,
        Some(text) => {
            let text = text.clone();
            let list: Vec<String> = text.split(',').map(|n| n.trim().to_string()).collect();
            if list.iter().any(|n| n == "ALL") {
                Namespaces::All
            } else if let Some(bad) = list.iter().find(|n| !dns_label(n)) {
                r.invalid(
                    "NAMESPACE",
                    &text,
                    format!("{bad:?} is not a namespace name; give ALL, a namespace, or a comma list"),
                );
                Namespaces::All
            } else {
                Namespaces::Only(list)
            }
        }
    };
    let kinds = match r.choice("RESOURCE", &["configmap", "secret", "both"]) {
        None | Some("configmap") => vec![Kind::ConfigMap],
        Some("secret") => vec![Kind::Secret],
        Some(_) => vec![Kind::ConfigMap, Kind::Secret],
    };
    let mut resource_names = Vec::new();
    if let Some(text) = r.get("RESOURCE_NAME").map(str::to_string) {
        for entry in text.split(',').map(str::trim) {
            match resource_name(entry) {
                Some(name) => resource_names.push(name),
                None => r.invalid(
                    "RESOURCE_NAME",
                    &text,
                    format!("{entry:?} is not name, configmap/name, secret/name or namespace/kind/name"),
                ),
            }
        }
        if namespaces == Namespaces::All {
            // k8s-sidecar ignores it then, and selects by label.
            notes.push("RESOURCE_NAME is ignored with NAMESPACE=ALL, as k8s-sidecar does".into());
            resource_names.clear();
        }
    }
    let method = match r.choice("METHOD", &["WATCH", "LIST", "SLEEP"]) {
        None | Some("WATCH") => Method::Watch,
        Some("LIST") => Method::List,
        Some(_) => {
            notes.push("METHOD=SLEEP watches instead of polling: the same files, sooner".into());
            Method::Sleep
        }
    };
    r.number::<u64>("SLEEP_TIME", 60, 0, "a whole number of seconds");
    let unique_filenames = r.bool("UNIQUE_FILENAMES");
    let file_mode = r.get("DEFAULT_FILE_MODE").map(str::to_string).and_then(|mode| {
        let digits = mode.trim();
        if (3..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            Some(format!("{digits:0>4}"))
        } else {
            r.invalid(
                "DEFAULT_FILE_MODE",
                &mode,
                "expected three octal digits such as 644 or 440",
            );
            None
        }
    });
    if r.bool("IGNORE_ALREADY_PROCESSED") {
        notes.push("IGNORE_ALREADY_PROCESSED has no effect: unchanged files are never rewritten".into());
    }
    let script = r.get("SCRIPT").map(str::to_string);

    let (request, mut fetch) = request(&mut r, flags);
    let skip_init = r.bool("REQ_SKIP_INIT");
    fetch.enable_5xx = r.bool("ENABLE_5XX");
    let skip_tls_verify = r.bool("SKIP_TLS_VERIFY");
    let watch_timeout = r
        .get("WATCH_SERVER_TIMEOUT")
        .is_some()
        .then(|| Duration::from_secs(r.number::<u64>("WATCH_SERVER_TIMEOUT", 60, 1, "a whole number of seconds")));
    r.number::<u64>("WATCH_CLIENT_TIMEOUT", 66, 1, "a whole number of seconds");
    r.number::<u64>("ERROR_THROTTLE_SLEEP", 5, 0, "a whole number of seconds");

    let host = r.get("HEALTH_HOST").unwrap_or("0.0.0.0").to_string();
    let port = r.number::<u16>("HEALTH_PORT", 8080, 0, "a port number");
    let health_listen = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let log_level = match r.choice("LOG_LEVEL", &["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"]) {
        Some("DEBUG") => "debug",
        None | Some("INFO") => "info",
        Some("WARN" | "WARNING") => "warn",
        Some(_) => "error",
    };
    let log_json = r.choice("LOG_FORMAT", &["JSON", "LOGFMT"]) != Some("LOGFMT");
    if r.choice("LOG_TZ", &["LOCAL", "UTC"]) == Some("LOCAL") {
        notes.push("LOG_TZ=LOCAL: log times are in UTC".into());
    }
    if r.get("LOG_CONFIG").is_some() {
        r.errors.push(Error::Unsupported {
            var: "LOG_CONFIG".into(),
            why: "Python logging configs do not apply; use LOG_LEVEL and LOG_FORMAT".into(),
        });
    }

    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    Ok(Settings {
        label,
        label_value,
        folder,
        folder_annotation,
        namespaces,
        kinds,
        resource_names,
        method,
        unique_filenames,
        file_mode,
        script,
        request,
        fetch,
        skip_init,
        health_listen,
        log_level,
        log_json,
        watch_timeout,
        skip_tls_verify,
        notes,
    })
}

/// The `REQ_*` variables: the request (none without `REQ_URL`), and how
/// `.url` keys are fetched.
fn request(r: &mut Reader<'_>, flags: &Flags) -> (Option<Request>, Fetch) {
    let method = r.choice("REQ_METHOD", &["GET", "POST"]).unwrap_or("GET");
    let payload = r.get("REQ_PAYLOAD").map(|text| {
        // Not JSON: k8s-sidecar posts it as a JSON string.
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(json) => json.to_string(),
            Err(_) => serde_json::Value::from(text).to_string(),
        }
    });
    let username = r.secret("REQ_USERNAME", flags.req_username_file.as_deref());
    let password = r.secret("REQ_PASSWORD", flags.req_password_file.as_deref());
    let encoding = r
        .choice(
            "REQ_BASIC_AUTH_ENCODING",
            &["LATIN1", "LATIN-1", "ISO-8859-1", "UTF-8", "UTF8"],
        )
        .unwrap_or("LATIN1");
    let encode = |r: &mut Reader<'_>, var: &str, text: &str, shown: &str| -> Vec<u8> {
        if encoding.starts_with("UTF") {
            return text.as_bytes().to_vec();
        }
        match text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect::<Option<Vec<u8>>>()
        {
            Some(bytes) => bytes,
            None => {
                r.invalid(
                    var,
                    shown,
                    "has characters outside latin1; set REQ_BASIC_AUTH_ENCODING=utf-8",
                );
                Vec::new()
            }
        }
    };
    // As in k8s-sidecar: both or no authentication.
    let authorization = match (username, password) {
        (Some(user), Some(pass)) => {
            let mut credentials = encode(r, "REQ_USERNAME", &user, &user);
            credentials.push(b':');
            credentials.extend(encode(r, "REQ_PASSWORD", &pass, "<redacted>"));
            Some(format!("Basic {}", STANDARD.encode(credentials)))
        }
        _ => None,
    };
    let retries = r.number::<u32>("REQ_RETRY_TOTAL", 5, 0, "a whole number");
    r.number::<u32>("REQ_RETRY_CONNECT", 10, 0, "a whole number");
    r.number::<u32>("REQ_RETRY_READ", 5, 0, "a whole number");
    r.number::<f64>("REQ_RETRY_BACKOFF_FACTOR", 1.1, 0.0, "a number of seconds");
    let timeout = r.number::<f64>("REQ_TIMEOUT", 10.0, 0.001, "a positive number of seconds");
    let skip_tls_verify = r.bool("REQ_SKIP_TLS_VERIFY");
    let timeout = Duration::from_secs_f64(timeout);
    let fetch = Fetch {
        authorization: authorization.clone(),
        retries,
        timeout,
        skip_tls_verify,
        enable_5xx: false,
    };
    let Some(url) = r.get("REQ_URL").map(str::to_string) else {
        return (None, fetch);
    };
    let host = url
        .strip_prefix("http://")
        .or(url.strip_prefix("https://"))
        .and_then(|rest| rest.split(['/', '?', '#']).next());
    if host.is_none_or(str::is_empty) {
        r.invalid("REQ_URL", &url, "expected an http:// or https:// URL with a host");
        return (None, fetch);
    }
    let request = Request {
        url,
        method: method.to_string(),
        // k8s-sidecar sends the payload with POST only.
        payload: payload.filter(|_| method == "POST"),
        authorization,
        retries,
        timeout,
        skip_tls_verify,
    };
    (Some(request), fetch)
}

/// Variables that look like k8s-sidecar's and are not, each with the known
/// name it is closest to. Kubernetes' service variables (`X_SERVICE_HOST`,
/// `X_PORT_80_TCP`, …) are not ours, whatever their prefix.
fn unknown(vars: &BTreeMap<String, String>) -> Vec<Error> {
    vars.keys()
        .filter(|var| OWN_PREFIXES.iter().any(|p| var.starts_with(p)))
        .filter(|var| !KNOWN.contains(&var.as_str()))
        .filter(|var| !var.contains("_SERVICE_") && !var.ends_with("_PORT") && !var.contains("_PORT_"))
        .map(|var| Error::Unknown {
            var: var.clone(),
            hint: KNOWN
                .iter()
                .map(|k| (distance(var, k), *k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| k.to_string()),
        })
        .collect()
}

/// Edit distance between two names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

fn resource_name(entry: &str) -> Option<ResourceName> {
    let kind = |word: &str| match word {
        "configmap" => Some(Kind::ConfigMap),
        "secret" => Some(Kind::Secret),
        _ => None,
    };
    let parts: Vec<&str> = entry.split('/').collect();
    let (namespace, kind, name) = match parts.as_slice() {
        [name] => (None, None, *name),
        [k, name] => (None, Some(kind(k)?), *name),
        [ns, k, name] => (Some(ns.to_string()), Some(kind(k)?), *name),
        _ => return None,
    };
    (!name.is_empty()).then(|| ResourceName {
        namespace,
        kind,
        name: name.to_string(),
    })
}

/// A namespace name: a DNS label.
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn label_value_ok(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && edge(value.chars().next())
            && edge(value.chars().last()))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name that
/// follows the label-value rules and is not empty.
fn label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(dns_label));
    prefix_ok && !name.is_empty() && label_value_ok(name)
}
