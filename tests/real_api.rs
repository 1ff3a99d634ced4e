//! The real-server suite: the `kube-template` binary against a real
//! kube-apiserver 1.20 on etcd (tests/support/real_api.rs), for what our fake
//! API server cannot prove: real validation (Events, RBAC), real optimistic
//! concurrency, the real watch cache and compaction, CRDs installed while
//! running, an API server restart.
//!
//! Without the binaries every test says it was skipped and passes; get them
//! with `scripts/kube-apiserver.sh`. With `KUBE_TEMPLATE_REAL_API=1` (as
//! `.ci/run` sets) a missing binary fails instead.
//!
//! Every test works in a namespace of its own and waits on conditions with
//! deadlines. Tests that restart the API server hold it alone.

mod support;

use support::{files, http as http_get, real_api as real};

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use real::{RealApi, Who, until};
use serde_json::{Value, json};
use support::sidecar::Sidecar;
use tokio::time::{Instant, timeout};

/// The binary under test: `KUBE_TEMPLATE_BIN` (a release build, say), else
/// the one Cargo built for these tests.
fn binary() -> PathBuf {
    std::env::var_os("KUBE_TEMPLATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kube-template")))
}

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(150);

/// Admin server on a free port.
const ADMIN: &str = "admin: {listen: \"127.0.0.1:0\"}\n";

async fn within_deadline(test: impl Future<Output = ()>) {
    timeout(TEST_DEADLINE, test)
        .await
        .expect("test did not finish before its deadline");
}

/// A scratch directory with a config; the sidecar runs in it.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    /// Writes `config` (the admin section is added) as `config.yaml`.
    fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::write(dir.path().join("config.yaml"), format!("{config}{ADMIN}")).unwrap();
        Case { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    /// `kube-template run -c config.yaml --kubeconfig (who) ARGS…`, logging
    /// to `sidecar.log` at the default level unless `env` says otherwise.
    fn spawn(&self, api: &RealApi, who: Who, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let log = self.path("sidecar.log");
        let child = Command::new(binary())
            .arg("run")
            .arg("-c")
            .arg(self.path("config.yaml"))
            .arg("--kubeconfig")
            .arg(api.kubeconfig(who))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_UID")
            .envs(env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        Sidecar { child, log }
    }

    /// `kube-template render -c config.yaml --from FILE --out DIR`: the
    /// offline render of `manifests`, as the files under `out/`.
    fn render_offline(&self, manifests: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let file = self.path("dump.json");
        fs::write(&file, manifests).unwrap();
        let out = self.path("offline");
        let _ = fs::remove_dir_all(&out);
        let output = Command::new(binary())
            .arg("render")
            .arg("-c")
            .arg(self.path("config.yaml"))
            .arg("--from")
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .current_dir(self.dir.path())
            .output()
            .expect("render runs");
        assert!(
            output.status.success(),
            "render --from failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        files::tree(&out.join("out"))
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http_get::http_get(addr, path)
}

fn gvk_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn config_maps() -> ApiResource {
    gvk_resource("", "v1", "ConfigMap", "configmaps")
}

fn secrets() -> ApiResource {
    gvk_resource("", "v1", "Secret", "secrets")
}

/// Creates (or replaces, when it exists) `object` in `namespace` as admin.
async fn apply(client: &kube::Client, namespace: &str, ar: &ApiResource, object: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let patch = PatchParams::apply("tests").force();
    api.patch(&name, &patch, &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

async fn delete(client: &kube::Client, namespace: &str, ar: &ApiResource, name: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
}

fn config_map(name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": data})
}

/// A config watching ConfigMaps of `namespace` into `cms`, listed as `name=v`.
fn config_maps_config(namespace: &str) -> String {
    format!(
        "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{namespace}], \
         label_selector: \"app=web\"}}\ntemplates:\n  t:\n    inline: \"\
         {{% for c in resources.cms %}}{{{{ c.metadata.name }}}}={{{{ c.data.v }}}}\\n{{% endfor %}}\"\n    \
         path: out.txt\nrender: {{wait: {{min: 0s, max: 1s}}}}\n"
    )
}

// --- Defect a: streaming lists against a server without WatchList ---

#[tokio::test]
async fn streaming_lists_fall_back_to_paged_lists_when_the_server_lacks_watchlist() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("streaming-fallback").await;
        let client = api.client(Who::Admin).await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("a", json!({"app": "web"}), json!({"v": "1"})),
        )
        .await;
        let case = Case::new(&config_maps_config(&ns));
        let mut sidecar = case.spawn(api, Who::Admin, &["--once", "--streaming-lists"], &[]);
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "run --once failed\n{}", sidecar.log());
        assert_eq!(case.read("out.txt").as_deref(), Some("a=1\n"));
        // One warning about the fallback, and no other but the one about TLS.
        let warnings: Vec<String> = sidecar
            .log_lines("WARN")
            .into_iter()
            .filter(|l| !l.contains("insecure-skip-tls-verify"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning, about the fallback:\n{}", sidecar.log());
        assert!(
            warnings[0].contains("streaming lists") && warnings[0].contains("paged lists"),
            "{}",
            warnings[0]
        );
    })
    .await;
}

/// The same against the fake API server made to answer like 1.20, so that the
/// fallback is covered where the real server is not at hand.
#[tokio::test]
async fn streaming_lists_fall_back_on_a_fake_server_without_watchlist() {
    within_deadline(async {
        let server = support::fake_api::FakeApiServer::start().await;
        server.without_watch_list();
        server
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": "default", "labels": {"app": "web"}}, "data": {"v": "1"}}))
            .unwrap();
        let case = Case::new(&config_maps_config("default"));
        let log = case.path("sidecar.log");
        let child = Command::new(binary())
            .args(["run", "--once", "--streaming-lists", "-c"])
            .arg(case.path("config.yaml"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .current_dir(case.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut sidecar = Sidecar { child, log };
        let status = sidecar.exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{}", sidecar.log());
        assert_eq!(case.read("out.txt").as_deref(), Some("a=1\n"));
        assert_eq!(sidecar.log_lines("using paged lists").len(), 1, "{}", sidecar.log());
    })
    .await;
}

// --- Defect b: `--once` and lasting permanent errors ---

#[tokio::test]
async fn once_gives_up_after_the_sync_timeout_on_a_lasting_forbidden_list() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        // The user has no permissions at all: listing ConfigMaps is forbidden.
        let ns = api.namespace("once-denied").await;
        let case = Case::new(&config_maps_config(&ns));
        let started = Instant::now();
        let mut sidecar = case.spawn(api, Who::User, &["--once", "--sync-timeout", "3s"], &[]);
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "gave up before the timeout"
        );
        let errors = sidecar.log_lines("error:");
        assert_eq!(errors.len(), 1, "one error line:\n{}", sidecar.log());
        for part in ["configmaps", "list", "forbidden", &ns] {
            assert!(errors[0].contains(part), "the error names {part:?}: {}", errors[0]);
        }
        assert!(case.read("out.txt").is_none(), "nothing is rendered");
    })
    .await;
}

/// Transient errors get the same timeout: here, nothing listens at the
/// server's address (no real server needed).
#[tokio::test]
async fn once_gives_up_after_the_sync_timeout_when_the_api_server_cannot_be_reached() {
    within_deadline(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let case = Case::new(&config_maps_config("web"));
        let kubeconfig = case.path("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
            ),
        )
        .unwrap();
        let log = case.path("sidecar.log");
        let child = Command::new(binary())
            .args(["run", "--once", "--sync-timeout", "2s", "-c"])
            .arg(case.path("config.yaml"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut sidecar = Sidecar { child, log };
        let status = sidecar.exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        let errors = sidecar.log_lines("error:");
        assert_eq!(errors.len(), 1, "{}", sidecar.log());
        assert!(
            errors[0].contains("cannot reach the API server") && errors[0].contains(&format!("127.0.0.1:{port}")),
            "{}",
            errors[0]
        );
        assert_eq!(sidecar.log_lines("WARN").len(), 1, "said once:\n{}", sidecar.log());
    })
    .await;
}

#[tokio::test]
async fn live_run_keeps_retrying_a_forbidden_list_and_readyz_names_the_cause() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("live-denied").await;
        let case = Case::new(&config_maps_config(&ns));
        let mut sidecar = case.spawn(api, Who::User, &[], &[]);
        let admin = sidecar.admin().await;
        let body = until(
            "/readyz to name the forbidden list",
            || sidecar.log(),
            async || {
                let (code, body) = get(&admin, "/readyz");
                (code == 503 && body.contains("forbidden")).then_some(body)
            },
        )
        .await;
        assert!(body.contains("configmaps") && body.contains("list"), "{body}");
        // A live run has no sync timeout: it goes on retrying.
        until(
            "three restarts of the watch",
            || sidecar.log(),
            async || (watch_restarts(&admin).iter().all(|n| *n >= 3.0)).then_some(()),
        )
        .await;
        assert!(sidecar.is_running(), "a live run keeps running\n{}", sidecar.log());
    })
    .await;
}

