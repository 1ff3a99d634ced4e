//! The Kubernetes API as a source: kube-rs watchers for any kind the server
//! serves (CRDs included), resolved by discovery at start, whose objects are
//! decoded straight into documents (see [`decode`]).
//!
//! Each watch runs one kube-rs watcher per namespace (or one for all), with
//! server-side selectors, backoff on errors and resume from the last
//! resourceVersion (kube-rs does both). Listings are buffered until complete
//! and reported as one [`Event::Listed`], so a re-list (after 410 Gone or a
//! reconnect) replaces a store atomically.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::mpsc;

mod activity;
mod decode;
mod fetch;
mod watch_errors;

pub use activity::watched_client;
pub use fetch::ApiFetch;

use super::{Event, Scope, SourceEvent, Watch};
use crate::object::decode::Shape;
use crate::object::document::Document;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::WatchLabel;
use decode::{Shaped, Watched};
use watch_errors::{connection_lost, describe, lacks_streaming_lists};

/// Why the Kubernetes source could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable client configuration (kubeconfig, context, in-cluster).
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// A watched kind is not served by the API server.
    #[error("watched_resources `{stores}`: the API server does not serve {api_version} {kind}: {source}")]
    UnknownKind {
        stores: String,
        api_version: String,
        kind: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// A watch stream ended, which kube-rs watchers never do on their own.
    #[error("the watch of {0} ended unexpectedly")]
    WatchEnded(String),
    /// The API server could not be reached, or answered that it cannot serve
    /// now (5xx, 429); worth trying again.
    #[error("cannot reach the API server: {0}")]
    Unreachable(#[source] Box<kube::Error>),
}

/// Whether `error` says the API server could not be reached (no connection,
/// or one that broke) or cannot serve now, rather than that it refused or
/// could not understand the request.
fn unavailable(error: &kube::Error) -> bool {
    match error {
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => false,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach the cluster.
#[derive(Debug, Clone, Default)]
pub struct Connect<'a> {
    /// A kubeconfig file (else `KUBECONFIG`, `~/.kube/config`, or in-cluster).
    pub kubeconfig: Option<&'a Path>,
    /// A context of the kubeconfig other than its current one.
    pub context: Option<&'a str>,
}

/// Finds the client configuration: a kubeconfig, or the in-cluster
/// configuration when running in a pod without one.
pub async fn client_config(connect: &Connect<'_>) -> Result<kube::Config> {
    let options = KubeConfigOptions {
        context: connect.context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match connect.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
        }
        None if connect.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        None => kube::Config::infer().await.map_err(|e| Error::Config(e.to_string()))?,
    };
    if config.accept_invalid_certs {
        tracing::warn!(
            server = %config.cluster_url,
            "insecure-skip-tls-verify is set: the API server's certificate is not verified"
        );
    }
    Ok(config)
}

/// A watch's kind as the server serves it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Resolves every watch's kind by discovery; an unknown kind is an error
/// naming the `watched_resources` entries that use it, a server that cannot
/// be reached is [`Error::Unreachable`].
pub async fn resolve(client: &Client, watches: &[Watch]) -> Result<Vec<Resolved>> {
    let mut resolved = Vec::with_capacity(watches.len());
    for watch in watches {
        resolved.push(resolve_one(client, watch).await?);
    }
    Ok(resolved)
}

/// Resolves one watch's kind by discovery (see [`resolve`]).
pub async fn resolve_one(client: &Client, watch: &Watch) -> Result<Resolved> {
    let (group, version) = match watch.spec.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", watch.spec.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &watch.spec.kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk).await.map_err(|source| {
        if unavailable(&source) {
            return Error::Unreachable(Box::new(source));
        }
        Error::UnknownKind {
            stores: watch.stores.join("`, `"),
            api_version: watch.spec.api_version.clone(),
            kind: watch.spec.kind.clone(),
            source: Box::new(source),
        }
    })?;
    Ok(Resolved {
        resource,
        namespaced: capabilities.scope == kube::discovery::Scope::Namespaced,
    })
}

/// The scopes a watch lists separately: one per namespace, or everything
/// (also for a namespace selector, whose first listing covers every
/// namespace it selects: see [`super::selected`]).
pub fn scopes(watch: &Watch, resolved: &Resolved) -> Vec<Scope> {
    if resolved.namespaced && !watch.spec.namespaces.is_empty() && watch.spec.namespace_labels.is_empty() {
        watch.spec.namespaces.iter().cloned().map(Some).collect()
    } else {
        vec![None]
    }
}

/// Options of the watchers.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Use streaming lists (WatchList) instead of paged LISTs.
    pub streaming_lists: bool,
    /// `timeoutSeconds` of each watch request; a watch silent for longer
    /// (plus a few seconds) counts as stalled.
    pub timeout: std::time::Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            streaming_lists: false,
            timeout: std::time::Duration::from_secs(290),
        }
    }
}

