//! The watch streams of each watch: one per namespace (or one for all),
//! started once discovery has resolved the kind, retried while the API
//! server cannot be reached or does not serve the kind yet.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Scope, SourceEvent, Watch, kubernetes, selected};
use crate::telemetry::Telemetry;

/// One watch stream's place in the status.
pub(super) struct Stream {
    pub(super) scope: Scope,
    pub(super) index: usize,
    pub(super) activity: Arc<crate::telemetry::activity::Activity>,
}

/// A watch and what its streams need, started at once or, for a kind the
/// server does not serve yet, once discovery finds it.
pub(super) struct WatchStreams {
    pub(super) client: kube::Client,
    pub(super) client_config: kube::Config,
    pub(super) id: usize,
    pub(super) watch: Watch,
    /// The scopes the pipeline waits for. A kind not served yet is taken as
    /// namespaced; if it turns out cluster-scoped, its one listing of
    /// everything stands for all of them.
    pub(super) streams: Vec<Stream>,
    pub(super) fetch: Option<Arc<kubernetes::ApiFetch>>,
    pub(super) options: kubernetes::WatchOptions,
    pub(super) lists: Arc<kubernetes::ListMode>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) tx: mpsc::Sender<SourceEvent>,
    /// The Namespaces there are, for a namespace selector.
    pub(super) namespaces: selected::Following,
}

impl WatchStreams {
    /// The watch tasks of a resolved kind.
    pub(super) fn tasks(
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
    pub(super) async fn run_when_served(self, unknown: kubernetes::Error) -> kubernetes::Result<()> {
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
pub(super) async fn resolve_until_reachable(
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
