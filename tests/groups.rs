//! Groups of templates end to end (DESIGN 2.1, 5.9): the real `kube-template
//! run` binary against the fake API server. A failing group holds back no
//! other, a store change re-renders only the groups that read it, each group
//! runs its own actions (or skips them on the first render), Events and the
//! status ConfigMap keep naming a failing group through another's success,
//! and `--once` renders every group and fails if one did.
//!
//! Every test has an overall deadline and waits on conditions with
//! deadlines; nothing sleeps a fixed time.

mod support;

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::case::{Case, config_map, server_until, within};
use support::fake_api::FakeApiServer;
use support::http::http_get;
use support::sidecar::{Sidecar, WAIT};

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

async fn within_deadline(test: impl Future<Output = ()>) {
    within(TEST_DEADLINE, test).await
}

/// A Secret `default/NAME` whose data is `{k: VALUE}`, or no `k` without one.
fn secret(name: &str, value: Option<&str>) -> Value {
    let data = match value {
        Some(value) => json!({ "k": value }),
        None => json!({ "other": "eA==" }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": data,
    })
}

/// Two groups: `maps` renders the ConfigMaps into maps.txt, `keys` the
/// Secrets' `k` into keys.txt (failing on a Secret without one); each
/// action appends its group's name to actions.log. `extra` goes under
/// `groups:`, `more` at the end.
fn two_groups(extra_maps: &str, extra_keys: &str, more: &str) -> String {
    format!(
        r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
  secrets: {{api_version: v1, kind: Secret}}
templates:
  maps:
    group: maps
    path: maps.txt
    inline: "{{% for o in resources.cms %}}{{{{ o.metadata.name }}}}={{{{ o.data.v }}}}\n{{% endfor %}}"
  keys:
    group: keys
    path: keys.txt
    inline: "{{% for s in resources.secrets %}}{{{{ s.metadata.name }}}}={{{{ s.data.k }}}}\n{{% endfor %}}"
groups:
  maps:
    actions: [{{command: ["sh", "-c", "echo maps >> actions.log"]}}]
{extra_maps}  keys:
    actions: [{{command: ["sh", "-c", "echo keys >> actions.log"]}}]
{extra_keys}render:
  wait: {{min: 10ms, max: 100ms}}
{more}"#
    )
}