/// `kube_template_watch_restarts_total` of every watch that has restarted.
fn watch_restarts(admin: &str) -> Vec<f64> {
    let (_, metrics) = get(admin, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("kube_template_watch_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

// --- Test 9 and defect c: CRDs installed before and after the start ---

fn crds() -> ApiResource {
    gvk_resource(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    )
}

/// Installs a namespaced kind `kind` in `group` (version v1, any fields) and
/// waits until objects of it can be created.
async fn install_crd(client: &kube::Client, group: &str, kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    });
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &crds());
    api.create(&PostParams::default(), &serde_json::from_value(crd).unwrap())
        .await
        .unwrap_or_else(|e| panic!("create CRD {plural}.{group}: {e}"));
    gvk_resource(group, "v1", kind, &plural)
}

/// Creates `name` of a custom kind, retrying while the new CRD is not
/// established yet.
async fn create_custom(client: &kube::Client, namespace: &str, ar: &ApiResource, name: &str) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name}, "spec": {"size": 1},
    }))
    .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    until(&format!("{} {name} to be created", ar.kind), String::new, async || {
        api.create(&PostParams::default(), &object).await.ok()
    })
    .await;
}

#[tokio::test]
async fn crds_installed_before_and_after_the_start_are_both_watched() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("crds").await;
        let group = format!("{ns}.example.com");
        let client = api.client(Who::Admin).await;
        let widgets = install_crd(&client, &group, "Widget").await;
        create_custom(&client, &ns, &widgets, "w1").await;
        let case = Case::new(&format!(
            "watched_resources:\n  widgets: {{api_version: {group}/v1, kind: Widget, namespaces: [{ns}]}}\n  \
             gadgets: {{api_version: {group}/v1, kind: Gadget, namespaces: [{ns}]}}\ntemplates:\n  t:\n    \
             inline: \"widgets={{{{ resources.widgets | length }}}} gadgets={{{{ resources.gadgets | length }}}}\\n\"\n    \
             path: out.txt\nrender: {{wait: {{min: 0s, max: 1s}}}}\n"
        ));
        let mut sidecar = case.spawn(api, Who::Admin, &[], &[]);
        let admin = sidecar.admin().await;
        // Not served yet: running, not ready, and both the log and /readyz say which kind.
        let body = until(
            "/readyz to name the kind not served",
            || sidecar.log(),
            async || {
                let (code, body) = get(&admin, "/readyz");
                (code == 503 && body.contains("Gadget")).then_some(body)
            },
        )
        .await;
        assert!(body.contains(&format!("{group}/v1")), "{body}");
        let warned = sidecar.until_log("kind not served").await;
        assert!(warned.contains("Gadget"), "{warned}");
        assert!(sidecar.is_running(), "{}", sidecar.log());
        assert!(case.read("out.txt").is_none(), "no render before every watch listed");

        let gadgets = install_crd(&client, &group, "Gadget").await;
        create_custom(&client, &ns, &gadgets, "g1").await;
        until(
            "the render of both kinds",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("widgets=1 gadgets=1\n")).then_some(()),
        )
        .await;
        until(
            "/readyz 200",
            || sidecar.log(),
            async || (get(&admin, "/readyz").0 == 200).then_some(()),
        )
        .await;
    })
    .await;
}