impl WatchOptions {
    /// How long a watch may be silent, its connection open, before `/healthz`
    /// reports it hung.
    pub fn silence_limit(&self) -> std::time::Duration {
        self.timeout + std::time::Duration::from_secs(5)
    }
}

/// Whether watches may still use streaming lists: the first watch that finds
/// the server lacks them (Kubernetes before 1.27, or WatchList disabled)
/// turns them off for every watch, and only it says so.
#[derive(Debug, Default)]
pub struct ListMode {
    unsupported: AtomicBool,
}

impl ListMode {
    fn streaming(&self, asked: bool) -> bool {
        asked && !self.unsupported.load(Ordering::Relaxed)
    }

    /// Records that the server lacks streaming lists; whether this was news.
    fn unsupported(&self) -> bool {
        !self.unsupported.swap(true, Ordering::Relaxed)
    }
}

/// Where a watch stream reports to.
#[derive(Debug, Clone)]
pub struct Reporting {
    pub telemetry: Arc<Telemetry>,
    /// The stream's index in the status.
    pub index: usize,
}

/// One watcher (one watch, one scope), run until the receiver goes away,
/// sending its events as watch number `id`. A metadata-only watch (for an
/// on-demand store) asks the server for `PartialObjectMetadata`, so no object
/// body is ever sent or held.
pub struct WatchTask {
    pub client: Client,
    /// The watch's index in the plan.
    pub id: usize,
    pub watch: Watch,
    pub resolved: Resolved,
    pub scope: Scope,
    pub options: WatchOptions,
    /// Shared by every watch of the run.
    pub lists: Arc<ListMode>,
    pub reporting: Reporting,
    pub tx: mpsc::Sender<SourceEvent>,
}

