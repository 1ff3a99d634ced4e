//! The fake API server in `support::fake_api` against kube-rs 5's own clients:
//! if these pass, kube's `Api`, discovery and `watcher` accept what it serves.

mod support;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, WatchEvent, WatchParams};
use kube::discovery::{self, Discovery, Scope};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use support::fake_api::{FakeApiServer, Fault, INITIAL_EVENTS_END, Verb};
use tokio::time::timeout;

/// Upper bound for any single test; they normally take well under a second (the
/// backoff test a few seconds).
const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// Upper bound for one expected event.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

async fn within_deadline(test: impl Future<Output = ()>) {
    timeout(TEST_DEADLINE, test)
        .await
        .expect("test did not finish before its deadline");
}

fn config_map(name: &str, labels: Value, data: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "data": {"value": data},
    })
}

/// The next item of `stream`; fails the test if none comes in time or the stream ends.
async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    timeout(EVENT_DEADLINE, stream.next())
        .await
        .expect("no item before the deadline")
        .expect("stream ended")
}

/// Reads a watcher stream up to the end of a (re-)list and returns the names it listed.
async fn initial_sync<K, S>(stream: &mut S) -> BTreeSet<String>
where
    K: Resource + Debug,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    initial_sync_counting_errors(stream).await.0
}

/// Like [`initial_sync`], also counting the errors the watcher reported (it starts
/// the list over after each).
async fn initial_sync_counting_errors<K, S>(stream: &mut S) -> (BTreeSet<String>, usize)
where
    K: Resource + Debug,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let (mut listed, mut errors) = (None, 0);
    loop {
        match next(stream).await {
            Ok(Event::Init) => listed = Some(BTreeSet::new()),
            Ok(Event::InitApply(object)) => {
                let name = object.meta().name.clone().unwrap_or_default();
                listed.as_mut().expect("InitApply after Init").insert(name);
            }
            Ok(Event::InitDone) => return (listed.expect("InitDone after Init"), errors),
            Ok(other) => panic!("expected Init, InitApply or InitDone, got {other:?}"),
            Err(_) => {
                errors += 1;
                listed = None;
            }
        }
    }
}

/// Polls `stream` in a background task: a watcher only makes requests while polled,
/// and a test sometimes has to wait for one without reading events.
fn forward<T: Send + 'static>(
    mut stream: impl Stream<Item = T> + Send + Unpin + 'static,
) -> mpsc::UnboundedReceiver<T> {
    let (sender, receiver) = mpsc::unbounded();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if sender.unbounded_send(item).is_err() {
                break;
            }
        }
    });
    receiver
}

fn names<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

async fn raw_get(client: &kube::Client, uri: &str) -> Value {
    let request = hyper::Request::get(uri).body(Vec::new()).expect("valid request");
    let text = client.request_text(request).await.expect("request succeeds");
    serde_json::from_str(&text).expect("JSON response")
}

fn api_status(result: Result<impl Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn list_with_limit_pages_through_one_consistent_snapshot() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        for i in 0..5 {
            server.apply(config_map(&format!("cm-{i}"), json!({}), "x"));
        }
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");

        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let snapshot_rv = first.metadata.resource_version.clone().unwrap();
        assert_eq!(snapshot_rv, server.resource_version().to_string());
        // Changes after the first page are not part of the paged snapshot.
        server.apply(config_map("cm-late", json!({}), "x"));
        server.delete("v1", "ConfigMap", "default", "cm-4").unwrap();

        let mut listed: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
        let mut token = first.metadata.continue_.clone();
        while let Some(t) = token.filter(|t| !t.is_empty()) {
            let page = api
                .list(&ListParams::default().limit(2).continue_token(&t))
                .await
                .unwrap();
            assert_eq!(page.metadata.resource_version.as_deref(), Some(snapshot_rv.as_str()));
            listed.extend(page.items.iter().map(|c| c.name_any()));
            token = page.metadata.continue_;
        }
        assert_eq!(listed, ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4"]);

        // A new list shows the new state, under the new version.
        let now = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(now.items.len(), 5);
        assert_eq!(
            now.metadata.resource_version,
            Some(server.resource_version().to_string())
        );

        // resourceVersion=0 is served whole, whatever the limit.
        let client = server.client().await;
        let whole = raw_get(
            &client,
            "/api/v1/namespaces/default/configmaps?limit=2&resourceVersion=0",
        )
        .await;
        assert_eq!(whole["items"].as_array().unwrap().len(), 5);
        assert!(whole["metadata"].get("continue").is_none());

        // An expired continue token is a plain 410.
        let page = api.list(&ListParams::default().limit(2)).await.unwrap();
        server.compact();
        let token = page.metadata.continue_.unwrap();
        let expired = api.list(&ListParams::default().limit(2).continue_token(&token)).await;
        assert_eq!(api_status(expired), (410, "Expired".to_owned()));
    })
    .await;
}