// --- Defect d: undefined values name the expression everywhere ---

/// Events in `namespace` (events.k8s.io/v1) as JSON.
async fn events(client: &kube::Client, namespace: &str) -> Vec<Value> {
    let ar = gvk_resource("events.k8s.io", "v1", "Event", "events");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// A pod for Events to be about (nothing runs it), and its uid.
async fn pod(client: &kube::Client, namespace: &str, name: &str) -> String {
    let ar = gvk_resource("", "v1", "Pod", "pods");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]}});
    let created = api
        .create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .expect("create pod");
    created.metadata.uid.expect("a uid")
}

/// The annotations of ConfigMap `name`.
async fn annotations(client: &kube::Client, namespace: &str, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &config_maps());
    let cm = api.get(name).await.expect("get status ConfigMap");
    serde_json::to_value(cm.metadata.annotations.unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn undefined_value_errors_name_the_template_line_and_expression_everywhere() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("undefined").await;
        let client = api.client(Who::Admin).await;
        apply(&client, &ns, &config_maps(), config_map("a", json!({"app": "web"}), json!({"v": "1"}))).await;
        apply(&client, &ns, &config_maps(), config_map("status", json!({}), json!({}))).await;
        let uid = pod(&client, &ns, "web-0").await;
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{ns}], label_selector: \"app=web\"}}\n\
             templates:\n  t:\n    inline: |\n      header\n      {{% for c in resources.cms %}}{{{{ c.data.port }}}}{{% endfor %}}\n    \
             path: out.txt\nstatus: {{config_map: status}}\n"
        ));
        let env = [("POD_NAME", "web-0"), ("POD_NAMESPACE", ns.as_str()), ("POD_UID", uid.as_str())];
        let sidecar = case.spawn(api, Who::Admin, &[], &env);
        let admin = sidecar.admin().await;
        let expected = ["`t`", "line 2", "`c.data.port` is undefined"];
        let names_it = |text: &str| expected.iter().all(|part| text.contains(part));
        let line = sidecar.until_log("render failed").await;
        let logged = line.replace("template=t ", "template `t` ");
        assert!(names_it(&logged), "the log names template, line and expression: {line}");
        let (_, body) = get(&admin, "/readyz?verbose");
        assert!(names_it(&body), "/readyz names template, line and expression: {body}");
        let note = until(
            "a RenderFailed Event",
            || sidecar.log(),
            async || {
                events(&client, &ns)
                    .await
                    .into_iter()
                    .find(|e| e["reason"] == "RenderFailed")
                    .map(|e| e["note"].as_str().unwrap_or_default().to_string())
            },
        )
        .await;
        assert!(names_it(&note), "the Event names template, line and expression: {note}");
        let error = until(
            "the status ConfigMap's error",
            || sidecar.log(),
            async || {
                annotations(&client, &ns, "status").await["kube-template/last-render-error"]
                    .as_str()
                    .map(str::to_owned)
            },
        )
        .await;
        assert!(names_it(&error), "the status ConfigMap names template, line and expression: {error}");
    })
    .await;
}

// --- Defect e: kube's own log lines ---

