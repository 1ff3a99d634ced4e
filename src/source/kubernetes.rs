//! The Kubernetes API as a source: kube-rs watchers over `DynamicObject`, for
//! any kind the server serves (CRDs included), resolved by discovery at start.
//!
//! Each watch runs one kube-rs watcher per namespace (or one for all), with
//! server-side selectors, backoff on errors and resume from the last
//! resourceVersion (kube-rs does both). Listings are buffered until complete
//! and reported as one [`Event::Listed`], so a re-list (after 410 Gone or a
//! reconnect) replaces a store atomically.

use std::path::Path;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Event, Scope, SourceEvent, Watch};
use crate::store::on_demand::Fetch;

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
        source: kube::Error,
    },
    /// A watch stream ended, which kube-rs watchers never do on their own.
    #[error("the watch of {0} ended unexpectedly")]
    WatchEnded(String),
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

/// Builds a client from a kubeconfig, or the in-cluster configuration when
/// running in a pod without one.
pub async fn client(connect: &Connect<'_>) -> Result<Client> {
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
    Client::try_from(config).map_err(|e| Error::Config(e.to_string()))
}

/// A watch's kind as the server serves it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Resolves every watch's kind by discovery; an unknown kind is an error
/// naming the `watched_resources` entries that use it.
pub async fn resolve(client: &Client, watches: &[Watch]) -> Result<Vec<Resolved>> {
    let mut resolved = Vec::with_capacity(watches.len());
    for watch in watches {
        let (group, version) = match watch.spec.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", watch.spec.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &watch.spec.kind);
        let (resource, capabilities) =
            kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|source| Error::UnknownKind {
                    stores: watch.stores.join("`, `"),
                    api_version: watch.spec.api_version.clone(),
                    kind: watch.spec.kind.clone(),
                    source,
                })?;
        resolved.push(Resolved {
            resource,
            namespaced: capabilities.scope == kube::discovery::Scope::Namespaced,
        });
    }
    Ok(resolved)
}

/// The scopes a watch lists separately: one per namespace, or everything.
pub fn scopes(watch: &Watch, resolved: &Resolved) -> Vec<Scope> {
    if resolved.namespaced && !watch.spec.namespaces.is_empty() {
        watch.spec.namespaces.iter().cloned().map(Some).collect()
    } else {
        vec![None]
    }
}

/// Options of the watchers.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchOptions {
    /// Use streaming lists (WatchList) instead of paged LISTs.
    pub streaming_lists: bool,
}

/// Runs one watcher (one watch, one scope) until the receiver goes away,
/// sending its events as watch number `id`. A metadata-only watch (for an
/// on-demand store) asks the server for `PartialObjectMetadata`, so no object
/// body is ever sent or held.
pub async fn run_watch(
    client: Client,
    id: usize,
    watch: Watch,
    resolved: Resolved,
    scope: Scope,
    options: WatchOptions,
    tx: mpsc::Sender<SourceEvent>,
) -> Result<()> {
    let mut config = watcher::Config::default();
    if !watch.spec.labels.is_empty() {
        config = config.labels(watch.spec.labels.as_str());
    }
    if !watch.spec.fields.is_empty() {
        config = config.fields(watch.spec.fields.as_str());
    }
    if options.streaming_lists {
        config = config.streaming_lists();
    }
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
        tx,
    };
    if watch.spec.metadata_only {
        let api: Api<PartialObjectMeta<DynamicObject>> = match &scope {
            Some(namespace) => Api::namespaced_with(client, namespace, ar),
            None => Api::all_with(client, ar),
        };
        let stream = watcher(api, config).default_backoff();
        pump.run(stream, |meta| metadata_json(meta, ar)).await?;
    } else {
        let api: Api<DynamicObject> = match &scope {
            Some(namespace) => Api::namespaced_with(client, namespace, ar),
            None => Api::all_with(client, ar),
        };
        let stream = watcher(api, config).default_backoff();
        pump.run(stream, |object| to_json(object, ar)).await?;
    }
    Ok(())
}

/// Forwards one watcher's events to the pipeline.
struct Pump<'a> {
    id: usize,
    stores: String,
    name: &'a str,
    scope: &'a Scope,
    tx: mpsc::Sender<SourceEvent>,
}

impl Pump<'_> {
    /// Runs until the receiver goes away (`Ok`) or the stream ends (never, for
    /// a kube-rs watcher: an error).
    async fn run<K>(
        &self,
        stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
        json: impl Fn(K) -> Value,
    ) -> Result<()> {
        let mut stream = std::pin::pin!(stream);
        let mut listing: Option<Vec<Value>> = None;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(watcher::Event::Init) => {
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
                    Event::Listed {
                        scope: self.scope.clone(),
                        objects,
                    }
                }
                Ok(watcher::Event::Apply(object)) => Event::Applied(json(object)),
                Ok(watcher::Event::Delete(object)) => Event::Deleted(json(object)),
                Err(error) => {
                    tracing::warn!(stores = %self.stores, watch = %self.name, %error, "watch failed; retrying with backoff");
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

/// GETs object bodies for an on-demand store.
pub struct ApiFetch {
    client: Client,
    resolved: Resolved,
}

impl ApiFetch {
    pub fn new(client: Client, resolved: &Resolved) -> ApiFetch {
        ApiFetch {
            client,
            resolved: resolved.clone(),
        }
    }
}

impl Fetch for ApiFetch {
    fn fetch(&self, namespace: &str, name: &str) -> BoxFuture<'static, std::result::Result<Option<Value>, String>> {
        let ar = self.resolved.resource.clone();
        let api: Api<DynamicObject> = if self.resolved.namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        let name = name.to_string();
        async move {
            match api.get_opt(&name).await {
                Ok(object) => Ok(object.map(|o| to_json(o, &ar))),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}

/// The object as JSON, with `apiVersion` and `kind` set (list items of
/// built-in kinds come without them).
fn to_json(object: DynamicObject, resource: &ApiResource) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(resource.api_version.clone()));
        map.entry("kind")
            .or_insert_with(|| Value::String(resource.kind.clone()));
    }
    value
}
