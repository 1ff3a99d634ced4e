//! On-demand stores against the fake API server: metadata-only watches,
//! bodies fetched with GET through the bounded cache, and reads that are never
//! stale while the API answers. GETs are counted at the server.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube_template::object::ObjectId;
use kube_template::pipeline::{self, RunOptions};
use kube_template::source::{self, kubernetes};
use kube_template::store::on_demand::CacheSettings;
use kube_template::store::on_demand::{BodyCache, Version, Wanted};
use kube_template::telemetry::Telemetry;
use serde_json::{Value, json};
use support::fake_api::{FakeApiServer, Fault, Verb};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

fn secret(name: &str, value: &str) -> Value {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"namespace": "default", "name": name}, "data": {"v": encoded}})
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "default", "name": name}, "data": {}})
}

/// A running pipeline over the fake server, stopped on drop.
struct Sidecar {
    out: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    caches: Vec<Arc<BodyCache>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
        self.task.abort();
    }
}

impl Sidecar {
    /// Starts a pipeline whose template is `template` (inline); stores:
    /// `secrets` (on-demand, max_entries as given) and `cms` (full).
    async fn start(server: &FakeApiServer, template: &str, max_entries: usize) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
watched_resources:
  secrets:
    api_version: v1
    kind: Secret
    store: on-demand
    cache: {{ ttl: 10m, max_entries: {max_entries} }}
  cms:
    api_version: v1
    kind: ConfigMap
templates:
  out:
    inline: {}
    path: out.txt
render:
  wait: {{ min: 10ms, max: 100ms }}
"#,
            serde_json::to_string(template).unwrap()
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let prepared = pipeline::prepare(&dir.path().join("config.yaml")).unwrap();
        let telemetry = Arc::new(Telemetry::default());
        let connect = kubernetes::Connect {
            kubeconfig: Some(server.kubeconfig_path()),
            context: None,
        };
        let client_config = kubernetes::client_config(&connect).await.unwrap();
        let options = kubernetes::WatchOptions::default();
        let sources = source::start_kubernetes(&prepared.config, client_config, options, &telemetry)
            .await
            .unwrap();
        let caches = sources.caches.values().cloned().collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            pipeline::run(Arc::new(prepared), sources, RunOptions::default(), telemetry, shutdown)
                .await
                .unwrap();
        });
        Sidecar {
            out: dir.path().join("out.txt"),
            _dir: dir,
            stop: Some(stop),
            task,
            caches,
        }
    }

    fn stale(&self) -> u64 {
        self.caches[0].stats.stale.get()
    }

    /// Waits until the output satisfies `ok`; returns it.
    async fn output_where(&self, ok: impl Fn(&str) -> bool) -> String {
        wait_for_file(&self.out, ok).await
    }
}