#[tokio::test]
async fn log_lines_name_the_watch_and_say_each_thing_once() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        // Forbidden for the user: the watch fails again and again.
        let ns = api.namespace("log-lines").await;
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{ns}]}}\n  \
             secrets: {{api_version: v1, kind: Secret, namespaces: [{ns}]}}\n\
             templates:\n  t: {{inline: \"x\", path: out.txt}}\n"
        ));
        let sidecar = case.spawn(api, Who::User, &[], &[]);
        let admin = sidecar.admin().await;
        until(
            "three restarts of each watch",
            || sidecar.log(),
            async || {
                let restarts = watch_restarts(&admin);
                (restarts.len() == 2 && restarts.iter().all(|n| *n >= 3.0)).then_some(())
            },
        )
        .await;
        let log = sidecar.log();
        for theirs in [
            "Server cert bypassed",
            "watch list error",
            "failed with error",
            "eof in poll",
        ] {
            assert!(
                !log.contains(theirs),
                "kube's own line {theirs:?} is in the log:\n{log}"
            );
        }
        let insecure = sidecar.log_lines("insecure-skip-tls-verify");
        assert_eq!(insecure.len(), 1, "said once:\n{log}");
        assert!(insecure[0].contains("WARN"), "{}", insecure[0]);
        for kind in ["ConfigMap", "Secret"] {
            let failed: Vec<String> = sidecar
                .log_lines("watch failed")
                .into_iter()
                .filter(|l| l.contains(&format!("watch=\"v1/{kind}")))
                .collect();
            assert_eq!(failed.len(), 1, "a lasting failure is said once per watch:\n{log}");
            assert!(
                failed[0].contains("forbidden") && failed[0].contains(&ns),
                "{}",
                failed[0]
            );
        }
    })
    .await;
}

// --- Tests 1 and 2: live renders equal the offline render of a dump ---

fn secret(name: &str, value: &str) -> Value {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(value);
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": {"k": data}})
}

/// ConfigMaps selected by `app=web`, indexed by their `tier` label, whole
/// objects as JSON in one file and one file each in a directory; Secrets in
/// an on-demand store.
fn mirror_config(namespace: &str) -> String {
    format!(
        r#"watched_resources:
  cms:
    api_version: v1
    kind: ConfigMap
    namespaces: [{namespace}]
    label_selector: "app=web"
    index_by: ["metadata.labels.tier", "metadata.name"]
  secrets:
    api_version: v1
    kind: Secret
    namespaces: [{namespace}]
    store: on-demand
templates:
  all:
    inline: "{{% for c in resources.cms %}}{{{{ c | tojson }}}}\n{{% endfor %}}{{% for s in resources.secrets %}}{{{{ s.metadata.name }}}}={{{{ s.data.k | b64decode }}}}\n{{% endfor %}}"
    path: out/all.txt
  each:
    inline: "{{% for k in resources.cms.keys() %}}{{{{ file(k[0] ~ '-' ~ k[1], resources.cms.get_one(k[0], k[1]).data | tojson) }}}}{{% endfor %}}"
    directory: out/each
render: {{wait: {{min: 0s, max: 1s}}}}
"#
    )
}

fn kinds() -> [ApiResource; 2] {
    [config_maps(), secrets()]
}

#[tokio::test]
async fn initial_sync_renders_what_render_from_renders_of_the_dumped_objects() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("initial-sync").await;
        let client = api.client(Who::Admin).await;
        for (name, tier, app) in [
            ("c1", "a", "web"),
            ("c2", "b", "web"),
            ("c3", "a", "web"),
            ("other", "a", "db"),
        ] {
            let object = config_map(name, json!({"app": app, "tier": tier}), json!({"v": name, "n": "1"}));
            apply(&client, &ns, &config_maps(), object).await;
        }
        for (name, value) in [("s1", "one"), ("s2", "two")] {
            apply(&client, &ns, &secrets(), secret(name, value)).await;
        }
        let case = Case::new(&mirror_config(&ns));
        let mut sidecar = case.spawn(api, Who::Admin, &["--once"], &[]);
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", sidecar.log());
        let live = files::tree(&case.path("out"));
        let offline = case.render_offline(&api.dump(&ns, &kinds()).await);
        assert_eq!(
            live.len(),
            4,
            "all.txt and one file per selected ConfigMap: {:?}",
            live.keys()
        );
        assert_eq!(as_text(&live), as_text(&offline));
    })
    .await;
}

fn as_text(files: &std::collections::BTreeMap<String, Vec<u8>>) -> std::collections::BTreeMap<String, String> {
    files
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

#[tokio::test]
async fn live_churn_converges_to_the_offline_render_of_the_final_state() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("churn").await;
        let client = api.client(Who::Admin).await;
        let cm = |name: &str, app: &str, tier: &str, v: &str| {
            config_map(name, json!({"app": app, "tier": tier}), json!({"v": v}))
        };
        apply(&client, &ns, &config_maps(), cm("c1", "web", "a", "1")).await;
        apply(&client, &ns, &config_maps(), cm("c2", "web", "a", "1")).await;
        apply(&client, &ns, &config_maps(), cm("c4", "db", "a", "1")).await;
        apply(&client, &ns, &secrets(), secret("s1", "one")).await;
        apply(&client, &ns, &secrets(), secret("s2", "two")).await;
        let case = Case::new(&mirror_config(&ns));
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until(
            "the first render",
            || sidecar.log(),
            async || case.read("out/all.txt").filter(|t| t.contains("s2=two")),
        )
        .await;

        // Creates, an update that moves c1 to another key, objects leaving
        // (c2) and entering (c4) the selector, deletes, Secret updates.
        apply(&client, &ns, &config_maps(), cm("c3", "web", "b", "1")).await;
        apply(&client, &ns, &config_maps(), cm("c1", "web", "z", "2")).await;
        apply(&client, &ns, &config_maps(), cm("c2", "db", "a", "2")).await;
        apply(&client, &ns, &config_maps(), cm("c4", "web", "c", "2")).await;
        apply(&client, &ns, &config_maps(), cm("c5", "web", "a", "1")).await;
        delete(&client, &ns, &config_maps(), "c5").await;
        apply(&client, &ns, &config_maps(), cm("c3", "web", "b", "3")).await;
        apply(&client, &ns, &secrets(), secret("s1", "uno")).await;
        apply(&client, &ns, &secrets(), secret("s3", "three")).await;
        delete(&client, &ns, &secrets(), "s2").await;
        apply(&client, &ns, &secrets(), secret("s1", "eins")).await;

        let offline = as_text(&case.render_offline(&api.dump(&ns, &kinds()).await));
        assert!(offline["all.txt"].contains("s1=eins") && !offline["all.txt"].contains("s2="));
        until(
            "the live outputs to equal the offline render",
            || {
                format!(
                    "offline: {offline:#?}\nlive: {:#?}\n{}",
                    as_text(&files::tree(&case.path("out"))),
                    sidecar.log()
                )
            },
            async || (as_text(&files::tree(&case.path("out"))) == offline).then_some(()),
        )
        .await;
    })
    .await;
}

