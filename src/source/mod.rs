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
mod plan;
pub mod selected;
mod streams;

pub use plan::{Watch, WatchSpec, plan, shared_watch_issues};
use streams::{Stream, WatchStreams, resolve_until_reachable};

pub use selected::Namespaces;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Config, StoreKind};
use crate::object::document::Document;
use crate::store::on_demand::BodyCache;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::CacheMetrics;

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