/// The value of one series of `/metrics`, 0 when absent.
fn metric(admin: &str, series: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn renders(admin: &str, group: &str, result: &str) -> f64 {
    metric(
        admin,
        &format!("kube_template_renders_total{{group=\"{group}\",result=\"{result}\"}}"),
    )
}

async fn until_renders(sidecar: &Sidecar, admin: &str, group: &str, n: f64) {
    sidecar
        .until(&format!("{n} successful renders of group {group}"), || {
            (renders(admin, group, "success") >= n).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_group_holds_back_neither_the_renders_nor_the_reloads_of_another() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(secret("s1", Some("one")));
        let case = Case::new(&two_groups("", "", ""));
        let sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        sidecar.until_file(&case, "maps.txt", "a=1\n").await;
        sidecar.until_file(&case, "keys.txt", "s1=one\n").await;
        sidecar
            .until("both groups' actions", || (case.action_runs().len() == 2).then_some(()))
            .await;

        // A Secret without `k`: the group `keys` fails, keeps its file, and
        // says so, naming itself.
        server.apply(secret("s2", None));
        let body = sidecar
            .until("the failing group on /readyz?verbose", || {
                let (code, body) = http_get(&admin, "/readyz?verbose");
                (code == 200 && body.contains("group keys: last render failed")).then_some(body)
            })
            .await;
        assert!(body.contains("template `keys`"), "{body}");
        assert!(!body.contains("group maps"), "{body}");
        assert_eq!(case.read("keys.txt").as_deref(), Some("s1=one\n"));

        // The other group renders and reloads on as before.
        server.apply(config_map("a", "2"));
        sidecar.until_file(&case, "maps.txt", "a=2\n").await;
        sidecar
            .until("the reload of maps", || {
                (case.action_runs() == ["keys", "maps", "maps"] || case.action_runs() == ["maps", "keys", "maps"])
                    .then_some(())
            })
            .await;
        let failed = "kube_template_renders_total{group=\"keys\",result=\"failure\",reason=\"template\"}";
        assert!(metric(&admin, failed) >= 1.0);
        assert_eq!(case.read("keys.txt").as_deref(), Some("s1=one\n"));
        let page = http_get(&admin, "/").1;
        assert!(page.contains("<td>keys</td>") && page.contains("failed: "), "{page}");

        // Once it is fixed, the failing group renders, and the problem is gone.
        server.apply(secret("s2", Some("two")));
        sidecar.until_file(&case, "keys.txt", "s1=one\ns2=two\n").await;
        sidecar
            .until("no group problem", || {
                let (_, body) = http_get(&admin, "/readyz?verbose");
                (!body.contains("group keys")).then_some(())
            })
            .await;
    })
    .await;
}

/// The annotations of the status ConfigMap `kube-template-status`.
fn status_annotations(server: &FakeApiServer) -> serde_json::Map<String, Value> {
    server
        .get_object("v1", "ConfigMap", "ops", "kube-template-status")
        .and_then(|o| o["metadata"]["annotations"].as_object().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_the_status_config_map_name_the_failing_group_through_another_groups_success() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        // Out of the watched namespace: the status writes are no ConfigMap
        // of the group `maps`.
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-template-status", "namespace": "ops"}}));
        server.apply(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"containers": [{"name": "sidecar", "image": "kube-template"}]}}),
        );
        server.apply(config_map("a", "1"));
        server.apply(secret("s1", Some("one")));
        let config = two_groups("", "", "status: {config_map: kube-template-status, namespace: ops}\n").replace(
            "cms: {api_version: v1, kind: ConfigMap}",
            "cms: {api_version: v1, kind: ConfigMap, namespaces: [default]}",
        );
        let case = Case::new(&config);
        let kubeconfig = server.kubeconfig_path().as_os_str().to_owned();
        let sidecar = case.spawn_with_env(
            &[std::ffi::OsStr::new("--kubeconfig"), &kubeconfig],
            &[("POD_NAME", "web-0".as_ref()), ("POD_NAMESPACE", "default".as_ref())],
        );
        sidecar.until_file(&case, "keys.txt", "s1=one\n").await;

        server.apply(secret("s2", None));
        let error = |server: &FakeApiServer| {
            status_annotations(server)
                .get("kube-template/last-render-error")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        server_until(&server, &sidecar, "the failing group in the status", |server| {
            error(server).is_some_and(|e| e.starts_with("group keys: template `keys`"))
        })
        .await;
        server_until(&server, &sidecar, "a RenderFailed event naming the group", |server| {
            server.events().iter().any(|e| {
                e["reason"] == "RenderFailed" && e["note"].as_str().is_some_and(|n| n.starts_with("group keys: "))
            })
        })
        .await;

        // A success of the other group leaves the failure in place.
        server.apply(config_map("a", "2"));
        sidecar.until_file(&case, "maps.txt", "a=2\n").await;
        let maps = case.path("maps.txt").display().to_string();
        // sha256 of `a=2\n`.
        server_until(&server, &sidecar, "the render of maps in the status", |server| {
            status_annotations(server)
                .get("kube-template/checksums")
                .and_then(Value::as_str)
                .and_then(|c| serde_json::from_str::<Value>(c).ok())
                .is_some_and(|sums| sums[&maps] == "e7a7672885cd4dbbdbd668c4ce816c7e47e700d56fa73ac5cfdc9e33c99e09c7")
        })
        .await;
        let annotations = status_annotations(&server);
        assert_eq!(annotations["kube-template/last-render-result"], "failure");
        assert!(error(&server).unwrap().starts_with("group keys: "), "{annotations:?}");
        assert!(
            !server.events().iter().any(|e| e["reason"] == "RenderRecovered"),
            "{:#?}",
            server.events()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_change_re_renders_only_the_groups_that_read_it() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(secret("s1", Some("one")));
        // A third group reads `resources` as a whole: every change is its.
        let config = two_groups("", "", "").replace(
            "groups:\n",
            "  everything:\n    group: everything\n    path: everything.txt\n    inline: \"{% for name, store in resources | items %}{{ name }}={{ store | length }}\\n{% endfor %}\"\ngroups:\n  everything: {}\n",
        );
        let case = Case::new(&config);
        let sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        sidecar.until_file(&case, "everything.txt", "cms=1\nsecrets=1\n").await;
        for group in ["maps", "keys", "everything"] {
            until_renders(&sidecar, &admin, group, 1.0).await;
        }

        server.apply(config_map("b", "2"));
        sidecar.until_file(&case, "maps.txt", "a=1\nb=2\n").await;
        sidecar.until_file(&case, "everything.txt", "cms=2\nsecrets=1\n").await;
        server.apply(secret("s2", Some("two")));
        sidecar.until_file(&case, "keys.txt", "s1=one\ns2=two\n").await;
        sidecar.until_file(&case, "everything.txt", "cms=2\nsecrets=2\n").await;
        until_renders(&sidecar, &admin, "everything", 3.0).await;

        assert_eq!(renders(&admin, "maps", "success"), 2.0, "maps rendered for a Secret");
        assert_eq!(renders(&admin, "keys", "success"), 2.0, "keys rendered for a ConfigMap");
        assert_eq!(renders(&admin, "everything", "success"), 3.0);
    })
    .await;
}

