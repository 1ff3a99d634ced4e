//! Watches over the namespaces a label selector picks (`namespace_selector`).
//!
//! A resource with a namespace selector is watched by one watcher per
//! selected namespace, started and stopped as Namespaces are created,
//! relabelled and deleted; which namespaces there are, and their labels,
//! comes from one metadata-only watch of Namespaces that every selector
//! shares ([`follow_namespaces`]).
//!
//! Per-namespace watches, not one cluster-wide watch filtered here:
//! - RBAC: teams that share a cluster get Roles in their own namespaces.
//!   Per-namespace watches need `list`/`watch` on the kind only in the
//!   selected namespaces (plus `list`/`watch` on Namespaces, cluster-wide);
//!   a cluster-wide watch would need them on the kind in every namespace.
//! - API server cost: a namespaced watch is served from the watch cache and
//!   sends only that namespace's objects; a cluster-wide one sends every
//!   object of the kind in the cluster, most of them to be thrown away here.
//!   A selector picks a few namespaces of many, so a few small watches cost
//!   the server (and this process) far less than one that carries all.
//! - A namespace that enters the selection needs its objects listed: its own
//!   watcher lists them. A cluster-wide watch would have to keep every
//!   unselected object, or list again, to have them at hand.
//!
//! A namespace that leaves the selection (relabelled or deleted) has its
//! watcher stopped and an empty listing of its scope reported at once, as a
//! re-list would: its objects leave the stores in one step. Events its
//! stopped watcher had still queued are dropped.
//!
//! The first listing waits for every namespace selected at the start, and
//! reports them as one listing of everything, so the first render sees all
//! of them or waits; a selector that matches no namespace lists nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::ApiResource;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::kubernetes::{self, ListMode, Reporting, Resolved, WatchOptions, WatchTask};
use super::{Event, SourceEvent, Watch, WatchSpec};
use crate::object::document::Document;
use crate::object::{Meta, ObjectId};
use crate::telemetry::Telemetry;
use crate::telemetry::activity::Activity;

/// The namespaces there are, by name, each as `{"metadata": {"labels": …}}`:
/// what a namespace selector is matched against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespaces(BTreeMap<String, Value>);

impl Namespaces {
    /// The `v1` Namespace objects among `objects` (offline: the manifests).
    pub fn among<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Namespaces {
        Namespaces(
            objects
                .into_iter()
                .filter(|o| {
                    o.get("apiVersion") == Some(&Value::from("v1")) && o.get("kind") == Some(&Value::from("Namespace"))
                })
                .filter_map(|o| {
                    let name = o.pointer("/metadata/name")?.as_str()?;
                    Some((name.to_string(), Namespaces::labels_of(o)))
                })
                .collect(),
        )
    }

    /// What of a Namespace object a selector needs: its labels.
    fn labels_of(object: &Value) -> Value {
        let labels = object.pointer("/metadata/labels").cloned().unwrap_or(Value::Null);
        serde_json::json!({ "metadata": { "labels": labels } })
    }

    /// The labels of `namespace`, if there is such a namespace.
    pub fn labels(&self, namespace: &str) -> Option<&Value> {
        self.0.get(namespace)
    }
}

/// The one watch of Namespaces that every namespace selector follows
/// publishing to `publish`; on the status page as a watch of
/// its own, and not waited for by the pipeline: the selectors' watches wait
/// for it.
pub fn namespace_task(
    client_config: &kube::Config,
    options: WatchOptions,
    lists: &Arc<ListMode>,
    telemetry: &Arc<Telemetry>,
    publish: tokio::sync::watch::Sender<Option<Arc<Namespaces>>>,
) -> kubernetes::Result<BoxFuture<'static, kubernetes::Result<()>>> {
    let watch = namespace_watch();
    let activity = telemetry.status.activity();
    let index = telemetry.status.add_watch(
        format!("{} for namespace_selector", watch.spec.describe()),
        Arc::clone(&activity),
        Some(options.silence_limit()),
    );
    let (tx, events) = mpsc::channel(super::QUEUE);
    let task = WatchTask {
        client: kubernetes::watched_client(client_config, activity)?,
        id: 0,
        watch,
        resolved: namespaces_resolved(),
        scope: None,
        options,
        lists: Arc::clone(lists),
        reporting: Reporting {
            telemetry: Arc::clone(telemetry),
            index,
        },
        tx,
    };
    Ok(follow_namespaces(task, events, publish).boxed())
}

/// The Namespaces there are, once the namespace watch listed them.
pub type Following = watch::Receiver<Option<Arc<Namespaces>>>;