#[tokio::test]
async fn list_applies_label_and_field_selectors() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("web", json!({"app": "web", "tier": "front"}), "x"));
        server.apply(config_map("db", json!({"app": "db", "tier": "back"}), "x"));
        server.apply(config_map("bare", json!({}), "x"));
        let mut other_ns = config_map("web", json!({"app": "web"}), "x");
        other_ns["metadata"]["namespace"] = json!("other");
        server.apply(other_ns);
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let listed = async |lp: ListParams| -> BTreeSet<String> {
            api.list(&lp)
                .await
                .unwrap()
                .items
                .iter()
                .map(|c| c.name_any())
                .collect()
        };

        let labels = |s: &str| ListParams::default().labels(s);
        assert_eq!(listed(labels("app=web")).await, names(["web"]));
        assert_eq!(listed(labels("app==web")).await, names(["web"]));
        assert_eq!(listed(labels("app!=web")).await, names(["bare", "db"]));
        assert_eq!(listed(labels("app in (web, db)")).await, names(["db", "web"]));
        assert_eq!(listed(labels("app notin (web)")).await, names(["bare", "db"]));
        assert_eq!(listed(labels("tier")).await, names(["db", "web"]));
        assert_eq!(listed(labels("!tier")).await, names(["bare"]));
        assert_eq!(listed(labels("app in (web,db),tier!=back")).await, names(["web"]));

        let fields = |s: &str| ListParams::default().fields(s);
        assert_eq!(listed(fields("metadata.name=db")).await, names(["db"]));
        assert_eq!(
            listed(fields("metadata.name!=db,metadata.namespace==default")).await,
            names(["bare", "web"])
        );
        let all: Api<ConfigMap> = Api::all(server.client().await);
        let other = all
            .list(&ListParams::default().fields("metadata.namespace=other"))
            .await
            .unwrap();
        assert_eq!(other.items.len(), 1);

        let bad_field = api.list(&fields("spec.nope=1")).await;
        assert_eq!(api_status(bad_field), (400, "BadRequest".to_owned()));
        let bad_label = api.list(&labels("app in (web")).await;
        assert_eq!(api_status(bad_label), (400, "BadRequest".to_owned()));
    })
    .await;
}

#[tokio::test]
async fn list_items_are_untyped_for_builtin_kinds_and_metadata_only_on_request() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"app": "web"}), "secret-ish"));
        let client = server.client().await;

        let raw = raw_get(&client, "/api/v1/namespaces/default/configmaps").await;
        assert_eq!(raw["kind"], "ConfigMapList");
        assert_eq!(raw["apiVersion"], "v1");
        let item = &raw["items"][0];
        assert!(item.get("apiVersion").is_none() && item.get("kind").is_none(), "{item}");
        assert_eq!(item["metadata"]["name"], "a");

        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let metadata = api.list_metadata(&ListParams::default()).await.unwrap();
        assert_eq!(metadata.items.len(), 1);
        let types = metadata.items[0].types.clone().unwrap();
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("meta.k8s.io/v1", "PartialObjectMetadata")
        );
        assert_eq!(metadata.items[0].labels().get("app").map(String::as_str), Some("web"));

        let one = api.get_metadata("a").await.unwrap();
        assert_eq!(one.name_any(), "a");
        assert_eq!(
            one.metadata.resource_version,
            Some(server.resource_version().to_string())
        );
    })
    .await;
}