// --- Test 3: kill -9 of the API server ---

/// What `/readyz` answers during an API outage after a good render. DESIGN
/// section 7: readiness stays 200 through API outages (the daemon keeps
/// serving its last good config); flip this if that changes.
const READYZ_DURING_OUTAGE: u16 = 200;

#[tokio::test]
async fn the_sidecar_recovers_by_itself_from_a_kill_9_of_the_api_server() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.exclusive().await;
    within_deadline(async {
        let ns = api.namespace("restart").await;
        let client = api.client(Who::Admin).await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("a", json!({"app": "web"}), json!({"v": "1"})),
        )
        .await;
        let case = Case::new(&config_maps_config(&ns));
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        let admin = sidecar.admin().await;
        until(
            "the first render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=1\n")).then_some(()),
        )
        .await;
        until(
            "ready",
            || sidecar.log(),
            async || (get(&admin, "/readyz").0 == 200).then_some(()),
        )
        .await;

        api.kill();
        until(
            "the sidecar to notice the outage",
            || sidecar.log(),
            async || sidecar.log_lines("cannot reach the API server").first().cloned(),
        )
        .await;
        let (health, body) = get(&admin, "/healthz");
        assert_eq!(health, 200, "/healthz during the outage: {body}");
        let (ready, body) = get(&admin, "/readyz");
        assert_eq!(ready, READYZ_DURING_OUTAGE, "/readyz during the outage: {body}");

        api.start_again().await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("b", json!({"app": "web"}), json!({"v": "2"})),
        )
        .await;
        until(
            "convergence after the restart",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=1\nb=2\n")).then_some(()),
        )
        .await;
        assert_eq!(get(&admin, "/healthz").0, 200);
        assert_eq!(get(&admin, "/readyz").0, 200);
        let log = sidecar.log();
        for theirs in ["eof in poll", "failed with error", "Server cert bypassed"] {
            assert!(
                !log.contains(theirs),
                "kube's own line {theirs:?} is in the log:\n{log}"
            );
        }
    })
    .await;
}

// --- Test 6: Events pass the real server's validation ---

#[tokio::test]
async fn events_on_the_pod_pass_validation_even_with_a_note_over_the_limit() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("events").await;
        let client = api.client(Who::Admin).await;
        let uid = pod(&client, &ns, "web-0").await;
        apply(&client, &ns, &config_maps(), config_map("a", json!({"app": "web"}), json!({"v": "1"}))).await;
        // The check fails with a 2000-byte first line until the file `ok` exists.
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{ns}], label_selector: \"app=web\"}}\n\
             templates:\n  t:\n    inline: \"{{{{ resources.cms | length }}}}\"\n    path: out.txt\n    \
             check: [\"sh\", \"-c\", \"test -f ok || {{ head -c 2000 /dev/zero | tr '\\\\0' x; echo; exit 1; }}\"]\n"
        ));
        let env = [("POD_NAME", "web-0"), ("POD_NAMESPACE", ns.as_str()), ("POD_UID", uid.as_str())];
        let sidecar = case.spawn(api, Who::Admin, &[], &env);
        let failed = until(
            "a RenderFailed Event",
            || sidecar.log(),
            async || events(&client, &ns).await.into_iter().find(|e| e["reason"] == "RenderFailed"),
        )
        .await;
        assert_eq!(failed["type"], "Warning");
        let note = failed["note"].as_str().unwrap();
        assert!(note.contains("xxxxxxxx"), "the note carries the check's output: {note}");
        assert!(note.len() <= 1024, "the note is cut to the API's limit: {} bytes", note.len());
        assert_eq!(failed["regarding"]["name"], "web-0");
        assert_eq!(failed["regarding"]["uid"], uid.as_str());
        assert_eq!(failed["regarding"]["kind"], "Pod");

        fs::write(case.path("ok"), "").unwrap();
        let recovered = until(
            "a RenderRecovered Event",
            || sidecar.log(),
            async || events(&client, &ns).await.into_iter().find(|e| e["reason"] == "RenderRecovered"),
        )
        .await;
        assert_eq!(recovered["type"], "Normal");
        assert_eq!(recovered["regarding"]["uid"], uid.as_str());
        assert!(sidecar.log_lines("ERROR").iter().all(|l| !l.contains("event")), "{}", sidecar.log());
    })
    .await;
}

// --- Test 5: RBAC of examples/deploy ---

