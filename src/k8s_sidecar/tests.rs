use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::pipeline;
use crate::render::Content;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    Settings::from_env(&vars(pairs), &Flags::default()).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        )
    })
}

fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
    match Settings::from_env(&vars(pairs), &Flags::default()) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The files the built-in template writes for `objects`, by name.
fn files(settings: &Settings, objects: &[Value]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let text = settings.config_yaml(None).unwrap();
    let prepared = pipeline::prepare_text(&text, Path::new("k8s-sidecar"), Path::new(""))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let stores = pipeline::stores_from(&prepared.config, objects);
    let rendered = prepared
        .renderer
        .render_all(&pipeline::snapshot(&stores))
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    match &rendered[0].content {
        Content::Directory(files) => Ok(files.clone()),
        Content::File(_) => unreachable!("the built-in template has a directory output"),
    }
}

fn names(files: &BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    files.keys().map(String::as_str).collect()
}

fn config_map(namespace: &str, name: &str, labels: Value, annotations: Value, data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": namespace, "name": name, "labels": labels, "annotations": annotations},
        "data": data,
    })
}

const BASE: &[(&str, &str)] = &[("LABEL", "grafana_dashboard"), ("FOLDER", "/tmp/dashboards")];

#[test]
fn the_grafana_charts_dashboard_environment_is_taken_as_it_is() {
    let s = settings(&[
        ("METHOD", "WATCH"),
        ("LABEL", "grafana_dashboard"),
        ("FOLDER", "/tmp/dashboards"),
        ("RESOURCE", "both"),
        ("REQ_USERNAME", "admin"),
        ("REQ_PASSWORD", "secret"),
        (
            "REQ_URL",
            "http://localhost:3000/api/admin/provisioning/dashboards/reload",
        ),
        ("REQ_METHOD", "POST"),
        // Kubernetes' service variables share prefixes with k8s-sidecar's.
        ("REQ_SERVICE_HOST", "10.0.0.1"),
        ("LOG_PORT_80_TCP", "tcp://10.0.0.2:80"),
    ]);
    assert_eq!(s.method, Method::Watch);
    assert_eq!(s.kinds, [Kind::ConfigMap, Kind::Secret]);
    assert_eq!(s.namespaces, Namespaces::Own);
    assert_eq!(s.health_listen, "0.0.0.0:8080");
    assert!(s.log_json, "k8s-sidecar logs JSON by default");
    let request = s.request.as_ref().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.retries, 5);
    assert_eq!(request.timeout, Duration::from_secs(10));
    assert_eq!(request.authorization.as_deref(), Some("Basic YWRtaW46c2VjcmV0"));
    assert_eq!(request.payload, None);
}

#[test]
fn every_problem_is_reported_at_once_naming_its_variable() {
    let errors = errors(&[
        ("METHOD", "POLL"),
        ("DEFAULT_FILE_MODE", "0x644"),
        ("NAMESPACE", "monitoring, Bad_NS"),
        ("REQ_METOD", "POST"),
        ("HEALTH_PORT", "80800"),
        ("UNIQUE_FILENAMES", "yes"),
        ("FOLDER", "//"),
    ]);
    let text = errors.join("\n");
    for expected in [
        "LABEL is not set",
        "FOLDER=\"//\": the root directory cannot be the folder",
        "METHOD=\"POLL\": expected one of WATCH, LIST, SLEEP",
        "DEFAULT_FILE_MODE=\"0x644\"",
        "\"Bad_NS\" is not a namespace name",
        "REQ_METOD is not a k8s-sidecar variable (did you mean REQ_METHOD?)",
        "HEALTH_PORT=\"80800\": expected a port number",
        "UNIQUE_FILENAMES=\"yes\": expected true or false",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(errors.len(), 8, "{text}");
}

#[test]
fn what_this_mode_cannot_do_is_refused_by_name() {
    let mut env = BASE.to_vec();
    env.extend([("LOG_CONFIG", "/etc/log.yaml")]);
    let text = errors(&env).join("\n");
    assert!(text.contains("LOG_CONFIG is not supported"), "{text}");
}

#[test]
fn a_password_never_appears_in_an_error() {
    let mut env = BASE.to_vec();
    env.extend([
        ("REQ_URL", "http://localhost:3000/r"),
        ("REQ_USERNAME", "admin"),
        ("REQ_PASSWORD", "s€cret"),
    ]);
    let text = errors(&env).join("\n");
    assert!(text.contains("REQ_PASSWORD=\"<redacted>\""), "{text}");
    assert!(!text.contains("s€cret"), "{text}");
    env.push(("REQ_BASIC_AUTH_ENCODING", "utf-8"));
    let s = settings(&env);
    let expected = format!("Basic {}", STANDARD.encode("admin:s€cret"));
    assert_eq!(s.request.unwrap().authorization.unwrap(), expected);
}

#[test]
fn credentials_from_files_win_over_variables() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user"), "from-file\n").unwrap();
    let mut env = BASE.to_vec();
    let user_file = dir.path().join("user").display().to_string();
    env.extend([
        ("REQ_URL", "http://localhost:3000/r"),
        ("REQ_USERNAME", "from-env"),
        ("REQ_USERNAME_FILE", user_file.as_str()),
        ("REQ_PASSWORD", "pw"),
    ]);
    let s = settings(&env);
    let expected = format!("Basic {}", STANDARD.encode("from-file:pw"));
    assert_eq!(s.request.unwrap().authorization.unwrap(), expected);
    let flags = Flags {
        req_password_file: Some(dir.path().join("missing")),
        ..Flags::default()
    };
    let text = Settings::from_env(&vars(&env), &flags).unwrap_err()[0].to_string();
    assert!(text.starts_with("--req-password-file: cannot read"), "{text}");
}

