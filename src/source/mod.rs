//! Sources of objects: the Kubernetes API ([`kubernetes`]) or a directory of
//! manifests ([`manifests`]).
//!
//! Every `watched_resources` entry is served by a watch; entries with the same
//! (apiVersion, kind, namespaces, selectors) share one ([`plan`]), so the same
//! objects are never fetched or held twice. A watch reports [`Event`]s: single
//! changes, and whole listings (initial list, re-list) that replace what the
//! stores hold for its scope at once.

pub mod kubernetes;
pub mod manifests;
pub mod own_writes;
pub mod selected;

pub use selected::Namespaces;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Config, Issue, Resource, StoreKind};
use crate::object::FieldPath;
use crate::object::document::Document;
use crate::object::selector::{FieldSelector, LabelSelector};
use crate::store::on_demand::BodyCache;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::CacheMetrics;

/// What one watch is about; entries with equal specs share a watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub api_version: String,
    pub kind: String,
    /// Sorted and deduplicated; empty means all namespaces.
    pub namespaces: Vec<String>,
    pub labels: LabelSelector,
    /// Labels of the namespaces watched ([`selected`]); empty: no selection
    /// by namespace labels.
    pub namespace_labels: LabelSelector,
    pub fields: FieldSelector,
    /// Only metadata is watched (for on-demand stores).
    pub metadata_only: bool,
}

impl WatchSpec {
    fn of(resource: &Resource) -> WatchSpec {
        let mut namespaces = resource.spec.namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        WatchSpec {
            api_version: resource.spec.api_version.clone(),
            kind: resource.spec.kind.clone(),
            namespaces,
            labels: resource.labels.clone(),
            namespace_labels: resource.namespace_labels.clone(),
            fields: resource.fields.clone(),
            metadata_only: resource.spec.store == StoreKind::OnDemand,
        }
    }

    /// What makes two specs the same watch.
    fn identity(&self) -> (String, String, Vec<String>, String, String, String, bool) {
        (
            self.api_version.clone(),
            self.kind.clone(),
            self.namespaces.clone(),
            self.namespace_labels.canonical(),
            self.labels.canonical(),
            self.fields.canonical(),
            self.metadata_only,
        )
    }

    /// Whether `object` belongs to this watch: same apiVersion and kind, in one
    /// of its namespaces (if any) whose labels match its namespace selector
    /// (if any; `namespaces` holds the Namespace objects there are), matching
    /// its selectors. The API server and [`selected`] do this for real
    /// watches; manifests are filtered here the same way.
    pub fn selects(&self, object: &Value, namespaces: &Namespaces) -> bool {
        let text = |field: &str| object.get(field).and_then(Value::as_str).unwrap_or_default();
        if text("apiVersion") != self.api_version || text("kind") != self.kind {
            return false;
        }
        if let Some(namespace) = object.pointer("/metadata/namespace").and_then(Value::as_str)
            && !self.in_namespace(namespace, namespaces.labels(namespace))
        {
            return false;
        }
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// Whether objects of `namespace` belong to this watch, the namespace's
    /// labels being `labels` (`{"metadata": {"labels": …}}`; `None`: there
    /// is no such namespace).
    pub fn in_namespace(&self, namespace: &str, labels: Option<&Value>) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        self.namespace_labels.is_empty() || labels.is_some_and(|labels| self.namespace_labels.matches(labels))
    }

    /// A short description for logs: `v1/Secret in [a, b] labels=… fields=…`.
    pub fn describe(&self) -> String {
        let mut text = format!("{}/{}", self.api_version, self.kind);
        if !self.namespaces.is_empty() {
            text.push_str(&format!(" in [{}]", self.namespaces.join(", ")));
        }
        if !self.namespace_labels.is_empty() {
            text.push_str(&format!(" in namespaces labelled {}", self.namespace_labels.as_str()));
        }
        if !self.labels.is_empty() {
            text.push_str(&format!(" labels={}", self.labels.as_str()));
        }
        if !self.fields.is_empty() {
            text.push_str(&format!(" fields={}", self.fields.as_str()));
        }
        if self.metadata_only {
            text.push_str(" (metadata only)");
        }
        text
    }
}

