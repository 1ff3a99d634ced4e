//! A fake Kubernetes API server for integration tests.
//!
//! [`FakeApiServer::start`] serves plain HTTP/1.1 on `127.0.0.1` at a random port and
//! behaves like a real API server on the read paths kube-template uses, as described in
//! `shared/KUBE-API-NOTES.md`:
//!
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}`, always answered as plain `application/json` (so clients
//!   that ask for aggregated discovery fall back to per-group discovery);
//! - GET of one object, with `404 NotFound` Status;
//! - POST (create) into a collection, answered `201 Created`, with `409 AlreadyExists`,
//!   `metadata.generateName`, and the namespace and type of the body checked against
//!   the URL; `events.k8s.io/v1` Events are validated like the real server does;
//! - PUT (replace) of one object: `404 NotFound` when missing, `409 Conflict` when the
//!   body carries a `resourceVersion` other than the stored one (none: unconditional);
//! - LIST: the list's `resourceVersion`, label and field selectors, `limit` + `continue`
//!   over one stored snapshot (an unknown token is a plain `410 Expired`),
//!   `resourceVersion=0` ignoring `limit`, built-in list items without
//!   `apiVersion`/`kind`, metadata-only lists;
//! - WATCH: resume after a resourceVersion, synthetic ADDED events for `0`/absent,
//!   `410 Expired` ERROR events for versions older than the retained history,
//!   bookmarks, `timeoutSeconds`, streaming lists (`sendInitialEvents`), selectors with
//!   objects leaving (DELETED) or entering (ADDED) the selection, metadata-only watches.
//!
//! Tests write objects through controls on [`FakeApiServer`]; clients write over HTTP.
//! The controls also inject faults (dropped watches, error responses, stalled watches,
//! slow lists, compaction, concurrent modifications before a PUT), count requests per
//! verb and resource, and keep every write body received.
//!
//! Not implemented: PATCH, DELETE over HTTP, namespace existence checks, subresources,
//! conversion between versions of a kind (each registered version is its own store),
//! LISTs of past versions (`resourceVersionMatch=Exact` works for the current version
//! only), protobuf, authentication.

// Every test binary uses a different part of this API.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

mod discovery;
mod encoding;
mod faults;
mod history;
mod http;
mod selectors;
mod state;
mod traffic;

use discovery::*;
use encoding::*;
use faults::*;
pub use history::*;
use http::*;
use selectors::*;
use state::*;
pub use traffic::*;

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Query = HashMap<String, String>;

/// Annotation on the bookmark that ends the initial events of a streaming list.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// Changes kept for watch resumption unless [`FakeApiServer::set_history_limit`] says otherwise.
const DEFAULT_HISTORY_LIMIT: usize = 10_000;
/// Default time between bookmarks on watches that allow them.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Watch length when the client sends no `timeoutSeconds` (the real default is 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// List snapshots kept for `continue` tokens; older tokens expire (410).
const MAX_SNAPSHOTS: usize = 64;
/// Largest body chunk a watch writes at once (unless one event is larger).
const MAX_CHUNK: usize = 256 * 1024;

/// The kind of request, for counters and fault filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Any discovery path (`/version`, `/api…`, `/apis…` without a resource).
    Discovery,
    /// GET of one object.
    Get,
    /// LIST of a collection.
    List,
    /// WATCH of a collection.
    Watch,
    /// POST (create) into a collection.
    Create,
    /// PUT (replace) of one object.
    Update,
}

/// One write request as the server received it, whatever became of it.
#[derive(Clone, Debug)]
pub struct ReceivedWrite {
    pub verb: Verb,
    /// The request path, e.g. `/api/v1/namespaces/default/configmaps/status`.
    pub path: String,
    /// The body, as sent (lossily decoded if it is not UTF-8).
    pub body: String,
}

/// Annotation that [`FakeApiServer::conflict_next_updates`] counts up on the object.
pub const CONCURRENT_WRITES: &str = "fake-api/concurrent-writes";
/// Largest request body accepted (the real server's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// An injected failure: matching requests get a Status with this HTTP code.
///
/// `Fault::new(500)` fails every request until [`FakeApiServer::clear_faults`]; narrow
/// it with [`Fault::times`], [`Fault::verb`] and [`Fault::path_contains`]. 429 and 503
/// carry `Retry-After: 1` (kube's client retries those itself).
#[derive(Clone, Debug)]
pub struct Fault {
    code: u16,
    remaining: Option<usize>,
    verb: Option<Verb>,
    path_contains: Option<String>,
}

impl Fault {
    /// A fault answering every request with `code`, until cleared.
    pub fn new(code: u16) -> Self {
        Self {
            code,
            remaining: None,
            verb: None,
            path_contains: None,
        }
    }

    /// Fail only the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Fail only requests of this verb.
    pub fn verb(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Fail only requests whose path contains `needle` (e.g. `"/configmaps"`).
    pub fn path_contains(mut self, needle: impl Into<String>) -> Self {
        self.path_contains = Some(needle.into());
        self
    }

    fn matches(&self, verb: Verb, path: &str) -> bool {
        self.verb.is_none_or(|v| v == verb) && self.path_contains.as_deref().is_none_or(|needle| path.contains(needle))
    }
}

/// A refused write (or, inside the server, a rejected request), as the Status a real
/// server would answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP code; writes are refused with 404, 409 or 422.
    pub code: u16,
    /// Status reason, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`.
    pub reason: &'static str,
    /// Human-readable message, worded like the real server's.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn into_response(self) -> Response<Body> {
        status_response(self.code, self.reason, self.message)
    }
}