async fn wait_for_file(path: &Path, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && ok(&text)
        {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never matched; last: {:?}",
            path.display(),
            std::fs::read_to_string(path).ok()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A template reading ten named secrets, and counting ConfigMaps (to cause
/// renders that change nothing on the secrets' side).
fn ten_reads() -> String {
    let mut t = String::from("cms={{ resources.cms | length }} refs={{ resources.secrets | length }}\n");
    for i in 0..10 {
        t.push_str(&format!(
            "{{{{ resources.secrets.get_one('default', 's{i:04}').data.v | b64decode }}}}\n"
        ));
    }
    t
}

#[tokio::test]
async fn reading_ten_of_a_thousand_references_costs_ten_gets_then_none() {
    let server = FakeApiServer::start().await;
    for i in 0..1000 {
        server.apply(secret(&format!("s{i:04}"), &format!("v{i}")));
    }
    let sidecar = Sidecar::start(&server, &ten_reads(), 512).await;
    let first = sidecar.output_where(|t| t.starts_with("cms=0 refs=1000")).await;
    assert!(first.contains("v0\n") && first.contains("v9\n"), "{first}");
    assert_eq!(server.get_count("secrets"), 10);
    assert_eq!(server.list_count("secrets"), 2, "one list, in two pages of 500");
    let metadata_only = server.list_count("secrets") + server.watch_count("secrets");
    assert_eq!(
        server.metadata_request_count("secrets"),
        metadata_only,
        "lists and watches carry no bodies"
    );

    server.apply(config_map("trigger"));
    sidecar.output_where(|t| t.starts_with("cms=1 ")).await;
    assert_eq!(
        server.get_count("secrets"),
        10,
        "a render with no secret changes fetches nothing"
    );
}

#[tokio::test]
async fn an_updated_body_is_read_fresh_with_one_get() {
    let server = FakeApiServer::start().await;
    for i in 0..10 {
        server.apply(secret(&format!("s{i:04}"), &format!("v{i}")));
    }
    let sidecar = Sidecar::start(&server, &ten_reads(), 512).await;
    sidecar.output_where(|t| t.contains("v3\n")).await;
    assert_eq!(server.get_count("secrets"), 10);

    server.apply(secret("s0003", "changed"));
    let text = sidecar.output_where(|t| t.contains("changed\n")).await;
    assert!(!text.contains("v3\n"), "{text}");
    assert_eq!(
        server.get_count("secrets"),
        11,
        "exactly one GET for the updated object"
    );
}

#[tokio::test]
async fn a_failed_get_uses_the_cached_copy_and_counts_it_stale() {
    let server = FakeApiServer::start().await;
    for i in 0..10 {
        server.apply(secret(&format!("s{i:04}"), &format!("v{i}")));
    }
    let sidecar = Sidecar::start(&server, &ten_reads(), 512).await;
    sidecar.output_where(|t| t.contains("v5\n")).await;

    server.inject_fault(Fault::new(500).verb(Verb::Get));
    server.apply(secret("s0005", "unreachable"));
    server.apply(config_map("trigger"));
    let text = sidecar.output_where(|t| t.starts_with("cms=1 ")).await;
    assert!(text.contains("v5\n"), "the cached copy is shown: {text}");
    assert!(sidecar.stale() >= 1);

    // No event comes: the render that used a stale copy is retried until
    // the API answers.
    server.clear_faults();
    sidecar.output_where(|t| t.contains("unreachable\n")).await;
}

#[tokio::test]
async fn a_failed_get_without_a_copy_fails_the_render_and_keeps_the_file() {
    let server = FakeApiServer::start().await;
    let template = "cms={{ resources.cms | length }} {{ (resources.secrets.get_one('default', 'new') or {'data': {'v': 'YWJzZW50'}}).data.v | b64decode }}\n";
    let sidecar = Sidecar::start(&server, template, 512).await;
    sidecar.output_where(|t| t == "cms=0 absent\n").await;

    server.inject_fault(Fault::new(500).verb(Verb::Get));
    server.apply(secret("new", "present"));
    server.apply(config_map("trigger"));
    // The failing render retries with backoff; meanwhile the file is as it was.
    server.wait_for(|s| s.get_count("secrets") >= 2).await;
    assert_eq!(std::fs::read_to_string(&sidecar.out).unwrap(), "cms=0 absent\n");

    server.clear_faults();
    sidecar.output_where(|t| t == "cms=1 present\n").await;
}

#[tokio::test]
async fn concurrent_reads_of_one_uncached_object_make_one_get() {
    let server = FakeApiServer::start().await;
    server.apply(secret("shared", "x"));
    let cache = cache_over(&server, 10).await;
    let wanted = Wanted {
        id: ObjectId::new("", "default", "shared"),
        namespace: "default".into(),
        name: "shared".into(),
        version: Version::of("unknown"),
    };
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let wanted = wanted.clone();
            tokio::spawn(async move { cache.read(&wanted).await.unwrap().unwrap() })
        })
        .collect();
    for read in reads {
        read.await.unwrap();
    }
    assert_eq!(server.get_count("secrets"), 1);
}

#[tokio::test]
async fn the_cache_keeps_at_most_max_entries_bodies() {
    let server = FakeApiServer::start().await;
    for i in 0..100 {
        server.apply(secret(&format!("s{i}"), "x"));
    }
    let cache = cache_over(&server, 10).await;
    for i in 0..100 {
        let name = format!("s{i}");
        let wanted = Wanted {
            id: ObjectId::new("", "default", &name),
            namespace: "default".into(),
            version: Version::of("0"),
            name,
        };
        cache.read(&wanted).await.unwrap().unwrap();
        assert!(cache.len() <= 10);
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(server.get_count("secrets"), 100);
}

/// A body cache over the fake server's Secrets, as `run` builds one.
async fn cache_over(server: &FakeApiServer, max_entries: usize) -> Arc<BodyCache> {
    let client = server.client().await;
    let config = "watched_resources:\n  s: {api_version: v1, kind: Secret, store: on-demand}\ntemplates:\n  t: {inline: x, path: t}\n";
    let config = kube_template::config::Config::parse(config, Path::new("c.yaml"), Path::new(".")).unwrap();
    let watches = source::plan(&config);
    let resolved = kubernetes::resolve(&client, &watches).await.unwrap();
    let fetch = Arc::new(kubernetes::ApiFetch::new(client, &resolved[0]));
    let settings = CacheSettings {
        ttl: Duration::from_secs(600),
        max_entries,
    };
    Arc::new(BodyCache::new("s", fetch, settings, Vec::new(), Default::default()))
}