/// One watch and the `watched_resources` entries (stores) it feeds.
#[derive(Debug, Clone)]
pub struct Watch {
    pub spec: WatchSpec,
    pub stores: Vec<String>,
    /// The `ignore_fields` of every one of its stores: left out of objects
    /// as they arrive, so that no store ever holds them.
    pub omit: Vec<FieldPath>,
}

impl Watch {
    /// What the stores of this watch keep of `object`.
    pub fn document(&self, object: &Value) -> Document {
        Document::from_json_without(object, &self.omit)
    }
}

/// The distinct watches a config needs, in a stable order; a watch's index in
/// this list is its id in [`SourceEvent`]s.
pub fn plan(config: &Config) -> Vec<Watch> {
    let mut watches: BTreeMap<_, Watch> = BTreeMap::new();
    for (name, resource) in &config.watched_resources {
        let spec = WatchSpec::of(resource);
        let watch = watches.entry(spec.identity()).or_insert_with(|| Watch {
            spec,
            stores: Vec::new(),
            omit: resource.ignore_fields.clone(),
        });
        watch.stores.push(name.clone());
        watch.omit.retain(|field| resource.ignore_fields.contains(field));
    }
    watches.into_values().collect()
}

/// The problems of on-demand entries that share a watch but not its settings.
///
/// Entries with the same kind, namespaces and selectors share one watch, and
/// on-demand ones one cache of bodies: one GET per object, one copy of it.
/// For them, differing `cache` or `ignore_fields` settings are an error, not
/// merged: a merged cache would be sized for neither entry as its author
/// meant, and one copy of a body cannot leave out a field for one entry and
/// keep it for the other without re-encoding it on every read (or a second
/// cache, doubling GETs and memory). Full stores keep their own copies of
/// objects, so their `ignore_fields` may differ freely.
pub fn shared_watch_issues(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    for watch in plan(config).iter().filter(|w| w.spec.metadata_only) {
        let first = &config.watched_resources[&watch.stores[0]];
        for name in &watch.stores[1..] {
            let other = &config.watched_resources[name];
            let why = format!(
                "`{name}` and `{}` share one watch ({}) and so one cache of bodies",
                first.name,
                watch.spec.describe()
            );
            if (other.cache.ttl, other.cache.max_entries) != (first.cache.ttl, first.cache.max_entries) {
                issues.push(config.issue_at(
                    &["watched_resources", name, "cache"],
                    format!("{why}, but their `cache` settings differ; make them equal"),
                ));
            }
            if !same_fields(&other.ignore_fields, &first.ignore_fields) {
                issues.push(config.issue_at(
                    &["watched_resources", name, "ignore_fields"],
                    format!("{why}, but their `ignore_fields` differ; make them equal"),
                ));
            }
        }
    }
    issues
}

fn same_fields(a: &[FieldPath], b: &[FieldPath]) -> bool {
    let within = |a: &[FieldPath], b: &[FieldPath]| a.iter().all(|x| b.iter().any(|y| x.segments() == y.segments()));
    within(a, b) && within(b, a)
}

/// The part of a watch's objects a listing replaces: one namespace, or all.
pub type Scope = Option<String>;

/// A change reported by a watch.
#[derive(Debug, Clone)]
pub enum Event {
    /// An object was added or modified.
    Applied(Document),
    /// An object was deleted (its last state).
    Deleted(Document),
    /// A complete listing of `scope`: everything else in that scope is gone.
    Listed { scope: Scope, objects: Vec<Document> },
}

/// An [`Event`] of watch number `watch` (its index in [`plan`]).
#[derive(Debug, Clone)]
pub struct SourceEvent {
    pub watch: usize,
    pub event: Event,
}