/// The documents of a multi-document YAML file of the repository.
fn yaml_documents(rel: &str) -> Vec<Value> {
    let text = fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
    text.split("\n---")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The example deployment's config and templates, run locally against 1.20:
/// outputs under `out/`, EndpointSlices in `discovery.k8s.io/v1beta1` (1.20
/// has no v1), the admin server on a free port.
fn example_case() -> Case {
    let documents = yaml_documents("examples/deploy/configmap.yaml");
    let data = documents
        .iter()
        .find(|d| d["metadata"]["name"] == "kube-template-config")
        .map(|d| d["data"].as_object().unwrap().clone())
        .expect("the config ConfigMap");
    let config = data["config.yaml"]
        .as_str()
        .unwrap()
        .replace("/var/run/haproxy-config/", "out/")
        .replace(
            "api_version: discovery.k8s.io/v1\n",
            "api_version: discovery.k8s.io/v1beta1\n",
        )
        .replace("listen: \"0.0.0.0:9090\"", "listen: \"127.0.0.1:0\"");
    assert!(config.contains("v1beta1") && config.contains("127.0.0.1:0"), "{config}");
    let dir = tempfile::tempdir().expect("temporary directory");
    fs::write(dir.path().join("config.yaml"), config).unwrap();
    for (name, text) in &data {
        if name != "config.yaml" {
            fs::write(dir.path().join(name), text.as_str().unwrap()).unwrap();
        }
    }
    Case { dir }
}

/// Creates a role of `examples/deploy/rbac.yaml` (`kind`: ClusterRole or Role,
/// renamed to `name`) and binds it to `user`; `edit` may change its rules first.
async fn grant(client: &kube::Client, namespace: &str, kind: &str, name: &str, user: &str, edit: impl Fn(&mut Value)) {
    let mut role = yaml_documents("examples/deploy/rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("a {kind} in rbac.yaml"));
    role["metadata"] = json!({"name": name});
    edit(&mut role);
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": format!("{kind}Binding"),
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    let plural = |k: &str| format!("{}s", k.to_lowercase());
    for object in [role, binding] {
        let kind = object["kind"].as_str().unwrap().to_string();
        let ar = gvk_resource("rbac.authorization.k8s.io", "v1", &kind, &plural(&kind));
        let api: Api<DynamicObject> = if kind.starts_with("Cluster") {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), namespace, &ar)
        };
        let patch = PatchParams::apply("tests").force();
        api.patch(name, &patch, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

#[tokio::test]
async fn the_example_rbac_is_enough_and_a_missing_permission_is_named() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("rbac").await;
        let client = api.client(Who::Admin).await;
        let uid = pod(&client, &ns, "haproxy-0").await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("kube-template-status", json!({}), json!({})),
        )
        .await;
        let user = real::RBAC_USER;
        // A cluster role of its own per run: the server outlives a test.
        let cluster_role = format!("{ns}-reader");
        grant(&client, &ns, "ClusterRole", &cluster_role, user, |_| {}).await;
        grant(&client, &ns, "Role", "kube-template", user, |_| {}).await;
        let env = [
            ("POD_NAME", "haproxy-0"),
            ("POD_NAMESPACE", ns.as_str()),
            ("POD_UID", uid.as_str()),
        ];

        // Everything the example does: watches, the status ConfigMap, and an
        // Event (the render fails while the rendered file cannot be written).
        let case = example_case();
        fs::write(case.path("out"), "a file where the output directory goes").unwrap();
        let sidecar = case.spawn(api, Who::Rbac, &[], &env);
        let failed = until(
            "a RenderFailed Event posted by the example's user",
            || sidecar.log(),
            async || {
                events(&client, &ns)
                    .await
                    .into_iter()
                    .find(|e| e["reason"] == "RenderFailed")
            },
        )
        .await;
        assert_eq!(failed["regarding"]["name"], "haproxy-0");
        fs::remove_file(case.path("out")).unwrap();
        until(
            "the status ConfigMap to say success",
            || sidecar.log(),
            async || {
                (annotations(&client, &ns, "kube-template-status").await["kube-template/last-render-result"]
                    == "success")
                    .then_some(())
            },
        )
        .await;
        assert!(case.read("out/haproxy.cfg").is_some(), "{}", sidecar.log());
        let log = sidecar.log();
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "no permission is missing:\n{log}"
        );
        drop(sidecar);

        // Without `list` on Secrets, the error names the resource and the verb.
        grant(&client, &ns, "ClusterRole", &cluster_role, user, |role| {
            for rule in role["rules"].as_array_mut().unwrap() {
                if rule["resources"].as_array().unwrap().iter().any(|r| r == "secrets") {
                    rule["resources"] = json!(["services"]);
                }
            }
        })
        .await;
        let case = example_case();
        let mut sidecar = case.spawn(api, Who::Rbac, &["--once", "--sync-timeout", "5s"], &env);
        let status = sidecar.exit(Duration::from_secs(40)).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        let errors = sidecar.log_lines("error:");
        assert_eq!(errors.len(), 1, "{}", sidecar.log());
        for part in ["secrets", "list", "forbidden", user] {
            assert!(errors[0].contains(part), "the error names {part:?}: {}", errors[0]);
        }
    })
    .await;
}

// --- Test 4: compaction and a restart give real 410s; stores re-listed ---

/// A `check` that keeps a copy of every staged file in `versions/`, numbered in order.
const CAPTURE_VERSIONS: &str = r#"["sh", "-c", "n=$(ls versions | wc -l); cp '{file}' versions/$(printf %06d $n)"]"#;