/// A ConfigMap `default/NAME` labelled `LABEL: "1"`.
fn labelled(name: &str, label: &str) -> Value {
    let mut object = config_map(name, "1");
    object["metadata"]["labels"] = json!({ label: "1" });
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_sharing_a_watch_re_render_only_the_group_whose_store_keeps_the_object() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        // One watch of ConfigMaps feeds both stores; each keeps only the
        // ConfigMaps with its label (keyed by it, `skip` without).
        let case = Case::new(
            r#"
watched_resources:
  dashboards:
    api_version: v1
    kind: ConfigMap
    index_by: ["metadata.labels.dashboard", "metadata.name"]
    on_missing_key: skip
  alerts:
    api_version: v1
    kind: ConfigMap
    index_by: ["metadata.labels.alert", "metadata.name"]
    on_missing_key: skip
templates:
  dashboards:
    group: dashboards
    path: dashboards.txt
    inline: "{% for o in resources.dashboards %}{{ o.metadata.name }}\n{% endfor %}"
  alerts:
    group: alerts
    path: alerts.txt
    inline: "{% for o in resources.alerts %}{{ o.metadata.name }}\n{% endfor %}"
groups:
  dashboards: {}
  alerts: {}
render:
  wait: {min: 10ms, max: 100ms}
"#,
        );
        let sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        until_renders(&sidecar, &admin, "dashboards", 1.0).await;
        until_renders(&sidecar, &admin, "alerts", 1.0).await;

        server.apply(labelled("nodes", "dashboard"));
        sidecar.until_file(&case, "dashboards.txt", "nodes\n").await;
        server.apply(labelled("node-down", "alert"));
        sidecar.until_file(&case, "alerts.txt", "node-down\n").await;
        until_renders(&sidecar, &admin, "alerts", 2.0).await;

        assert_eq!(
            renders(&admin, "dashboards", "success"),
            2.0,
            "dashboards rendered for an alert"
        );
        assert_eq!(
            renders(&admin, "alerts", "success"),
            2.0,
            "alerts rendered for a dashboard"
        );
        assert_eq!(server.open_watches("configmaps"), 1, "one watch for both stores");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_start_skip_holds_the_first_reload_only() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(secret("s1", Some("one")));
        let case = Case::new(&two_groups("    actions_on_start: skip\n", "", ""));
        let sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        sidecar.until_file(&case, "maps.txt", "a=1\n").await;
        sidecar
            .until("the first reload of keys", || {
                (case.action_runs() == ["keys"]).then_some(())
            })
            .await;
        until_renders(&sidecar, &admin, "maps", 1.0).await;

        server.apply(config_map("a", "2"));
        sidecar.until_file(&case, "maps.txt", "a=2\n").await;
        sidecar
            .until("the reload of maps after a change", || {
                (case.action_runs() == ["keys", "maps"]).then_some(())
            })
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_renders_every_group_and_fails_if_one_did() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(secret("s1", None));
        let case = Case::new(&two_groups("", "", ""));
        let mut sidecar = case.spawn_against(&server, &["--once"]);
        let status = sidecar.exit(WAIT).await;
        assert!(!status.success(), "a failed group exited {status}\n{}", sidecar.log());
        assert_eq!(case.read("maps.txt").as_deref(), Some("a=1\n"));
        assert!(!case.path("keys.txt").exists());
        assert_eq!(case.action_runs(), ["maps"]);
    })
    .await;
}