#[tokio::test]
async fn get_returns_the_object_or_a_not_found_status() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let stored = server.apply(config_map("a", json!({}), "x"));
        assert!(stored["metadata"]["uid"].is_string());
        assert!(stored["metadata"]["creationTimestamp"].is_string());
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");

        let got = api.get("a").await.unwrap();
        assert_eq!(got.data.unwrap()["value"], "x");
        assert_eq!(got.metadata.uid.as_deref(), stored["metadata"]["uid"].as_str());
        assert_eq!(api_status(api.get("missing").await), (404, "NotFound".to_owned()));
        assert_eq!(server.get_count("configmaps"), 2);
    })
    .await;
}

#[tokio::test]
async fn writes_set_server_fields_and_reject_conflicts() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let created = server.create(config_map("a", json!({}), "1")).unwrap();
        let rv = server.resource_version();
        assert_eq!(
            server.create(config_map("a", json!({}), "1")).unwrap_err().reason,
            "AlreadyExists"
        );

        // Writing the same content again is a no-op: no new version.
        assert_eq!(server.apply(config_map("a", json!({}), "1")), created);
        assert_eq!(server.resource_version(), rv);

        let mut stale = config_map("a", json!({}), "2");
        stale["metadata"]["resourceVersion"] = json!("999");
        assert_eq!(server.update(stale).unwrap_err().code, 409);
        let mut fresh = config_map("a", json!({}), "2");
        fresh["metadata"]["resourceVersion"] = json!(rv.to_string());
        let updated = server.update(fresh).unwrap();
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(updated["metadata"]["resourceVersion"], json!((rv + 1).to_string()));
        assert_eq!(server.update(config_map("b", json!({}), "1")).unwrap_err().code, 404);

        let deleted = server.delete("v1", "ConfigMap", "default", "a").unwrap();
        assert_eq!(deleted["metadata"]["resourceVersion"], json!((rv + 2).to_string()));
        assert!(server.get_object("v1", "ConfigMap", "default", "a").is_none());
        assert!(server.delete("v1", "ConfigMap", "default", "a").is_none());
    })
    .await;
}

#[tokio::test]
async fn discovery_finds_builtin_kinds_with_their_scope() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let client = server.client().await;
        assert_eq!(client.apiserver_version().await.unwrap().minor, "34");

        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        for (group, kind, plural, scope) in [
            ("", "ConfigMap", "configmaps", Scope::Namespaced),
            ("", "Secret", "secrets", Scope::Namespaced),
            ("", "Service", "services", Scope::Namespaced),
            ("", "Namespace", "namespaces", Scope::Cluster),
            ("networking.k8s.io", "Ingress", "ingresses", Scope::Namespaced),
            ("discovery.k8s.io", "EndpointSlice", "endpointslices", Scope::Namespaced),
        ] {
            let gvk = GroupVersionKind::gvk(group, "v1", kind);
            let (resource, caps) = discovery
                .resolve_gvk(&gvk)
                .unwrap_or_else(|| panic!("{gvk:?} not found"));
            assert_eq!((resource.plural.as_str(), &caps.scope), (plural, &scope));
            let (pinned, _) = discovery::pinned_kind(&client, &gvk).await.unwrap();
            assert_eq!(pinned, resource);
        }

        // Aggregated discovery is not served: kube parses the plain answer as an empty
        // aggregated list, so callers must use `run()` or `pinned_kind`.
        let aggregated = Discovery::new(client.clone()).run_aggregated().await.unwrap();
        assert_eq!(aggregated.groups().count(), 0);

        // Cluster-scoped kinds are served without a namespace.
        server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}));
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
        assert_eq!(namespaces.get("team-a").await.unwrap().name_any(), "team-a");
        assert_eq!(namespaces.list(&ListParams::default()).await.unwrap().items.len(), 1);
    })
    .await;
}