/// How many events may wait for the pipeline before watches pause.
const QUEUE: usize = 1024;

/// Running sources: their watches, the listings the pipeline waits for before
/// the first render, and their events. The tasks are owned here: dropping
/// `Sources` stops them.
#[derive(Debug)]
pub struct Sources {
    pub watches: Vec<Watch>,
    /// One (watch, scope) per listing that must arrive before the first render.
    pub expected: Vec<(usize, Scope)>,
    pub events: mpsc::Receiver<SourceEvent>,
    /// A task ends only on failure (its error) or when `events` is dropped.
    pub tasks: JoinSet<Result<(), String>>,
    /// The body caches of on-demand stores, by store name (Kubernetes only:
    /// manifests are in memory already, so their stores are full).
    pub caches: BTreeMap<String, Arc<BodyCache>>,
}

/// Starts a live manifests source (`run --from`).
pub fn start_manifests(config: &Config, paths: Vec<PathBuf>, telemetry: &Arc<Telemetry>) -> manifests::Result<Sources> {
    let watches = plan(config);
    register_stores(config, &watches, telemetry);
    // Files do not stall: the manifests "watch" is never silent for too long.
    for watch in &watches {
        let index = telemetry.status.add_watch(
            format!("{} in manifests", watch.spec.describe()),
            telemetry.status.activity(),
            None,
        );
        telemetry.status.watch_synced(index);
    }
    let live = manifests::LiveManifests::load(paths, watches.clone())?;
    let (tx, events) = mpsc::channel(QUEUE);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move { live.run(tx).await.map_err(|e| e.to_string()) });
    Ok(Sources {
        expected: (0..watches.len()).map(|w| (w, None)).collect(),
        watches,
        events,
        tasks,
        caches: BTreeMap::new(),
    })
}

/// Starts the Kubernetes watches. Every kind is resolved by discovery first;
/// a kind the server does not serve (yet: a CRD installed in the same release
/// as the sidecar) does not stop the start: its watch waits, not synced and
/// named in `/readyz`, and discovery is retried with backoff until the kind
/// appears. Each watch stream gets a client of its own, so that its liveness
/// can be followed.
pub async fn start_kubernetes(
    config: &Config,
    client_config: kube::Config,
    options: kubernetes::WatchOptions,
    telemetry: &Arc<Telemetry>,
) -> kubernetes::Result<Sources> {
    let client = kube::Client::try_from(client_config.clone()).map_err(|e| kubernetes::Error::Config(e.to_string()))?;
    let watches = plan(config);
    let resolved = resolve_until_reachable(&client, &watches, client_config.cluster_url.to_string(), telemetry).await?;
    register_stores(config, &watches, telemetry);
    let (tx, events) = mpsc::channel(QUEUE);
    let mut tasks = JoinSet::new();
    let mut expected = Vec::new();
    let mut caches = BTreeMap::new();
    let lists = Arc::new(kubernetes::ListMode::default());
    let (publish, namespaces) = tokio::sync::watch::channel(None);
    if watches.iter().any(|w| !w.spec.namespace_labels.is_empty()) {
        let task = selected::namespace_task(&client_config, options, &lists, telemetry, publish)?;
        tasks.spawn(async move { task.await.map_err(|e| e.to_string()) });
    }
    for (id, (watch, resolved)) in watches.iter().zip(resolved).enumerate() {
        let fetch = watch.spec.metadata_only.then(|| {
            let fetch = Arc::new(kubernetes::ApiFetch::pending(client.clone()));
            // One cache per watch: stores over the same objects share bodies.
            let first = &config.watched_resources[&watch.stores[0]];
            // The settings of every store of the watch are the same
            // ([`shared_watch_issues`]).
            let name = watch.stores.join(",");
            let cache = Arc::new(BodyCache::new(
                &name,
                Arc::clone(&fetch) as _,
                first.cache,
                first.ignore_fields.clone(),
                CacheMetrics::registered(&telemetry.metrics, &name),
            ));
            for name in &watch.stores {
                caches.insert(name.clone(), Arc::clone(&cache));
            }
            fetch
        });
        // Scopes of a kind not served yet: as if namespaced (see `WatchStreams`).
        let scopes = match &resolved {
            Ok(resolved) => kubernetes::scopes(watch, resolved),
            Err(_) if watch.spec.namespaces.is_empty() || !watch.spec.namespace_labels.is_empty() => vec![None],
            Err(_) => watch.spec.namespaces.iter().cloned().map(Some).collect(),
        };
        let mut streams = Vec::new();
        for scope in scopes {
            expected.push((id, scope.clone()));
            let activity = telemetry.status.activity();
            let name = match &scope {
                Some(namespace) => format!("{} in namespace {namespace}", watch.spec.describe()),
                None => watch.spec.describe(),
            };
            let index = telemetry
                .status
                .add_watch(name, Arc::clone(&activity), Some(options.silence_limit()));
            streams.push(Stream { scope, index, activity });
        }
        let streams = WatchStreams {
            client: client.clone(),
            client_config: client_config.clone(),
            id,
            watch: watch.clone(),
            streams,
            fetch,
            options,
            lists: Arc::clone(&lists),
            telemetry: Arc::clone(telemetry),
            tx: tx.clone(),
            namespaces: namespaces.clone(),
        };
        match resolved {
            Ok(resolved) => {
                for task in streams.tasks(&resolved)? {
                    tasks.spawn(async move { task.await.map_err(|e| e.to_string()) });
                }
            }
            Err(unknown) => {
                tasks.spawn(async move { streams.run_when_served(unknown).await.map_err(|e| e.to_string()) });
            }
        }
    }
    Ok(Sources {
        watches,
        expected,
        events,
        tasks,
        caches,
    })
}