#[test]
fn check_lists_what_each_group_reads_and_why_it_reads_every_store() {
    let config = two_groups("", "", "").replace(
        "groups:\n",
        "  whole:\n    group: whole\n    path: whole.txt\n    inline: \"{{ resources[name] }}\"\ngroups:\n  whole: {}\n",
    );
    let case = Case::new(&config);
    let output = Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .arg("check")
        .arg("-c")
        .arg(case.path("config.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("  group keys: templates keys; reads secrets\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  group maps: templates maps; reads cms\n"), "{stdout}");
    assert!(
        stdout.contains(
            "  group whole: templates whole; reads all stores (templates.whole.inline uses `resources` other than as `resources.NAME`"
        ),
        "{stdout}"
    );
}

/// Two groups as [`two_groups`], but the action of `maps` holds until the
/// file `release` exists (and skips the first render).
const SLOW_MAPS: &str = r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap}
  secrets: {api_version: v1, kind: Secret}
templates:
  maps:
    group: maps
    path: maps.txt
    inline: "{% for o in resources.cms %}{{ o.metadata.name }}={{ o.data.v }}\n{% endfor %}"
  keys:
    group: keys
    path: keys.txt
    inline: "{% for s in resources.secrets %}{{ s.metadata.name }}={{ s.data.k }}\n{% endfor %}"
groups:
  maps:
    actions_on_start: skip
    actions:
      - command: ["sh", "-c", "touch maps-reloading; while [ ! -f release ]; do sleep 0.05; done"]
        timeout: 1m
  keys:
    actions: [{command: ["sh", "-c", "echo keys >> actions.log"]}]
render:
  wait: {min: 10ms, max: 100ms}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reload_holds_back_its_own_group_only() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(secret("s1", Some("one")));
        let case = Case::new(SLOW_MAPS);
        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "maps.txt", "a=1\n").await;
        sidecar.until_file(&case, "keys.txt", "s1=one\n").await;

        // The reload of `maps` starts and hangs.
        server.apply(config_map("a", "2"));
        sidecar.until_file(&case, "maps.txt", "a=2\n").await;
        sidecar
            .until_holds("the reload of maps to start", || case.read("maps-reloading").is_some())
            .await;

        // `keys` renders and reloads meanwhile; `maps` waits for its own
        // reload before it writes again (no file changes under a reload).
        server.apply(config_map("a", "3"));
        server.apply(secret("s1", Some("two")));
        sidecar.until_file(&case, "keys.txt", "s1=two\n").await;
        sidecar
            .until("the reload of keys", || {
                (case.action_runs() == ["keys", "keys"]).then_some(())
            })
            .await;
        assert_eq!(
            case.read("maps.txt").as_deref(),
            Some("a=2\n"),
            "maps rewritten under its reload"
        );

        case.write("release", "");
        sidecar.until_file(&case, "maps.txt", "a=3\n").await;
    })
    .await;
}