/// Initial list, then create, update, no-op update and delete, through kube's watcher
/// over `DynamicObject` with the `ApiResource` found by discovery.
async fn watcher_sees_initial_list_then_changes(config: watcher::Config) -> FakeApiServer {
    let server = FakeApiServer::start().await;
    server.apply(config_map("a", json!({}), "1"));
    server.apply(config_map("b", json!({}), "1"));
    let client = server.client().await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (resource, _) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"))
        .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let mut events = watcher(api, config).boxed();

    assert_eq!(initial_sync(&mut events).await, names(["a", "b"]));

    server.apply(config_map("c", json!({}), "1"));
    match next(&mut events).await.unwrap() {
        Event::Apply(object) => assert_eq!(object.name_any(), "c"),
        other => panic!("expected Apply(c), got {other:?}"),
    }
    server.apply(config_map("a", json!({}), "2"));
    match next(&mut events).await.unwrap() {
        Event::Apply(object) => {
            assert_eq!(object.name_any(), "a");
            assert_eq!(object.data["data"]["value"], "2");
            assert_eq!(object.resource_version(), Some(server.resource_version().to_string()));
        }
        other => panic!("expected Apply(a), got {other:?}"),
    }
    // A no-op write sends nothing: the next event is the delete.
    server.apply(config_map("a", json!({}), "2"));
    server.delete("v1", "ConfigMap", "default", "b").unwrap();
    match next(&mut events).await.unwrap() {
        Event::Delete(object) => {
            assert_eq!(object.name_any(), "b");
            assert_eq!(object.resource_version(), Some(server.resource_version().to_string()));
        }
        other => panic!("expected Delete(b), got {other:?}"),
    }
    server
}

#[tokio::test]
async fn list_watch_watcher_sees_initial_list_then_create_update_delete() {
    within_deadline(async {
        let server = watcher_sees_initial_list_then_changes(watcher::Config::default()).await;
        assert_eq!(server.list_count("configmaps"), 1);
        assert_eq!(server.watch_count("configmaps"), 1);
    })
    .await;
}

#[tokio::test]
async fn streaming_list_watcher_sees_initial_list_then_create_update_delete() {
    within_deadline(async {
        let server = watcher_sees_initial_list_then_changes(watcher::Config::default().streaming_lists()).await;
        assert_eq!(server.list_count("configmaps"), 0);
        assert_eq!(server.watch_count("configmaps"), 1);
    })
    .await;
}

