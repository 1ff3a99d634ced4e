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

#[path = "../support/mod.rs"]
mod support;

mod crds;
mod errors;
mod lists;
mod mirror;
mod on_demand;
mod outage;
mod rbac;
mod reports;

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

/// ConfigMap `a` (`app=web`, `v: "1"`): what `config_maps_config` renders as `a=1`.
async fn apply_a(client: &kube::Client, namespace: &str) {
    apply(
        client,
        namespace,
        &config_maps(),
        config_map("a", json!({"app": "web"}), json!({"v": "1"})),
    )
    .await;
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

/// `kube_template_watch_restarts_total` of every watch that has restarted.
fn watch_restarts(admin: &str) -> Vec<f64> {
    let (_, metrics) = get(admin, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("kube_template_watch_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

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

fn secret(name: &str, value: &str) -> Value {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(value);
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": {"k": data}})
}