#[tokio::test]
async fn after_compaction_and_a_restart_old_versions_are_gone_and_stores_are_listed_again() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.exclusive().await;
    within_deadline(async {
        let ns = api.namespace("compaction").await;
        let client = api.client(Who::Admin).await;
        let cm = |name: &str, v: &str| config_map(name, json!({"app": "web"}), json!({"v": v}));
        apply(&client, &ns, &config_maps(), cm("a", "1")).await;
        apply(&client, &ns, &config_maps(), cm("b", "1")).await;
        let config = config_maps_config(&ns).replace(
            "path: out.txt",
            &format!("path: out.txt\n    check: {CAPTURE_VERSIONS}"),
        );
        let case = Case::new(&config);
        fs::create_dir(case.path("versions")).unwrap();
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until(
            "the first render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=1\nb=1\n")).then_some(()),
        )
        .await;

        // The sidecar misses everything from here to the restart.
        sidecar.signal("STOP");
        let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &config_maps());
        let old = cms
            .list(&Default::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        delete(&client, &ns, &config_maps(), "b").await;
        apply(&client, &ns, &config_maps(), cm("c", "1")).await;
        apply(&client, &ns, &config_maps(), cm("a", "2")).await;
        api.compact();
        api.kill();
        api.start_again().await;

        // The old resourceVersion is gone for real: a watch from it gets 410.
        let client = api.client(Who::Admin).await;
        let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &config_maps());
        let expired = match cms.watch(&Default::default(), &old).await {
            Err(kube::Error::Api(status)) => status.code,
            Ok(stream) => {
                use futures::StreamExt as _;
                let mut stream = Box::pin(stream);
                match stream.next().await {
                    Some(Ok(kube::api::WatchEvent::Error(status))) => status.code,
                    other => panic!("a watch from a compacted version gave {other:?}"),
                }
            }
            Err(other) => panic!("a watch from a compacted version failed with {other}"),
        };
        assert_eq!(expired, 410);

        sidecar.signal("CONT");
        until(
            "the final state, listed again",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=2\nc=1\n")).then_some(()),
        )
        .await;
        // Every render showed a state the server had, in the server's order:
        // events already on their way before the kill may be read before the
        // connection breaks, so the states between the old and the new may
        // show too; a mix (say `b` still there beside `c`, or `a=1` after
        // `a=2`) may not.
        const STATES: [&str; 4] = ["a=1\nb=1\n", "a=1\n", "a=1\nc=1\n", "a=2\nc=1\n"];
        let mut names: Vec<PathBuf> = fs::read_dir(case.path("versions"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let mut at = 0;
        for name in names {
            let version = fs::read_to_string(&name).unwrap();
            let state = STATES.iter().position(|s| *s == version);
            assert!(
                state.is_some_and(|state| state >= at),
                "a render of no state the server had, or an older one: {version:?}"
            );
            at = state.unwrap();
        }
    })
    .await;
}

// --- Test 7: the status ConfigMap under a concurrent writer ---

#[tokio::test]
async fn the_status_config_map_loses_no_write_under_a_concurrent_writer() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("status-writers").await;
        let client = api.client(Who::Admin).await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("status", json!({}), json!({"counter": "0"})),
        )
        .await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("a", json!({"app": "web"}), json!({"v": "0"})),
        )
        .await;
        let config = format!(
            "{}status: {{config_map: status, namespace: {ns}}}\n",
            config_maps_config(&ns)
        );
        let case = Case::new(&config);
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until(
            "the first render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=0\n")).then_some(()),
        )
        .await;

        // Another client rewrites the data (read, change, replace with the
        // version read; again on a conflict) while renders change the annotations.
        let api_cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &config_maps());
        let mut conflicts = 0;
        const WRITES: usize = 300;
        for i in 1..=WRITES {
            loop {
                let mut status = api_cms.get("status").await.unwrap();
                status.data["data"]["counter"] = json!(i.to_string());
                match api_cms.replace("status", &PostParams::default(), &status).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                    Err(e) => panic!("replace: {e}"),
                }
            }
            if i % 10 == 0 {
                apply(
                    &client,
                    &ns,
                    &config_maps(),
                    config_map("a", json!({"app": "web"}), json!({"v": i.to_string()})),
                )
                .await;
            }
        }
        let last = format!("a={WRITES}\n");
        until(
            "the last render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some(last.as_str())).then_some(()),
        )
        .await;
        let sum = {
            use sha2::Digest as _;
            sha2::Sha256::digest(last.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        until(
            "the status ConfigMap to show the last render",
            || sidecar.log(),
            async || {
                let annotations = annotations(&client, &ns, "status").await;
                annotations["kube-template/checksums"]
                    .as_str()
                    .is_some_and(|c| c.contains(&sum))
                    .then_some(())
            },
        )
        .await;
        let status = api_cms.get("status").await.unwrap();
        assert_eq!(
            status.data["data"]["counter"],
            WRITES.to_string(),
            "the other writer's last write is kept"
        );
        eprintln!("the other writer met {conflicts} conflicts");
    })
    .await;
}

// --- Test 8: on-demand stores: GETs per Secret, counted by the server ---