#[tokio::test]
async fn streaming_list_ends_initial_events_with_an_annotated_bookmark() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({}), "1"));
        server.apply(config_map("b", json!({}), "1"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let mut stream = api
            .watch(&WatchParams::default().initial_events(), "0")
            .await
            .unwrap()
            .boxed();
        let mut added = BTreeSet::new();
        for _ in 0..2 {
            match next(&mut stream).await.unwrap() {
                WatchEvent::Added(cm) => added.insert(cm.name_any()),
                other => panic!("expected ADDED, got {other:?}"),
            };
        }
        assert_eq!(added, names(["a", "b"]));
        match next(&mut stream).await.unwrap() {
            WatchEvent::Bookmark(bookmark) => {
                assert_eq!(
                    bookmark
                        .metadata
                        .annotations
                        .get(INITIAL_EVENTS_END)
                        .map(String::as_str),
                    Some("true")
                );
                assert_eq!(
                    bookmark.metadata.resource_version,
                    server.resource_version().to_string()
                );
            }
            other => panic!("expected the initial-events-end BOOKMARK, got {other:?}"),
        }
        server.apply(config_map("c", json!({}), "1"));
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(cm) => assert_eq!(cm.name_any(), "c"),
            other => panic!("expected ADDED c, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn watch_from_a_compacted_version_gets_a_410_error_event_then_closes() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({}), "1"));
        let old = server.resource_version();
        server.apply(config_map("b", json!({}), "1"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");

        // Still in history: resumes after `old`.
        let mut resumed = api
            .watch(&WatchParams::default(), &old.to_string())
            .await
            .unwrap()
            .boxed();
        match next(&mut resumed).await.unwrap() {
            WatchEvent::Added(cm) => assert_eq!(cm.name_any(), "b"),
            other => panic!("expected ADDED b, got {other:?}"),
        }

        server.compact();
        let mut expired = api
            .watch(&WatchParams::default(), &old.to_string())
            .await
            .unwrap()
            .boxed();
        match next(&mut expired).await.unwrap() {
            WatchEvent::Error(status) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
        let end = timeout(EVENT_DEADLINE, expired.next())
            .await
            .expect("stream closes after the error");
        assert!(end.is_none());
    })
    .await;
}

#[tokio::test]
async fn watch_closes_cleanly_after_timeout_seconds_and_sends_bookmarks() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.set_bookmark_interval(Duration::from_millis(50));
        server.apply(config_map("a", json!({}), "1"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let mut stream = api
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .unwrap()
            .boxed();
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(cm) => assert_eq!(cm.name_any(), "a"),
            other => panic!("expected ADDED a, got {other:?}"),
        }
        let mut bookmarks = 0;
        while let Some(event) = timeout(EVENT_DEADLINE, stream.next())
            .await
            .expect("closes after its timeout")
        {
            match event.unwrap() {
                WatchEvent::Bookmark(bookmark) => {
                    assert_eq!(
                        bookmark.metadata.resource_version,
                        server.resource_version().to_string()
                    );
                    bookmarks += 1;
                }
                other => panic!("expected only bookmarks, got {other:?}"),
            }
        }
        assert!(bookmarks > 0);
        server.wait_for(|s| s.open_watches("configmaps") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn compaction_while_watch_is_down_forces_a_relist_without_the_deleted_object() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({}), "1"));
        server.apply(config_map("b", json!({}), "1"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let mut events = watcher(api, watcher::Config::default()).boxed();
        assert_eq!(initial_sync(&mut events).await, names(["a", "b"]));

        // Stalled, the open watch cannot deliver the delete before it is dropped, and
        // the compaction makes the watcher's version too old to resume from.
        server.stall_watches(true);
        server.delete("v1", "ConfigMap", "default", "b").unwrap();
        server.compact();
        server.drop_watches();
        server.stall_watches(false);

        assert_eq!(initial_sync(&mut events).await, names(["a"]));
        assert_eq!(server.list_count("configmaps"), 2);
    })
    .await;
}

#[tokio::test]
async fn watch_lagging_behind_the_history_limit_is_expired_and_the_watcher_relists() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.set_history_limit(2);
        server.apply(config_map("a", json!({}), "1"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let mut events = forward(watcher(api, watcher::Config::default()).boxed());
        assert_eq!(initial_sync(&mut events).await, names(["a"]));
        server.wait_for(|s| s.open_watches("configmaps") == 1).await;

        // Three changes while the watch cannot send: the oldest falls out of history.
        server.stall_watches(true);
        for name in ["b", "c", "d"] {
            server.apply(config_map(name, json!({}), "1"));
        }
        server.stall_watches(false);

        let (listed, errors) = initial_sync_counting_errors(&mut events).await;
        assert_eq!((listed, errors), (names(["a", "b", "c", "d"]), 1));
        assert_eq!(server.list_count("configmaps"), 2);
    })
    .await;
}

#[tokio::test]
async fn label_selected_watch_reports_objects_leaving_as_deleted_and_entering_as_added() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"app": "web"}), "1"));
        server.apply(config_map("b", json!({"app": "db"}), "1"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let mut events = watcher(api, watcher::Config::default().labels("app=web")).boxed();
        assert_eq!(initial_sync(&mut events).await, names(["a"]));

        server.apply(config_map("a", json!({"app": "db"}), "1"));
        match next(&mut events).await.unwrap() {
            Event::Delete(cm) => {
                assert_eq!(cm.name_any(), "a");
                assert_eq!(cm.resource_version(), Some(server.resource_version().to_string()));
            }
            other => panic!("expected Delete(a), got {other:?}"),
        }
        server.apply(config_map("b", json!({"app": "web"}), "1"));
        match next(&mut events).await.unwrap() {
            Event::Apply(cm) => assert_eq!(cm.name_any(), "b"),
            other => panic!("expected Apply(b), got {other:?}"),
        }
        server.delete("v1", "ConfigMap", "default", "a").unwrap(); // not selected: no event
        server.delete("v1", "ConfigMap", "default", "b").unwrap();
        match next(&mut events).await.unwrap() {
            Event::Delete(cm) => assert_eq!(cm.name_any(), "b"),
            other => panic!("expected Delete(b), got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn metadata_only_watchers_see_partial_objects_in_both_list_modes() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"app": "web"}), "1"));
        let client = server.client().await;
        let metadata_api: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), "default");
        #[allow(deprecated)] // kube 5 still ships it; kube-template may use either form
        let legacy = watcher::metadata_watcher(
            Api::<ConfigMap>::namespaced(client, "default"),
            watcher::Config::default(),
        );
        let watchers = [
            watcher(metadata_api.clone(), watcher::Config::default()).boxed(),
            watcher(metadata_api, watcher::Config::default().streaming_lists()).boxed(),
            legacy.boxed(),
        ];
        let mut expected = names(["a"]);
        for mut events in watchers {
            assert_eq!(initial_sync(&mut events).await, expected);
            let name = format!("new-{}", server.resource_version());
            server.apply(config_map(&name, json!({"app": "web"}), "1"));
            match next(&mut events).await.unwrap() {
                Event::Apply(meta) => {
                    assert_eq!(meta.name_any(), name);
                    assert_eq!(meta.labels().get("app").map(String::as_str), Some("web"));
                    assert_eq!(meta.types.unwrap().kind, "PartialObjectMetadata");
                }
                other => panic!("expected Apply({name}), got {other:?}"),
            }
            expected.insert(name);
        }
        assert_eq!(server.list_count("configmaps"), 2);
        assert_eq!(server.watch_count("configmaps"), 3);
    })
    .await;
}