impl WatchTask {
    /// Runs until the receiver goes away.
    pub async fn run(self) -> Result<()> {
        let WatchTask {
            client,
            id,
            watch,
            resolved,
            scope,
            options,
            lists,
            reporting,
            tx,
        } = self;
        run_watch(client, id, watch, resolved, scope, options, lists, reporting, tx).await
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    client: Client,
    id: usize,
    watch: Watch,
    resolved: Resolved,
    scope: Scope,
    options: WatchOptions,
    lists: Arc<ListMode>,
    reporting: Reporting,
    tx: mpsc::Sender<SourceEvent>,
) -> Result<()> {
    let mut config = watcher::Config::default().timeout(options.timeout.as_secs().max(1) as u32);
    if !watch.spec.labels.is_empty() {
        config = config.labels(watch.spec.labels.as_str());
    }
    if !watch.spec.fields.is_empty() {
        config = config.fields(watch.spec.fields.as_str());
    }
    let paged = config.clone();
    let streaming = config.streaming_lists();
    let config = |streaming_lists: bool| {
        if lists.streaming(streaming_lists) {
            streaming.clone()
        } else {
            paged.clone()
        }
    };
    let asked = options.streaming_lists;
    let name = match &scope {
        Some(namespace) => format!("{} (namespace {namespace})", watch.spec.describe()),
        None => watch.spec.describe(),
    };
    let ar = &resolved.resource;
    let pump = Pump {
        id,
        stores: watch.stores.join(","),
        name: &name,
        scope: &scope,
        reporting,
        tx,
        lists: &lists,
        streaming: asked,
    };
    if watch.spec.metadata_only {
        let api: Api<PartialObjectMeta<DynamicObject>> = match &scope {
            Some(namespace) => Api::namespaced_with(client, namespace, ar),
            None => Api::all_with(client, ar),
        };
        let start = |streaming| watcher(api.clone(), config(streaming)).default_backoff();
        pump.run(start, |meta| watch.document(&metadata_json(meta, ar))).await?;
    } else {
        let api: Api<Watched> = match &scope {
            Some(namespace) => Api::namespaced_with(client, namespace, ar),
            None => Api::all_with(client, ar),
        };
        let shape = Arc::new(Shape {
            omit: watch.omit.clone(),
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
        let start = |streaming| Shaped::new(watcher(api.clone(), config(streaming)).default_backoff(), shape.clone());
        pump.run(start, |object: Watched| object.document).await?;
    }
    Ok(())
}

/// Forwards one watcher's events to the pipeline.
struct Pump<'a> {
    id: usize,
    stores: String,
    name: &'a str,
    scope: &'a Scope,
    reporting: Reporting,
    tx: mpsc::Sender<SourceEvent>,
    lists: &'a ListMode,
    /// Whether streaming lists were asked for.
    streaming: bool,
}

impl Pump<'_> {
    /// Runs watchers made by `start` until the receiver goes away (`Ok`) or a
    /// stream ends (never, for a kube-rs watcher: an error).
    ///
    /// A watcher that lost its connection after it had listed is replaced by
    /// a fresh one, which lists again instead of resuming from its
    /// resourceVersion: the server it reaches next may have another history
    /// (its storage restored from a backup, a new cluster at the same address),
    /// where that version is one it has not reached yet, and a watch from it
    /// would wait for it, silently, however the objects change meanwhile. The
    /// fresh listing replaces the stores at once.
    ///
    /// A server without streaming lists (it rejects the watch that would
    /// start one) gets paged lists instead, from this watcher on.
    async fn run<K, S>(&self, start: impl Fn(bool) -> S, json: impl Fn(K) -> Document) -> Result<()>
    where
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    {
        let mut streaming = self.lists.streaming(self.streaming);
        let mut stream = Box::pin(start(streaming));
        // The last failure logged as a warning: a lasting one is said once.
        let mut warned: Option<String> = None;
        // This watcher has listed, so it would resume from a resourceVersion.
        let mut listed = false;
        let mut listing: Option<Vec<Document>> = None;
        let status = &self.reporting.telemetry.status;
        let label = WatchLabel {
            watch: self.name.to_string(),
        };
        let mut failing = false;
        while let Some(item) = stream.next().await {
            // `Init` comes before every listing attempt, failing ones too: no sign of life.
            let alive = matches!(&item, Ok(event) if !matches!(event, watcher::Event::Init));
            if alive && failing {
                failing = false;
                status.watch_error(self.reporting.index, None);
                if warned.take().is_some() {
                    tracing::info!(stores = %self.stores, watch = %self.name, "watch recovered");
                }
            }
            let event = match item {
                Ok(watcher::Event::Init) => {
                    listed = false;
                    listing = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.get_or_insert_with(Vec::new).push(json(object));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let objects = listing.take().unwrap_or_default();
                    tracing::debug!(stores = %self.stores, watch = %self.name, objects = objects.len(), "listed");
                    status.watch_synced(self.reporting.index);
                    listed = true;
                    Event::Listed {
                        scope: self.scope.clone(),
                        objects,
                    }
                }
                Ok(watcher::Event::Apply(object)) => Event::Applied(json(object)),
                Ok(watcher::Event::Delete(object)) => Event::Deleted(json(object)),
                Err(error) if streaming && lacks_streaming_lists(&error) => {
                    if self.lists.unsupported() {
                        tracing::warn!(
                            stores = %self.stores,
                            watch = %self.name,
                            error = %describe(&error),
                            "the API server does not support streaming lists (WatchList, Kubernetes 1.27+); \
                             using paged lists"
                        );
                    }
                    streaming = false;
                    stream = Box::pin(start(false));
                    continue;
                }
                Err(error) => {
                    let described = describe(&error);
                    if warned.as_deref() == Some(described.as_str()) {
                        tracing::debug!(stores = %self.stores, watch = %self.name, error = %described, "watch still failing; retrying with backoff");
                    } else {
                        tracing::warn!(stores = %self.stores, watch = %self.name, error = %described, "watch failed; retrying with backoff");
                        warned = Some(described.clone());
                    }
                    failing = true;
                    status.watch_error(self.reporting.index, Some(described));
                    self.reporting
                        .telemetry
                        .metrics
                        .watch_restarts
                        .get_or_create(&label)
                        .inc();
                    if listed && connection_lost(&error) {
                        tracing::info!(stores = %self.stores, watch = %self.name, "connection to the API server lost; listing again");
                        stream = Box::pin(start(streaming));
                        listed = false;
                    }
                    continue;
                }
            };
            if self.tx.send(SourceEvent { watch: self.id, event }).await.is_err() {
                return Ok(());
            }
        }
        Err(Error::WatchEnded(self.name.to_string()))
    }
}

/// The metadata of an object as JSON: `{apiVersion, kind, metadata}`.
fn metadata_json(meta: PartialObjectMeta<DynamicObject>, resource: &ApiResource) -> Value {
    serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": serde_json::to_value(meta.metadata).unwrap_or(Value::Null),
    })
}

/// The object as JSON, with `apiVersion` and `kind` set (list items of
/// built-in kinds come without them). The body is moved, not copied.
fn to_json(object: DynamicObject, resource: &ApiResource) -> Value {
    let DynamicObject { types, metadata, data } = object;
    let mut map = match data {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let (api_version, kind) = match types {
        Some(types) => (types.api_version, types.kind),
        None => (resource.api_version.clone(), resource.kind.clone()),
    };
    map.insert("apiVersion".into(), Value::String(api_version));
    map.insert("kind".into(), Value::String(kind));
    map.insert("metadata".into(), serde_json::to_value(metadata).unwrap_or(Value::Null));
    Value::Object(map)
}