/// A running fake API server; it shuts down (closing every connection) when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // The accept task owns every connection task, so this closes them all.
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Binds `127.0.0.1:0`, writes a kubeconfig for it and starts serving, with the
    /// built-in kinds registered: v1 ConfigMap, Secret, Service, Pod, Event, Namespace
    /// (cluster-scoped), networking.k8s.io/v1 Ingress, discovery.k8s.io/v1 EndpointSlice,
    /// events.k8s.io/v1 Event. The two Event kinds are separate stores here.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared::new(addr));
        let task = tokio::spawn(serve(listener, shared.clone()));
        let dir = tempfile::tempdir().expect("temporary directory for the kubeconfig");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(addr)).expect("write kubeconfig");
        Self {
            shared,
            addr,
            kubeconfig,
            _dir: dir,
            task,
        }
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file whose current context points at this server (no credentials).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube client built from [`Self::kubeconfig_path`].
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read fake kubeconfig");
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .expect("fake kubeconfig is valid");
        kube::Client::try_from(config).expect("client for the fake API server")
    }

    /// Serves a custom resource kind (e.g. `("example.com", "v1", "Widget", "widgets",
    /// true)`); its list items carry `apiVersion`/`kind`. Registering twice is a no-op.
    pub fn register_kind(&self, group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) {
        self.shared
            .lock()
            .register(group, version, kind, plural, namespaced, false);
    }

    /// Creates an object; 409 AlreadyExists if it exists. Returns the stored object
    /// (with `uid`, `creationTimestamp`, `resourceVersion` set). A namespaced object
    /// without a namespace goes to `default`.
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        self.write(object, WriteMode::Create)
    }

    /// Replaces an existing object; 404 if it is missing, 409 Conflict if the object
    /// carries a `resourceVersion` other than the stored one.
    pub fn update(&self, object: Value) -> Result<Value, ApiError> {
        self.write(object, WriteMode::Update)
    }

    /// Creates or replaces an object, ignoring any `resourceVersion` it carries.
    /// Writing the same content again changes nothing and sends no event.
    ///
    /// # Panics
    /// If the kind is not registered or the object has no `metadata.name`.
    pub fn apply(&self, object: Value) -> Value {
        self.write(object, WriteMode::Apply)
            .unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// Deletes an object and returns its last state (at the deletion's
    /// resourceVersion), or `None` if it did not exist. `namespace` is ignored for
    /// cluster-scoped kinds.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let deleted = {
            let mut st = self.shared.lock();
            let index = st.kind_by_type(api_version, kind)?;
            st.delete(index, namespace, name)
        };
        self.shared.wake_watches();
        deleted.map(|o| (*o).clone())
    }

    /// The stored object, if any.
    pub fn get_object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.shared.lock();
        let kind = &st.kinds[st.kind_by_type(api_version, kind)?];
        kind.objects.get(&kind.key(namespace, name)).map(|o| (**o).clone())
    }

    /// The latest resourceVersion (of the last create, update or delete of any kind).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Serves no streaming lists, as servers before Kubernetes 1.27 (or with
    /// WatchList off): a watch with `resourceVersionMatch` or
    /// `sendInitialEvents` gets 1.20's 422.
    pub fn without_watch_list(&self) {
        self.shared.lock().no_watch_list = true;
    }

    /// How many changes are kept for watch resumption; a watch from a version older
    /// than the oldest kept change, or one lagging behind by more, gets 410 Expired.
    pub fn set_history_limit(&self, limit: usize) {
        self.shared.lock().set_history_limit(limit);
        self.shared.wake_watches();
    }

    /// Forgets all history and every list snapshot: the next watch from any version
    /// before now, an open watch that has not yet sent every change, and every
    /// `continue` token get 410 Expired.
    pub fn compact(&self) {
        {
            let mut st = self.shared.lock();
            st.history.clear();
            st.floor = st.rv;
            st.snapshots.clear();
        }
        self.shared.wake_watches();
    }

    /// Time between bookmarks on watches with `allowWatchBookmarks` (default 1 s); an
    /// open watch picks it up after its next bookmark.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.lock().bookmark_interval = interval;
    }

    /// Ends every open watch stream cleanly, now (stalled ones too).
    pub fn drop_watches(&self) {
        self.shared.lock().drop_generation += 1;
        self.shared.wake_watches();
    }

    /// While `true`, watch streams (open and new) stay open but send nothing, not even
    /// bookmarks, and ignore their timeout; `false` resumes them where they were.
    pub fn stall_watches(&self, stalled: bool) {
        self.shared.lock().stalled = stalled;
        self.shared.wake_watches();
    }

    /// The next `n` requests of any kind fail with `code`.
    pub fn fail_next(&self, n: usize, code: u16) {
        self.inject_fault(Fault::new(code).times(n));
    }

    /// Adds a fault; the first matching fault (in insertion order) answers a request.
    pub fn inject_fault(&self, fault: Fault) {
        if fault.remaining != Some(0) {
            self.shared.lock().faults.push(fault);
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Delays every LIST of `plural` (e.g. `"configmaps"`) by `delay` before it is served.
    pub fn set_list_delay(&self, plural: &str, delay: Duration) {
        self.shared.lock().list_delays.insert(plural.to_owned(), delay);
    }

    /// LIST requests received for `plural` (failed ones included).
    pub fn list_count(&self, plural: &str) -> u64 {
        self.count(Verb::List, plural)
    }

    /// WATCH requests received for `plural` (failed ones included).
    pub fn watch_count(&self, plural: &str) -> u64 {
        self.count(Verb::Watch, plural)
    }

    /// GET requests received for `plural` (failed ones included).
    pub fn get_count(&self, plural: &str) -> u64 {
        self.count(Verb::Get, plural)
    }

    /// POST requests received for `plural` (failed ones included).
    pub fn create_count(&self, plural: &str) -> u64 {
        self.count(Verb::Create, plural)
    }

    /// PUT requests received for `plural` (failed ones included).
    pub fn update_count(&self, plural: &str) -> u64 {
        self.count(Verb::Update, plural)
    }

    /// Requests of `verb` for `plural` that succeeded (2xx). For writes: how many
    /// times an object was created or replaced over HTTP.
    pub fn successful(&self, verb: Verb, plural: &str) -> u64 {
        self.shared
            .lock()
            .successes
            .get(&(verb, plural.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every POST and PUT body received so far, in order, refused ones included.
    pub fn received_writes(&self) -> Vec<ReceivedWrite> {
        self.shared.lock().received.clone()
    }

    /// Every stored Event, of `v1` and of `events.k8s.io/v1`, in creation order.
    pub fn events(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let mut events: Vec<(u64, Value)> = st
            .kinds
            .iter()
            .filter(|k| k.kind == "Event")
            .flat_map(|k| k.objects.values())
            .map(|o| {
                let rv = o["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok());
                (rv.unwrap_or(0), (**o).clone())
            })
            .collect();
        events.sort_by_key(|(rv, _)| *rv);
        events.into_iter().map(|(_, e)| e).collect()
    }

    /// The next `n` PUTs of `plural` (e.g. `"configmaps"`) find their object changed
    /// just before they are served: the server counts up the [`CONCURRENT_WRITES`]
    /// annotation in a real update (a new resourceVersion, seen by watches). A PUT
    /// carrying the resourceVersion it read before therefore gets 409 Conflict; one
    /// without a resourceVersion overwrites the change.
    pub fn conflict_next_updates(&self, plural: &str, n: usize) {
        self.shared.lock().conflicts.insert(plural.to_owned(), n);
    }

    /// Requests for `plural` (of any verb) that asked for PartialObjectMetadata.
    pub fn metadata_request_count(&self, plural: &str) -> u64 {
        self.shared.lock().metadata_requests.get(plural).copied().unwrap_or(0)
    }

    /// Watch streams of `plural` open right now.
    pub fn open_watches(&self, plural: &str) -> usize {
        self.shared.lock().open_watches.get(plural).copied().unwrap_or(0)
    }

    /// Waits until `condition` holds, re-checking it after every request and every
    /// watch opened or closed. Wrap it in a timeout.
    pub async fn wait_for(&self, condition: impl Fn(&Self) -> bool) {
        let mut activity = self.shared.activity.subscribe();
        loop {
            activity.borrow_and_update();
            if condition(self) {
                return;
            }
            // The sender lives as long as `self`, so this cannot fail.
            let _ = activity.changed().await;
        }
    }

    fn count(&self, verb: Verb, plural: &str) -> u64 {
        self.shared
            .lock()
            .counts
            .get(&(verb, plural.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn write(&self, object: Value, mode: WriteMode) -> Result<Value, ApiError> {
        let written = self.shared.lock().write(object, mode);
        self.shared.wake_watches();
        written.map(|o| (*o).clone())
    }
}