/// One watch stream's place in the status.
struct Stream {
    scope: Scope,
    index: usize,
    activity: Arc<crate::telemetry::status::Activity>,
}

/// A watch and what its streams need, started at once or, for a kind the
/// server does not serve yet, once discovery finds it.
struct WatchStreams {
    client: kube::Client,
    client_config: kube::Config,
    id: usize,
    watch: Watch,
    /// The scopes the pipeline waits for. A kind not served yet is taken as
    /// namespaced; if it turns out cluster-scoped, its one listing of
    /// everything stands for all of them.
    streams: Vec<Stream>,
    fetch: Option<Arc<kubernetes::ApiFetch>>,
    options: kubernetes::WatchOptions,
    lists: Arc<kubernetes::ListMode>,
    telemetry: Arc<Telemetry>,
    tx: mpsc::Sender<SourceEvent>,
    /// The Namespaces there are, for a namespace selector.
    namespaces: selected::Following,
}

impl WatchStreams {
    /// The watch tasks of a resolved kind.
    fn tasks(
        &self,
        resolved: &kubernetes::Resolved,
    ) -> kubernetes::Result<Vec<BoxFuture<'static, kubernetes::Result<()>>>> {
        if let Some(fetch) = &self.fetch {
            fetch.resolve(resolved);
        }
        if resolved.namespaced && !self.watch.spec.namespace_labels.is_empty() {
            let stream = &self.streams[0];
            let selected = selected::SelectedWatch {
                client_config: self.client_config.clone(),
                id: self.id,
                watch: self.watch.clone(),
                resolved: resolved.clone(),
                options: self.options,
                lists: Arc::clone(&self.lists),
                reporting: kubernetes::Reporting {
                    telemetry: Arc::clone(&self.telemetry),
                    index: stream.index,
                },
                activity: Arc::clone(&stream.activity),
                tx: self.tx.clone(),
            };
            return Ok(vec![selected.run(self.namespaces.clone())]);
        }
        let scopes = kubernetes::scopes(&self.watch, resolved);
        let mut tasks = Vec::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let scope = if scopes.contains(&stream.scope) {
                stream.scope.clone()
            } else if i == 0 {
                None
            } else {
                // Cluster-scoped after all: the first stream lists everything.
                self.telemetry.status.watch_synced(stream.index);
                continue;
            };
            tasks.push(
                kubernetes::WatchTask {
                    client: kubernetes::watched_client(&self.client_config, Arc::clone(&stream.activity))?,
                    id: self.id,
                    watch: self.watch.clone(),
                    resolved: resolved.clone(),
                    scope,
                    options: self.options,
                    lists: Arc::clone(&self.lists),
                    reporting: kubernetes::Reporting {
                        telemetry: Arc::clone(&self.telemetry),
                        index: stream.index,
                    },
                    tx: self.tx.clone(),
                }
                .run()
                .boxed(),
            );
        }
        Ok(tasks)
    }

    /// Retries discovery with backoff until the kind is served, then runs its
    /// watches; until then its streams are not synced and say why.
    async fn run_when_served(self, unknown: kubernetes::Error) -> kubernetes::Result<()> {
        let spec = &self.watch.spec;
        let waiting = format!(
            "the API server does not serve {} {} (yet); discovery is retried",
            spec.api_version, spec.kind
        );
        tracing::warn!(stores = %self.watch.stores.join(","), api_version = %spec.api_version, kind = %spec.kind, error = %unknown, "kind not served; waiting for it");
        let mut delay = FIRST_UNREACHABLE_DELAY;
        let resolved = loop {
            for stream in &self.streams {
                self.telemetry.status.watch_error(stream.index, Some(waiting.clone()));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_UNREACHABLE_DELAY);
            match kubernetes::resolve_one(&self.client, &self.watch).await {
                Ok(resolved) => break resolved,
                Err(kubernetes::Error::Unreachable(error)) => {
                    tracing::debug!(kind = %spec.kind, %error, "cannot reach the API server for discovery; retrying");
                }
                Err(_) => {
                    // The server answered: it is alive, the kind is just not there.
                    for stream in &self.streams {
                        stream.activity.touch();
                    }
                }
            }
        };
        tracing::info!(stores = %self.watch.stores.join(","), api_version = %spec.api_version, kind = %spec.kind, "kind now served; watching it");
        for stream in &self.streams {
            self.telemetry.status.watch_error(stream.index, None);
        }
        let tasks = self.tasks(&resolved)?;
        futures::future::try_join_all(tasks).await?;
        Ok(())
    }
}