#[test]
fn a_payload_is_posted_as_json_and_text_that_is_not_json_as_a_json_string() {
    let mut env = BASE.to_vec();
    env.extend([
        ("REQ_URL", "http://localhost/r"),
        ("REQ_METHOD", "post"),
        ("REQ_PAYLOAD", "{\"a\": 1}"),
    ]);
    assert_eq!(settings(&env).request.unwrap().payload.as_deref(), Some("{\"a\":1}"));
    env.pop();
    env.push(("REQ_PAYLOAD", "reload now"));
    assert_eq!(
        settings(&env).request.unwrap().payload.as_deref(),
        Some("\"reload now\"")
    );
}

#[test]
fn data_binary_data_and_secret_data_become_files_as_k8s_sidecar_writes_them() {
    let mut env = BASE.to_vec();
    env.push(("RESOURCE", "both"));
    let s = settings(&env);
    let labels = json!({"grafana_dashboard": "1"});
    let objects = [
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": "monitoring", "name": "a", "labels": labels},
            "data": {"a.json": "{}"},
            "binaryData": {"logo.png": STANDARD.encode([0x89, b'P', b'N', b'G', 0xff])},
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"namespace": "monitoring", "name": "s", "labels": labels},
            "data": {"ds.yaml": STANDARD.encode("url: x\n")},
        }),
        config_map(
            "monitoring",
            "unlabelled",
            json!({}),
            json!({}),
            json!({"no.json": "x"}),
        ),
    ];
    let files = files(&s, &objects).unwrap();
    assert_eq!(names(&files), ["a.json", "ds.yaml", "logo.png"]);
    assert_eq!(files["logo.png"], [0x89, b'P', b'N', b'G', 0xff]);
    assert_eq!(files["ds.yaml"], b"url: x\n");
}

#[test]
fn unique_filenames_carry_namespace_kind_and_name() {
    let mut env = BASE.to_vec();
    env.push(("UNIQUE_FILENAMES", "TRUE"));
    let labels = json!({"grafana_dashboard": "1"});
    let objects = [
        config_map("monitoring", "one", labels.clone(), json!({}), json!({"d.json": "1"})),
        config_map("team", "two", labels, json!({}), json!({"d.json": "2"})),
    ];
    let files = files(&settings(&env), &objects).unwrap();
    assert_eq!(
        names(&files),
        [
            "namespace_monitoring.configmap_one.d.json",
            "namespace_team.configmap_two.d.json"
        ]
    );
}

#[test]
fn the_folder_annotation_places_files_below_folder() {
    let labels = json!({"grafana_dashboard": "1"});
    let at = |dir: &str| json!({"k8s-sidecar-target-directory": dir});
    let objects = [
        config_map(
            "m",
            "relative",
            labels.clone(),
            at("team-a/./x/"),
            json!({"a.json": "a"}),
        ),
        config_map(
            "m",
            "absolute",
            labels.clone(),
            at("/tmp/dashboards/team-b"),
            json!({"b.json": "b"}),
        ),
        config_map("m", "itself", labels, at("/tmp/dashboards"), json!({"c.json": "c"})),
    ];
    let files = files(&settings(BASE), &objects).unwrap();
    assert_eq!(names(&files), ["c.json", "team-a/x/a.json", "team-b/b.json"]);
}

#[test]
fn a_folder_outside_folder_fails_the_render_naming_it() {
    let labels = json!({"grafana_dashboard": "1"});
    for dir in ["/etc/elsewhere", "../up"] {
        let annotations = json!({"k8s-sidecar-target-directory": dir});
        let objects = [config_map(
            "m",
            "x",
            labels.clone(),
            annotations,
            json!({"a.json": "a"}),
        )];
        let error = files(&settings(BASE), &objects).unwrap_err();
        assert!(error.contains(&format!("{dir}/a.json")), "{error}");
    }
}