#[tokio::test]
async fn custom_resource_registered_at_runtime_is_discoverable_and_watchable() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let client = server.client().await;
        let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
        assert!(
            !Discovery::new(client.clone())
                .run()
                .await
                .unwrap()
                .has_group("example.com")
        );

        server.register_kind("example.com", "v1", "Widget", "widgets", true);
        let widget = |name: &str, size: u32| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": name, "namespace": "default"}, "spec": {"size": size}})
        };
        server.apply(widget("w1", 1));

        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        let (resource, caps) = discovery.resolve_gvk(&gvk).expect("Widget discovered");
        assert_eq!((resource.plural.as_str(), caps.scope), ("widgets", Scope::Namespaced));
        let (pinned, _) = discovery::pinned_kind(&client, &gvk).await.unwrap();
        assert_eq!(pinned, resource);

        // Custom resource list items carry their type.
        let raw = raw_get(&client, "/apis/example.com/v1/namespaces/default/widgets").await;
        assert_eq!(raw["items"][0]["kind"], "Widget");
        assert_eq!(raw["items"][0]["apiVersion"], "example.com/v1");

        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        assert_eq!(initial_sync(&mut events).await, names(["w1"]));
        server.apply(widget("w1", 2));
        match next(&mut events).await.unwrap() {
            Event::Apply(object) => {
                assert_eq!(object.types.unwrap().kind, "Widget");
                assert_eq!(object.data["spec"]["size"], 2);
            }
            other => panic!("expected Apply(w1), got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn watcher_with_default_backoff_survives_injected_500s() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({}), "1"));
        server.inject_fault(Fault::new(500).times(1).verb(Verb::List).path_contains("/configmaps"));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let mut events = forward(watcher(api, watcher::Config::default()).default_backoff().boxed());

        let (listed, errors) = initial_sync_counting_errors(&mut events).await;
        assert_eq!((listed, errors), (names(["a"]), 1));
        assert_eq!(server.list_count("configmaps"), 2);

        // The re-watch after a dropped watch fails once too, then recovers.
        server.wait_for(|s| s.open_watches("configmaps") == 1).await;
        server.fail_next(1, 500);
        server.drop_watches();
        assert!(next(&mut events).await.is_err(), "the re-watch fails");
        server.apply(config_map("b", json!({}), "1"));
        match next(&mut events).await.unwrap() {
            Event::Apply(cm) => assert_eq!(cm.name_any(), "b"),
            other => panic!("expected Apply(b), got {other:?}"),
        }
        assert_eq!(server.list_count("configmaps"), 2, "no re-list was needed");
    })
    .await;
}

#[tokio::test]
async fn stalled_watch_sends_nothing_until_resumed() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.set_bookmark_interval(Duration::from_millis(20));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let rv = server.resource_version().to_string();
        let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        assert!(matches!(next(&mut stream).await.unwrap(), WatchEvent::Bookmark(_)));

        server.stall_watches(true);
        // Bookmarks already on the wire may still arrive; then the stream goes quiet.
        while let Ok(event) = timeout(Duration::from_millis(200), stream.next()).await {
            assert!(matches!(event, Some(Ok(WatchEvent::Bookmark(_)))), "{event:?}");
        }
        server.apply(config_map("a", json!({}), "1"));
        let silent = timeout(Duration::from_millis(300), stream.next()).await;
        assert!(silent.is_err(), "a stalled watch sent {silent:?}");
        assert_eq!(server.open_watches("configmaps"), 1, "the stalled watch stays open");

        server.stall_watches(false);
        loop {
            match next(&mut stream).await.unwrap() {
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Added(cm) => break assert_eq!(cm.name_any(), "a"),
                other => panic!("expected ADDED a, got {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn slow_list_of_one_kind_does_not_delay_others() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.set_list_delay("secrets", Duration::from_secs(3600));
        let client = server.client().await;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "default");
        let slow = tokio::spawn(async move { secrets.list(&ListParams::default()).await });
        server.wait_for(|s| s.list_count("secrets") == 1).await;

        let config_maps: Api<ConfigMap> = Api::namespaced(client, "default");
        assert!(config_maps.list(&ListParams::default()).await.unwrap().items.is_empty());
        assert!(!slow.is_finished());
        slow.abort();
    })
    .await;
}