/// The watch of Namespaces that namespace selectors share: metadata only
/// (their labels are all a selector reads).
pub fn namespace_watch() -> Watch {
    Watch {
        spec: WatchSpec {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespaces: Vec::new(),
            labels: Default::default(),
            namespace_labels: Default::default(),
            fields: Default::default(),
            metadata_only: true,
        },
        stores: vec!["namespace_selector".into()],
        omit: Vec::new(),
    }
}

/// Namespaces as the API serves them (a built-in kind: no discovery needed).
pub fn namespaces_resolved() -> Resolved {
    Resolved {
        resource: ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
        namespaced: false,
    }
}

/// Runs `task` (a [`namespace_watch`]) and publishes the Namespaces it sees
/// after every change, once they are listed, until nobody follows them.
pub async fn follow_namespaces(
    task: WatchTask,
    mut events: mpsc::Receiver<SourceEvent>,
    publish: watch::Sender<Option<Arc<Namespaces>>>,
) -> kubernetes::Result<()> {
    let convert = async move {
        let mut current = Namespaces::default();
        let mut listed = false;
        let name = |document: &Document| Meta::of(document.root()).name.to_string();
        while let Some(SourceEvent { event, .. }) = events.recv().await {
            match event {
                Event::Listed { objects, .. } => {
                    listed = true;
                    current.0 = objects
                        .iter()
                        .map(|d| (name(d), Namespaces::labels_of(&d.to_json())))
                        .collect();
                }
                Event::Applied(document) => {
                    current
                        .0
                        .insert(name(&document), Namespaces::labels_of(&document.to_json()));
                }
                Event::Deleted(document) => {
                    current.0.remove(&name(&document));
                }
            }
            if listed && publish.send(Some(Arc::new(current.clone()))).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        ended = task.run() => ended,
        () = convert => Ok(()),
    }
}

/// One watch with a namespace selector over a namespaced kind: what its
/// per-namespace watchers need.
pub struct SelectedWatch {
    pub client_config: kube::Config,
    /// The watch's index in the plan.
    pub id: usize,
    pub watch: Watch,
    pub resolved: Resolved,
    pub options: WatchOptions,
    pub lists: Arc<ListMode>,
    /// One status entry and liveness for all its watchers.
    pub reporting: Reporting,
    pub activity: Arc<Activity>,
    pub tx: mpsc::Sender<SourceEvent>,
}

/// A selected namespace's watcher: its serial number (what its events carry)
/// and how to stop it.
struct Running {
    serial: usize,
    handle: AbortHandle,
}

impl SelectedWatch {
    /// Follows `namespaces`, keeping one watcher per selected namespace,
    /// until the pipeline goes away (`Ok`) or a watcher fails.
    pub fn run(self, namespaces: Following) -> BoxFuture<'static, kubernetes::Result<()>> {
        self.follow(namespaces).boxed()
    }

    async fn follow(self, mut namespaces: Following) -> kubernetes::Result<()> {
        let (child_tx, mut child_rx) = mpsc::channel(super::QUEUE);
        let mut children: JoinSet<kubernetes::Result<()>> = JoinSet::new();
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let mut serial = 0;
        // Until every namespace selected at the start has listed: what each
        // holds (`None`: not listed yet).
        let mut initial: Option<BTreeMap<String, Option<BTreeMap<ObjectId, Document>>>> = Some(BTreeMap::new());
        let mut namespaces_listed = false;
        let stores = self.watch.stores.join(",");
        namespaces.mark_changed();
        loop {
            tokio::select! {
                changed = namespaces.changed() => {
                    if changed.is_err() {
                        // The namespace watch ended; its own task says why.
                        return Ok(());
                    }
                    let Some(current) = namespaces.borrow_and_update().clone() else { continue };
                    namespaces_listed = true;
                    let wanted: BTreeSet<&String> = current
                        .0
                        .iter()
                        .filter(|(name, labels)| self.watch.spec.in_namespace(name, Some(labels)))
                        .map(|(name, _)| name)
                        .collect();
                    let left: Vec<String> = running.keys().filter(|n| !wanted.contains(n)).cloned().collect();
                    for namespace in left {
                        if let Some(child) = running.remove(&namespace) {
                            child.handle.abort();
                        }
                        tracing::info!(stores = %stores, %namespace, "namespace left the selection; its objects are gone");
                        match &mut initial {
                            Some(pending) => {
                                pending.remove(&namespace);
                            }
                            None => {
                                let gone = Event::Listed { scope: Some(namespace), objects: Vec::new() };
                                if !self.send(gone).await {
                                    return Ok(());
                                }
                            }
                        }
                    }
                    for namespace in wanted {
                        if running.contains_key(namespace) {
                            continue;
                        }
                        serial += 1;
                        tracing::info!(stores = %stores, %namespace, "namespace entered the selection; watching it");
                        let task = self.child(namespace, serial, child_tx.clone())?;
                        let handle = children.spawn(task.run());
                        running.insert(namespace.clone(), Running { serial, handle });
                        if let Some(pending) = &mut initial {
                            pending.insert(namespace.clone(), None);
                        }
                    }
                }
                Some(SourceEvent { watch: from, event }) = child_rx.recv() => {
                    let Some(namespace) = running.iter().find(|(_, c)| c.serial == from).map(|(n, _)| n.clone()) else {
                        continue;
                    };
                    match &mut initial {
                        Some(pending) => hold(pending.entry(namespace).or_default(), event),
                        None => {
                            if !self.send(event).await {
                                return Ok(());
                            }
                        }
                    }
                }
                Some(ended) = children.join_next() => match ended {
                    Err(error) if error.is_cancelled() => {}
                    Err(error) => return Err(kubernetes::Error::WatchEnded(format!("{} ({error})", self.watch.spec.describe()))),
                    // `Ok(())`: the pipeline went away.
                    Ok(result) => return result,
                },
            }
            if namespaces_listed && let Some(pending) = initial.take_if(|pending| pending.values().all(Option::is_some))
            {
                let objects: Vec<Document> = pending
                    .into_values()
                    .flatten()
                    .flat_map(BTreeMap::into_values)
                    .collect();
                tracing::debug!(stores = %stores, objects = objects.len(), "selected namespaces listed");
                self.reporting.telemetry.status.watch_synced(self.reporting.index);
                if !self.send(Event::Listed { scope: None, objects }).await {
                    return Ok(());
                }
            }
        }
    }

    /// The watcher of one selected namespace, reporting as number `serial`.
    fn child(&self, namespace: &str, serial: usize, tx: mpsc::Sender<SourceEvent>) -> kubernetes::Result<WatchTask> {
        Ok(WatchTask {
            client: kubernetes::watched_client(&self.client_config, Arc::clone(&self.activity))?,
            id: serial,
            watch: self.watch.clone(),
            resolved: self.resolved.clone(),
            scope: Some(namespace.to_string()),
            options: self.options,
            lists: Arc::clone(&self.lists),
            reporting: self.reporting.clone(),
            tx,
        })
    }

    /// Sends `event` as this watch's; false when the pipeline went away.
    async fn send(&self, event: Event) -> bool {
        self.tx.send(SourceEvent { watch: self.id, event }).await.is_ok()
    }
}