/// First delay before asking an unreachable API server (or one that does not
/// serve a kind yet) again; it doubles up to [`MAX_UNREACHABLE_DELAY`].
const FIRST_UNREACHABLE_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_UNREACHABLE_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

/// Every watch's kind, by discovery, tried again with backoff for as long as
/// the API server cannot be reached: a sidecar often starts before the API
/// server (or the network to it) is there. A kind the server does not serve
/// is [`kubernetes::Error::UnknownKind`] in its place.
async fn resolve_until_reachable(
    client: &kube::Client,
    watches: &[Watch],
    server: String,
    telemetry: &Telemetry,
) -> kubernetes::Result<Vec<kubernetes::Result<kubernetes::Resolved>>> {
    let mut resolved = Vec::with_capacity(watches.len());
    for watch in watches {
        let mut delay = FIRST_UNREACHABLE_DELAY;
        loop {
            match kubernetes::resolve_one(client, watch).await {
                Err(kubernetes::Error::Unreachable(error)) => {
                    let retry_in_ms = delay.as_millis() as u64;
                    // The deepest cause says what happened (`Connection refused`).
                    let cause = std::iter::successors(Some(&*error as &dyn std::error::Error), |e| e.source())
                        .last()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    if delay == FIRST_UNREACHABLE_DELAY {
                        tracing::warn!(%server, retry_in_ms, error = %cause, "cannot reach the API server; retrying");
                    } else {
                        tracing::debug!(%server, retry_in_ms, error = %cause, "cannot reach the API server; retrying");
                    }
                    telemetry.status.starting(Some(format!(
                        "discovery: cannot reach the API server {server}: {cause}"
                    )));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_UNREACHABLE_DELAY);
                }
                Err(error @ kubernetes::Error::UnknownKind { .. }) => {
                    resolved.push(Err(error));
                    break;
                }
                other => {
                    resolved.push(Ok(other?));
                    break;
                }
            }
        }
    }
    telemetry.status.starting(None);
    Ok(resolved)
}

