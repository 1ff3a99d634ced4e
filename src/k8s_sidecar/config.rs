//! The config made from [`Settings`]: YAML text for the ordinary config
//! parser, so this mode depends on the config's documented keys only.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Error, Kind, Namespaces, Result, Settings};

/// The built-in template's body; [`template`] puts the settings before it.
const FILES: &str = include_str!("files.j2");

/// How long `SCRIPT` may run (k8s-sidecar waits without a limit).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// With `printed`, credentials are left out (the text is for people to read).
pub(super) fn yaml(settings: &Settings, own_namespace: Option<&str>, printed: bool) -> Result<String> {
    let namespaces: Vec<String> = match (&settings.namespaces, own_namespace) {
        (Namespaces::Only(list), _) => list.clone(),
        (Namespaces::Own, Some(own)) => vec![own.to_string()],
        (Namespaces::Own, None) | (Namespaces::All, _) => Vec::new(),
    };
    // k8s-sidecar reads objects named in RESOURCE_NAME whatever their labels.
    let selector = match (&settings.label_value, settings.resource_names.is_empty()) {
        (_, false) => String::new(),
        (Some(value), true) => format!("{}={value}", settings.label),
        (None, true) => settings.label.clone(),
    };
    let mut watched = serde_json::Map::new();
    for kind in &settings.kinds {
        let (store, kind_name) = store(*kind);
        watched.insert(
            store.into(),
            json!({
                "api_version": "v1",
                "kind": kind_name,
                "namespaces": namespaces,
                "label_selector": selector,
            }),
        );
    }
    let mut files = json!({ "inline": template(settings), "directory": settings.folder });
    if let Some(mode) = &settings.file_mode {
        files["mode"] = mode.clone().into();
    }
    let mut actions = Vec::new();
    let mut longest = Duration::ZERO;
    if let Some(script) = &settings.script {
        // As k8s-sidecar's README says: run as is when executable, else by sh.
        actions.push(json!({
            "command": ["/bin/sh", "-c", "if [ -x \"$0\" ]; then exec \"$0\"; else exec /bin/sh \"$0\"; fi", script],
            "timeout": millis(SCRIPT_TIMEOUT),
        }));
        longest = SCRIPT_TIMEOUT;
    }
    if let Some(request) = &settings.request {
        let mut http = json!({
            "url": request.url,
            "method": request.method,
            "timeout": millis(request.timeout),
            "retries": request.retries,
            "insecure_skip_tls_verify": request.skip_tls_verify,
        });
        let mut headers = serde_json::Map::new();
        if let Some(authorization) = &request.authorization {
            let value = if printed {
                "Basic <from REQ_USERNAME and REQ_PASSWORD>"
            } else {
                authorization
            };
            headers.insert("Authorization".into(), value.into());
        }
        if let Some(payload) = &request.payload {
            headers.insert("Content-Type".into(), "application/json".into());
            http["body"] = payload.clone().into();
        }
        if !headers.is_empty() {
            http["headers"] = Value::Object(headers);
        }
        actions.push(json!({ "http": http }));
        longest = longest.max(request.timeout * (request.retries + 1));
    }
    let fetch = &settings.fetch;
    let mut fetch_settings = json!({
        "timeout": millis(fetch.timeout),
        "retries": fetch.retries,
        "insecure_skip_tls_verify": fetch.skip_tls_verify,
        "server_error_bodies": fetch.enable_5xx,
    });
    if let Some(authorization) = &fetch.authorization {
        let value = if printed {
            "Basic <from REQ_USERNAME and REQ_PASSWORD>"
        } else {
            authorization
        };
        fetch_settings["headers"] = json!({ "Authorization": value });
    }
    let config = json!({
        "watched_resources": watched,
        "render": { "fetch": fetch_settings },
        "templates": { "files": files },
        "actions": actions,
        "actions_on_start": if settings.skip_init { "skip" } else { "run" },
        "admin": {
            "listen": settings.health_listen,
            "stall_timeout": millis((longest + Duration::from_secs(60)).max(Duration::from_secs(300))),
        },
    });
    serde_saphyr::to_string(&config).map_err(|e| Error::Yaml(e.to_string()))
}

/// The store's name (`resources.<name>` in the template) and the kind.
fn store(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::ConfigMap => ("configmaps", "ConfigMap"),
        Kind::Secret => ("secrets", "Secret"),
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The built-in template, its settings set first. JSON literals are valid
/// minijinja expressions (strings, lists, booleans).
fn template(settings: &Settings) -> String {
    let names: Vec<Value> = settings
        .resource_names
        .iter()
        .map(|n| {
            json!([
                n.namespace.clone().unwrap_or_default(),
                n.kind.map(Kind::word).unwrap_or_default(),
                n.name
            ])
        })
        .collect();
    let sources: Vec<String> = settings
        .kinds
        .iter()
        .map(|k| format!("[{}, resources.{}]", Value::from(k.word()), store(*k).0))
        .collect();
    format!(
        "{{%- set folder = {} %}}\n{{%- set annotation = {} %}}\n{{%- set unique = {} %}}\n{{%- set names = {} %}}\n{{%- set sources = [{}] %}}\n{FILES}",
        Value::from(settings.folder.as_str()),
        Value::from(settings.folder_annotation.as_str()),
        settings.unique_filenames,
        Value::Array(names),
        sources.join(", "),
    )
}