#[test]
fn resource_name_selects_objects_by_name_whatever_their_labels() {
    let mut env = BASE.to_vec();
    env.extend([
        ("NAMESPACE", "monitoring"),
        ("RESOURCE", "both"),
        ("RESOURCE_NAME", "one,secret/two,other/configmap/three"),
    ]);
    let s = settings(&env);
    let objects = [
        config_map("monitoring", "one", json!({}), json!({}), json!({"one": "1"})),
        config_map("monitoring", "two", json!({}), json!({}), json!({"two-cm": "2"})),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "monitoring", "name": "two"}, "data": {"two-secret": "Mg=="}}),
        config_map("monitoring", "three", json!({}), json!({}), json!({"three": "3"})),
    ];
    assert_eq!(names(&files(&s, &objects).unwrap()), ["one", "two-secret"]);
}

#[test]
fn the_label_selector_and_namespaces_follow_label_value_and_namespace() {
    let mut env = BASE.to_vec();
    env.extend([("LABEL_VALUE", "1"), ("NAMESPACE", "a,b"), ("DEFAULT_FILE_MODE", "440")]);
    let text = settings(&env).config_yaml(None).unwrap();
    let prepared = pipeline::prepare_text(&text, Path::new("k8s-sidecar"), Path::new("")).unwrap();
    let configmaps = &prepared.config.watched_resources["configmaps"].spec;
    assert_eq!(configmaps.label_selector, "grafana_dashboard=1");
    assert_eq!(configmaps.namespaces, ["a", "b"]);
    assert_eq!(prepared.config.templates["files"].mode, 0o440);
    assert!(!prepared.config.watched_resources.contains_key("secrets"));
    let own = settings(BASE).config_yaml(Some("monitoring")).unwrap();
    let prepared = pipeline::prepare_text(&own, Path::new("k8s-sidecar"), Path::new("")).unwrap();
    assert_eq!(
        prepared.config.watched_resources["configmaps"].spec.namespaces,
        ["monitoring"]
    );
}

#[test]
fn the_printed_config_leaves_the_credentials_out() {
    let mut env = BASE.to_vec();
    env.extend([
        ("REQ_URL", "http://localhost/r"),
        ("REQ_USERNAME", "admin"),
        ("REQ_PASSWORD", "hunter2"),
    ]);
    let s = settings(&env);
    let credentials = STANDARD.encode("admin:hunter2");
    assert!(s.config_yaml(None).unwrap().contains(&credentials));
    let printed = s.printed_config_yaml(None).unwrap();
    assert!(
        !printed.contains(&credentials) && !printed.contains("hunter2"),
        "{printed}"
    );
    assert!(
        printed.contains("Basic <from REQ_USERNAME and REQ_PASSWORD>"),
        "{printed}"
    );
}

/// A local HTTP server answering `body` to every request, on a thread that
/// ends after `requests` of them.
fn answering(body: &'static str, requests: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    url
}

#[test]
fn a_url_key_is_written_without_its_suffix_and_holds_what_the_url_answers() {
    let url = answering("fetched", 3);
    let s = settings(&[BASE, &[("RESOURCE", "both"), ("UNIQUE_FILENAMES", "true")]].concat());
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"namespace": "ns", "name": "s", "labels": {"grafana_dashboard": "1"}},
        "data": {"s.json.url": STANDARD.encode(format!("{url}/s"))},
    });
    let cm = config_map(
        "ns",
        "c",
        json!({"grafana_dashboard": "1"}),
        json!({}),
        json!({"c.json.url": format!("{url}/c"), "url": "plain"}),
    );
    let files = files(&s, &[cm, secret]).unwrap();
    assert_eq!(
        names(&files),
        [
            "namespace_ns.configmap_c.c.json",
            "namespace_ns.configmap_c.url",
            "namespace_ns.secret_s.s.json"
        ]
    );
    assert_eq!(files["namespace_ns.configmap_c.c.json"], b"fetched");
    assert_eq!(files["namespace_ns.secret_s.s.json"], b"fetched");
}

#[test]
fn a_url_that_cannot_be_fetched_leaves_out_its_file_only() {
    // Port 1 on the loopback refuses connections.
    let s = settings(&[BASE, &[("REQ_RETRY_TOTAL", "0")]].concat());
    let cm = config_map(
        "ns",
        "c",
        json!({"grafana_dashboard": "1"}),
        json!({}),
        json!({"c.json.url": "http://127.0.0.1:1/c", "d.json": "D"}),
    );
    let files = files(&s, &[cm]).unwrap();
    assert_eq!(names(&files), ["d.json"]);
}