#[tokio::test]
async fn an_empty_server_lists_a_version_that_watches_resume_from_in_order() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        let list = api.list(&ListParams::default()).await.unwrap();
        let rv = list.metadata.resource_version.unwrap();
        // "0" would mean "any version": synthetic ADDED events in name order.
        assert_ne!(rv, "0", "a real server never lists at resourceVersion 0");

        server.apply(config_map("b", json!({}), "1"));
        server.apply(config_map("a", json!({}), "1"));
        let mut events = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        let mut order = Vec::new();
        for _ in 0..2 {
            match next(&mut events).await.unwrap() {
                WatchEvent::Added(cm) => order.push(cm.name_any()),
                other => panic!("expected ADDED, got {other:?}"),
            }
        }
        assert_eq!(order, ["b", "a"], "changes come in resourceVersion order");
    })
    .await;
}

#[tokio::test]
async fn traffic_counts_connections_requests_bytes_and_bookmarks() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let stored = server.apply(config_map("a", json!({}), &"x".repeat(10_000)));
        let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
        api.get("a").await.unwrap();
        let after_get = server.traffic();
        assert_eq!(
            (after_get.connections, after_get.open_connections, after_get.requests),
            (1, 1, 1)
        );
        // The body, plus a status line and headers of a few hundred bytes.
        let body = serde_json::to_vec(&stored).unwrap().len() as u64;
        assert!(
            (body..body + 1024).contains(&after_get.bytes_sent),
            "{after_get:?} for a body of {body} bytes"
        );
        assert_eq!(after_get.bookmarks, 0);

        server.set_bookmark_interval(Duration::from_millis(50));
        let mut events = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
        loop {
            let event = timeout(EVENT_DEADLINE, events.next()).await.unwrap().unwrap().unwrap();
            if matches!(event, WatchEvent::Bookmark(_)) {
                break;
            }
        }
        let watched = server.traffic() - after_get;
        assert_eq!(watched.requests, 1);
        assert!(watched.bookmarks >= 1, "{watched:?}");
        assert!(watched.bookmark_bytes >= 50 * watched.bookmarks, "{watched:?}");
        assert!(watched.bytes_sent > body + watched.bookmark_bytes, "{watched:?}");
    })
    .await;
}

/// Boolean query parameters read as the real server reads them (apimachinery's
/// `Convert_Slice_string_To_bool`): only `false` (any case) and `0` are false, so
/// the Python client's `watch=True` is a watch.
#[tokio::test]
async fn boolean_query_parameters_are_true_unless_false_or_zero() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({}), "1"));
        let client = server.client().await;
        let collection = "/api/v1/namespaces/default/configmaps";
        for value in ["True", "TRUE", "true", "1", ""] {
            let uri = format!("{collection}?watch={value}&timeoutSeconds=1");
            let request = hyper::Request::get(&uri).body(Vec::new()).expect("valid request");
            let text = client.request_text(request).await.expect("request succeeds");
            let first: Value = serde_json::from_str(text.lines().next().unwrap_or_default())
                .unwrap_or_else(|e| panic!("watch={value}: a JSON event line, got {text:?}: {e}"));
            assert_eq!(first["type"], "ADDED", "watch={value}: {first}");
            assert_eq!(first["object"]["metadata"]["name"], "a", "watch={value}: {first}");
        }
        for value in ["False", "false", "0"] {
            let list = raw_get(&client, &format!("{collection}?watch={value}")).await;
            assert_eq!(list["kind"], "ConfigMapList", "watch={value}: {list}");
        }
        assert_eq!(server.watch_count("configmaps"), 5);
        assert_eq!(server.list_count("configmaps"), 3);
    })
    .await;
}