/// Applies a watcher's event to what its namespace holds before the first
/// listing; changes before its own listing cannot come (a watcher lists first).
fn hold(held: &mut Option<BTreeMap<ObjectId, Document>>, event: Event) {
    let id = |document: &Document| Meta::of(document.root()).id;
    match (event, held) {
        (Event::Listed { objects, .. }, held) => *held = Some(objects.into_iter().map(|d| (id(&d), d)).collect()),
        (Event::Applied(document), Some(held)) => {
            held.insert(id(&document), document);
        }
        (Event::Deleted(document), Some(held)) => {
            held.remove(&id(&document));
        }
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(uid: &str, name: &str) -> Document {
        Document::from_json(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"uid": uid, "namespace": "a", "name": name}
        }))
    }

    #[test]
    fn changes_before_the_first_listing_are_held_per_namespace() {
        let mut held = None;
        hold(&mut held, Event::Applied(doc("1", "early")));
        assert!(held.is_none());
        hold(
            &mut held,
            Event::Listed {
                scope: Some("a".into()),
                objects: vec![doc("1", "x"), doc("2", "y")],
            },
        );
        hold(&mut held, Event::Deleted(doc("1", "x")));
        hold(&mut held, Event::Applied(doc("3", "z")));
        let names: Vec<String> = held
            .unwrap()
            .values()
            .map(|d| Meta::of(d.root()).name.to_string())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"y".to_string()) && names.contains(&"z".to_string()));
    }

    #[test]
    fn a_selector_and_namespaces_select_the_intersection() {
        let spec = WatchSpec {
            namespaces: vec!["a".into(), "b".into()],
            namespace_labels: crate::object::selector::LabelSelector::parse("team=payments").unwrap(),
            ..namespace_watch().spec
        };
        let labels = |team: &str| serde_json::json!({"metadata": {"labels": {"team": team}}});
        assert!(spec.in_namespace("a", Some(&labels("payments"))));
        assert!(!spec.in_namespace("b", Some(&labels("search"))));
        assert!(!spec.in_namespace("c", Some(&labels("payments"))));
        assert!(!spec.in_namespace("a", None));
    }
}