#[tokio::test]
async fn on_demand_secrets_are_fetched_once_per_version_however_often_templates_read_them() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("on-demand").await;
        let client = api.client(Who::Admin).await;
        for (name, value) in [("s1", "one"), ("s2", "two"), ("s3", "three")] {
            apply(&client, &ns, &secrets(), secret(name, value)).await;
        }
        // Two templates read every Secret twice each, rendered at the same time.
        let read = "{% for s in resources.secrets %}{{ s.metadata.name }}={{ s.data.k | b64decode }} {{ resources.secrets.get_one(s.metadata.name).data.k | b64decode }}\\n{% endfor %}";
        let case = Case::new(&format!(
            "watched_resources:\n  secrets: {{api_version: v1, kind: Secret, namespaces: [{ns}], store: on-demand, index_by: [metadata.name]}}\n\
             templates:\n  a: {{inline: \"{read}\", path: out/a.txt}}\n  b: {{inline: \"{read}\", path: out/b.txt}}\n\
             render: {{wait: {{min: 0s, max: 1s}}}}\n"
        ));
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until("the first render", || sidecar.log(), async || case.read("out/b.txt").filter(|t| t.contains("s3=three"))).await;
        apply(&client, &ns, &secrets(), secret("s1", "uno")).await;
        until("the render of the update", || sidecar.log(), async || case.read("out/b.txt").filter(|t| t.contains("s1=uno uno"))).await;
        assert!(case.read("out/a.txt").unwrap().contains("s1=uno uno"));

        // DESIGN section 3: one GET per Secret and resourceVersion, however many reads.
        let gets = || {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for entry in api.audit() {
                if entry["verb"] == "get"
                    && entry["objectRef"]["resource"] == "secrets"
                    && entry["objectRef"]["namespace"] == ns.as_str()
                    && entry["stage"] == "ResponseComplete"
                {
                    *counts.entry(entry["objectRef"]["name"].as_str().unwrap().to_string()).or_default() += 1;
                }
            }
            counts
        };
        let expected = std::collections::BTreeMap::from([("s1".to_string(), 2), ("s2".to_string(), 1), ("s3".to_string(), 1)]);
        until("the audit log to count the GETs", || format!("{:?}", gets()), async || (gets() == expected).then_some(())).await;

    })
    .await;
}

// --- namespace_selector: namespaces followed by label, with least RBAC ---

/// Applies a role of `kind` (ClusterRole, or Role in `namespace`) with
/// `rules`, named `name`, bound to `user`.
async fn grant_rules(client: &kube::Client, namespace: &str, kind: &str, name: &str, user: &str, rules: Value) {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "rules": rules,
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": format!("{kind}Binding"),
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    for object in [role, binding] {
        let kind = object["kind"].as_str().unwrap().to_string();
        let ar = gvk_resource(
            "rbac.authorization.k8s.io",
            "v1",
            &kind,
            &format!("{}s", kind.to_lowercase()),
        );
        let api: Api<DynamicObject> = if kind.starts_with("Cluster") {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), namespace, &ar)
        };
        api.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

/// Sets the label `kube-template.test/team` of the namespace `name`.
async fn label_namespace(client: &kube::Client, name: &str, team: &str) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &gvk_resource("", "v1", "Namespace", "namespaces"));
    let patch = json!({"metadata": {"labels": {"kube-template.test/team": team}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("label namespace {name}: {e}"));
}

#[tokio::test]
async fn a_namespace_selector_follows_relabelled_namespaces_with_only_namespaced_rbac_on_the_kind() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let client = api.client(Who::Admin).await;
        let a = api.namespace("nssel-a").await;
        let b = api.namespace("nssel-b").await;
        let c = api.namespace("nssel-c").await;
        // A team name of this run only: the server outlives a test.
        let team = a.clone();
        label_namespace(&client, &a, &team).await;
        label_namespace(&client, &c, "other").await;
        for (ns, name) in [(&a, "one"), (&b, "two"), (&c, "three")] {
            apply(&client, ns, &config_maps(), config_map(name, json!({"app": "web"}), json!({}))).await;
        }
        // Namespaces cluster-wide; ConfigMaps only where the team is.
        let user = real::RBAC_USER;
        let read = json!(["get", "list", "watch"]);
        grant_rules(&client, &a, "ClusterRole", &format!("{a}-namespaces"), user,
            json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}])).await;
        for ns in [&a, &b] {
            grant_rules(&client, ns, "Role", "configmaps", user,
                json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": read}])).await;
        }
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, label_selector: \"app=web\", \
             namespace_selector: \"kube-template.test/team={team}\"}}\ntemplates:\n  t:\n    inline: \"\
             {{% for c in resources.cms %}}{{{{ c.metadata.namespace }}}}/{{{{ c.metadata.name }}}}\\n{{% endfor %}}\"\n    \
             path: out.txt\nrender: {{wait: {{min: 0s, max: 1s}}}}\n"
        ));
        let sidecar = case.spawn(api, Who::Rbac, &[], &[]);
        let file = |expected: String| {
            let case = &case;
            let sidecar = &sidecar;
            async move {
                until(&format!("out.txt to be {expected:?}"), || sidecar.log(), async || {
                    (case.read("out.txt").as_deref() == Some(expected.as_str())).then_some(())
                })
                .await
            }
        };
        file(format!("{a}/one\n")).await;
        label_namespace(&client, &b, &team).await;
        file(format!("{a}/one\n{b}/two\n")).await;
        label_namespace(&client, &a, "gone").await;
        file(format!("{b}/two\n")).await;
        apply(&client, &b, &config_maps(), config_map("four", json!({"app": "web"}), json!({}))).await;
        file(format!("{b}/four\n{b}/two\n")).await;
        let log = sidecar.log();
        assert!(!log.to_lowercase().contains("forbidden"), "no permission is missing:\n{log}");
    })
    .await;
}