/// Puts every store on the status page.
fn register_stores(config: &Config, watches: &[Watch], telemetry: &Telemetry) {
    for watch in watches {
        for name in &watch.stores {
            let store = match config.watched_resources[name].spec.store {
                StoreKind::Full => "full",
                StoreKind::OnDemand => "on-demand",
            };
            telemetry
                .status
                .add_store(name, format!("{} ({store})", watch.spec.describe()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn entries_with_the_same_kind_and_selectors_share_one_watch() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, namespaces: [y, x], label_selector: "app=web"}
  b: {api_version: v1, kind: Secret, namespaces: [x, y], label_selector: "app=web", index_by: ["metadata.name"]}
  c: {api_version: v1, kind: Secret}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let watches = plan(&config);
        assert_eq!(watches.len(), 2);
        let shared = watches.iter().find(|w| w.stores.len() == 2).unwrap();
        assert_eq!(shared.stores, ["a", "b"]);
        assert_eq!(shared.spec.namespaces, ["x", "y"]);
    }

    #[test]
    fn a_watch_leaves_out_only_what_all_its_stores_ignore() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, ignore_fields: [metadata.managedFields, metadata.annotations]}
  b: {api_version: v1, kind: Secret, ignore_fields: [metadata.managedFields, data]}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let watches = plan(&config);
        let omitted: Vec<String> = watches[0].omit.iter().map(ToString::to_string).collect();
        assert_eq!(omitted, ["metadata.managedFields"]);
    }

    #[test]
    fn equivalent_selectors_share_one_watch() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, label_selector: "app=web,tier in (a, b)", field_selector: "metadata.name=x"}
  b: {api_version: v1, kind: Secret, label_selector: "tier in (b,a), app==web", field_selector: "$.metadata.name==x"}
  c: {api_version: v1, kind: Secret, label_selector: "app=web"}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let watches = plan(&config);
        assert_eq!(watches.len(), 2);
        assert_eq!(watches.iter().find(|w| w.stores.len() == 2).unwrap().stores, ["a", "b"]);
    }

    #[test]
    fn on_demand_entries_sharing_a_watch_must_agree_on_cache_and_ignore_fields() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, store: on-demand, cache: {max_entries: 10}, ignore_fields: [metadata.managedFields]}
  b: {api_version: v1, kind: Secret, store: on-demand, cache: {max_entries: 99}, ignore_fields: [data]}
  c: {api_version: v1, kind: Secret, store: on-demand, cache: {max_entries: 10}, ignore_fields: [$.metadata.managedFields]}
  full: {api_version: v1, kind: Secret, ignore_fields: [data]}
  full2: {api_version: v1, kind: Secret}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let issues: Vec<String> = shared_watch_issues(&config).iter().map(ToString::to_string).collect();
        assert_eq!(issues.len(), 2, "{issues:#?}");
        assert!(
            issues[0].contains("watched_resources.b.cache: `b` and `a` share one watch (v1/Secret (metadata only))"),
            "{}",
            issues[0]
        );
        assert!(issues[0].contains("`cache` settings differ"), "{}", issues[0]);
        assert!(
            issues[1].contains("watched_resources.b.ignore_fields: `b` and `a`"),
            "{}",
            issues[1]
        );
    }
}
