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

// ---------------------------------------------------------------------------
// Fault-matrix controls: short list pages, failing continued lists, watch
// events cut mid-JSON, and the server going away and coming back, possibly
// with a fresh resourceVersion history.

/// State of the fault-matrix controls.
#[derive(Default)]
struct FaultMatrix {
    /// Most items a LIST page holds, whatever `limit` asked for (a real server
    /// may answer with fewer items than `limit`).
    page_cap: Option<usize>,
    /// Codes for the next LISTs that carry a `continue` token, in order.
    page_faults: VecDeque<u16>,
    /// Watch chunks still to cut in the middle of their last event.
    cuts_pending: usize,
    /// Watch chunks cut so far.
    cuts_done: usize,
    /// While down: the server's address, bound but not listening, so that
    /// connections are refused and no other server takes the port meanwhile.
    held_port: Option<tokio::net::TcpSocket>,
}

impl FaultMatrix {
    fn take_page_fault(&mut self, verb: Verb, query: &Query) -> Option<u16> {
        if verb != Verb::List || query.get("continue").is_none_or(|c| c.is_empty()) {
            return None;
        }
        self.page_faults.pop_front()
    }
}

impl FakeApiServer {
    /// LIST pages hold at most `cap` items (at least one), even when the client
    /// asked for more: initial lists of a few objects then take several pages.
    pub fn cap_list_pages(&self, cap: usize) {
        self.shared.lock().matrix.page_cap = Some(cap.max(1));
    }

    /// The next `n` LISTs that carry a `continue` token (a second or later page)
    /// fail with `code` (410 is what an expired token gets).
    pub fn fail_continued_lists(&self, n: usize, code: u16) {
        let faults = &mut self.shared.lock().matrix.page_faults;
        faults.extend(std::iter::repeat_n(code, n));
    }

    /// The next `n` watch chunks that end with an object event (not a bookmark
    /// or an error) are cut: each is sent up to the middle of its last event
    /// line, and then its stream ends.
    pub fn cut_next_watch_events(&self, n: usize) {
        self.shared.lock().matrix.cuts_pending += n;
    }

    /// Watch chunks cut so far by [`Self::cut_next_watch_events`].
    pub fn cut_watch_events(&self) -> usize {
        self.shared.lock().matrix.cuts_done
    }

    /// Stops serving, as when the API server process dies: the listener closes
    /// and every connection, open watches included, is cut without a clean end.
    /// Clients get "connection refused" until [`Self::come_back`]; the objects
    /// and the controls stay as they are.
    pub async fn go_down(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr).expect("hold the address while down");
        self.shared.lock().matrix.held_port = Some(socket);
    }

    /// Serves again at the same address, after [`Self::go_down`].
    pub async fn come_back(&mut self) {
        let held = self.shared.lock().matrix.held_port.take();
        let listener = match held {
            Some(socket) => socket.listen(1024),
            None => TcpListener::bind(self.addr).await,
        };
        let listener = listener.expect("listen at the same address again");
        self.task = tokio::spawn(serve(listener, self.shared.clone()));
    }

    /// The storage restored from a backup, as an etcd restore does: every object
    /// keeps its content and uid but gets a new, low resourceVersion (1, 2, …
    /// in their old order), and the history and list snapshots are gone. A watch
    /// from a version of the old history waits for that version, as the real
    /// server does for a version it has not reached yet (its bookmarks repeat
    /// that version).
    pub fn restart_history(&self) {
        {
            let mut st = self.shared.lock();
            let mut all: Vec<(u64, usize, (String, String))> = Vec::new();
            for (index, kind) in st.kinds.iter().enumerate() {
                for (key, object) in &kind.objects {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|rv| rv.parse().ok());
                    all.push((rv.unwrap_or(0), index, key.clone()));
                }
            }
            all.sort();
            for (n, (_, index, key)) in all.iter().enumerate() {
                let objects = &mut st.kinds[*index].objects;
                if let Some(object) = objects.get_mut(key) {
                    *object = Arc::new(with_resource_version(object, n as u64 + 1));
                }
            }
            st.rv = all.len() as u64;
            st.history.clear();
            st.floor = 0;
            st.snapshots.clear();
        }
        self.shared.wake_watches();
    }
}

// ---------------------------------------------------------------------------
// Full history and slow GETs, for consistency checks (tests/races.rs)

/// One change in [`FakeApiServer::full_history`].
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    /// The resourceVersion the change made.
    pub rv: u64,
    pub api_version: String,
    pub kind: String,
    /// `""` for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The object after the change; `None` for a delete.
    pub object: Option<Value>,
}

impl FakeApiServer {
    /// Every create, update and delete since the server started, in
    /// resourceVersion order, whatever was compacted for watches since: the
    /// server's state at any resourceVersion can be replayed from it.
    pub fn full_history(&self) -> Vec<HistoryEntry> {
        let st = self.shared.lock();
        st.journal
            .iter()
            .map(|change| {
                let kind = &st.kinds[change.kind];
                let last = change.new.as_deref().or(change.old.as_deref());
                let text = |field: &str| {
                    last.and_then(|o| o["metadata"][field].as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                HistoryEntry {
                    rv: change.rv,
                    api_version: kind.api_version(),
                    kind: kind.kind.clone(),
                    namespace: text("namespace"),
                    name: text("name"),
                    object: change.new.as_deref().cloned(),
                }
            })
            .collect()
    }

    /// Delays every GET of one object of `plural` by `delay` before it is
    /// served (the object is read after the delay); zero removes the delay.
    pub fn set_get_delay(&self, plural: &str, delay: Duration) {
        let mut st = self.shared.lock();
        if delay.is_zero() {
            st.get_delays.remove(plural);
        } else {
            st.get_delays.insert(plural.to_owned(), delay);
        }
    }
}

fn get_delay(shared: &Shared, kind: usize) -> Option<Duration> {
    let st = shared.lock();
    st.get_delays.get(&st.kinds[kind].plural).copied()
}

// ---------------------------------------------------------------------------
// State

/// State shared by the handle and the connection tasks.
struct Shared {
    state: Mutex<State>,
    /// Bumped after every change an open watch may have to react to.
    changed: watch::Sender<u64>,
    /// Bumped after every request and every watch opened or closed (for `wait_for`).
    activity: watch::Sender<u64>,
    addr: SocketAddr,
}

impl Shared {
    fn new(addr: SocketAddr) -> Self {
        let mut state = State {
            // etcd's revision is never 0 on a real server, and a watch from
            // "0" means "any version": synthetic ADDED events, in name order.
            rv: 1,
            history_limit: DEFAULT_HISTORY_LIMIT,
            next_snapshot: 1,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            ..State::default()
        };
        for (group, kind, plural, namespaced) in [
            ("", "ConfigMap", "configmaps", true),
            ("", "Secret", "secrets", true),
            ("", "Service", "services", true),
            ("", "Pod", "pods", true),
            ("", "Event", "events", true),
            ("", "Namespace", "namespaces", false),
            ("networking.k8s.io", "Ingress", "ingresses", true),
            ("discovery.k8s.io", "EndpointSlice", "endpointslices", true),
            ("events.k8s.io", "Event", "events", true),
        ] {
            state.register(group, "v1", kind, plural, namespaced, true);
        }
        Self {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            activity: watch::channel(0).0,
            addr,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own failure
        // behind a poisoned-lock panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_watches(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn note_activity(&self) {
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[derive(Default)]
struct State {
    /// The global resourceVersion: that of the latest change.
    rv: u64,
    /// Registered kinds; an index into this never changes.
    kinds: Vec<Kind>,
    /// Recent changes, oldest first, at most `history_limit` of them.
    history: VecDeque<Change>,
    history_limit: usize,
    /// Every change after `floor` is in `history`: a watch can resume from N >= floor.
    floor: u64,
    /// Paged list results, for `continue` tokens.
    snapshots: VecDeque<Snapshot>,
    next_snapshot: u64,
    faults: Vec<Fault>,
    stalled: bool,
    /// Watches opened under an older generation end.
    drop_generation: u64,
    bookmark_interval: Duration,
    /// Like a server before 1.27: no streaming lists (WatchList).
    no_watch_list: bool,
    list_delays: HashMap<String, Duration>,
    counts: HashMap<(Verb, String), u64>,
    /// Requests per verb and plural that were answered 2xx.
    successes: HashMap<(Verb, String), u64>,
    /// Every write body received.
    received: Vec<ReceivedWrite>,
    /// PUTs of a plural still to be preceded by a concurrent modification.
    conflicts: HashMap<String, usize>,
    /// Requests for `plural` that asked for metadata only.
    metadata_requests: HashMap<String, u64>,
    open_watches: HashMap<String, usize>,
    /// Controls of the fault matrix (see `FaultMatrix`).
    matrix: FaultMatrix,
    /// Every change since the start, never compacted (see [`FakeApiServer::full_history`]).
    journal: Vec<Change>,
    /// Delays of GETs by plural (see [`FakeApiServer::set_get_delay`]).
    get_delays: HashMap<String, Duration>,
    /// What went over the wire (see [`FakeApiServer::traffic`]).
    traffic: Arc<Traffic>,
}

struct Kind {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
    /// Built-in kinds' list items carry no `apiVersion`/`kind`.
    builtin: bool,
    /// Objects by (namespace, name); the namespace is "" for cluster-scoped kinds.
    objects: BTreeMap<(String, String), Arc<Value>>,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `widgets.example.com`, as in the real server's messages.
    fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn key(&self, namespace: &str, name: &str) -> (String, String) {
        let namespace = if self.namespaced { namespace } else { "" };
        (namespace.to_owned(), name.to_owned())
    }
}

/// One create, update or delete. `old` of a delete is the last state at the
/// deletion's resourceVersion.
#[derive(Clone)]
struct Change {
    rv: u64,
    kind: usize,
    old: Option<Arc<Value>>,
    new: Option<Arc<Value>>,
}

#[derive(Clone)]
struct Snapshot {
    id: u64,
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Create,
    Update,
    Apply,
}

impl State {
    fn register(&mut self, group: &str, version: &str, kind: &str, plural: &str, namespaced: bool, builtin: bool) {
        if self.kind_by_path(group, version, plural).is_some() {
            return;
        }
        self.kinds.push(Kind {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
            builtin,
            objects: BTreeMap::new(),
        });
    }

    fn kind_by_type(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.kind == kind && k.api_version() == api_version)
    }

    fn kind_by_path(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.group == group && k.version == version && k.plural == plural)
    }

    fn write(&mut self, mut object: Value, mode: WriteMode) -> Result<Arc<Value>, ApiError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind_name = object["kind"].as_str().unwrap_or_default();
        let index = self.kind_by_type(api_version, kind_name).ok_or_else(|| {
            let message = format!("no kind {kind_name:?} is registered for version {api_version:?}");
            ApiError::new(404, "NotFound", message)
        })?;
        let kind = &self.kinds[index];
        let invalid = |message: &str| ApiError::new(422, "Invalid", message);
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid("metadata: Required value"))?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("metadata.name: Required value: name is required"))?
            .to_owned();
        let namespace = if kind.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
            let ns = ns.unwrap_or("default").to_owned();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let key = (namespace, name);
        let existing = kind.objects.get(&key).cloned();
        let what = format!("{} {:?}", kind.qualified_plural(), key.1);
        match (mode, &existing) {
            (WriteMode::Create, Some(_)) => {
                return Err(ApiError::new(409, "AlreadyExists", format!("{what} already exists")));
            }
            (WriteMode::Update, None) => return Err(ApiError::new(404, "NotFound", format!("{what} not found"))),
            (WriteMode::Update, Some(old)) => {
                let sent = meta.get("resourceVersion").and_then(Value::as_str);
                if sent.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str()) {
                    let message = format!(
                        "Operation cannot be fulfilled on {what}: the object has been modified; \
                         please apply your changes to the latest version and try again"
                    );
                    return Err(ApiError::new(409, "Conflict", message));
                }
            }
            _ => {}
        }
        // Server-owned fields: kept from the stored object, so that writing the same
        // content again compares equal and is a no-op.
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            match existing.as_ref().and_then(|old| old["metadata"].get(field)) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        if existing.is_none() {
            meta.insert("uid".into(), json!(new_uid()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        if let Some(old) = &existing
            && **old == object
        {
            return Ok(old.clone());
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let new = Arc::new(object);
        self.kinds[index].objects.insert(key, new.clone());
        self.record(Change {
            rv: self.rv,
            kind: index,
            old: existing,
            new: Some(new.clone()),
        });
        Ok(new)
    }

    fn delete(&mut self, index: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let kind = &mut self.kinds[index];
        let old = kind.objects.remove(&kind.key(namespace, name))?;
        self.rv += 1;
        let last = Arc::new(with_resource_version(&old, self.rv));
        self.record(Change {
            rv: self.rv,
            kind: index,
            old: Some(last.clone()),
            new: None,
        });
        Some(last)
    }

    fn record(&mut self, change: Change) {
        self.journal.push(change.clone());
        self.history.push_back(change);
        let limit = self.history_limit;
        self.set_history_limit(limit);
    }

    fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit;
        while self.history.len() > limit {
            if let Some(evicted) = self.history.pop_front() {
                self.floor = evicted.rv;
            }
        }
    }

    /// Takes one use of the first fault matching this request.
    fn take_fault(&mut self, verb: Verb, path: &str) -> Option<u16> {
        let index = self.faults.iter().position(|f| f.matches(verb, path))?;
        let fault = &mut self.faults[index];
        let code = fault.code;
        if let Some(remaining) = &mut fault.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                self.faults.remove(index);
            }
        }
        Some(code)
    }

    fn parse_target(&self, path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["version"] => return Some(Target::Version),
            ["api"] => return Some(Target::CoreVersions),
            ["apis"] => return Some(Target::Groups),
            ["apis", group] => {
                return self
                    .kinds
                    .iter()
                    .any(|k| k.group == *group)
                    .then(|| Target::Group(group.to_string()));
            }
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        if !self.kinds.iter().any(|k| k.group == group && k.version == version) {
            return None;
        }
        let (namespace, plural, name) = match rest {
            [] => {
                return Some(Target::Resources {
                    group: group.into(),
                    version: version.into(),
                });
            }
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            ["namespaces", namespace, plural] => (Some(*namespace), *plural, None),
            ["namespaces", namespace, plural, name] => (Some(*namespace), *plural, Some(*name)),
            _ => return None,
        };
        let kind = self.kind_by_path(group, version, plural)?;
        let namespaced = self.kinds[kind].namespaced;
        if (namespace.is_some() && !namespaced) || (namespace.is_none() && name.is_some() && namespaced) {
            return None;
        }
        let namespace = namespace.map(str::to_owned);
        Some(match name {
            Some(name) => Target::Object {
                kind,
                namespace,
                name: name.to_owned(),
            },
            None => Target::Collection { kind, namespace },
        })
    }
}

/// What a request path addresses.
enum Target {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    Resources {
        group: String,
        version: String,
    },
    Collection {
        kind: usize,
        namespace: Option<String>,
    },
    Object {
        kind: usize,
        namespace: Option<String>,
        name: String,
    },
}

impl Target {
    /// The verb of `method` on this target, if the server serves it.
    fn verb(&self, method: &Method, query: &Query, namespaced: bool) -> Option<Verb> {
        Some(match (method, self) {
            (&Method::GET, Target::Object { .. }) => Verb::Get,
            (&Method::GET, Target::Collection { .. }) if is_true(query.get("watch")) => Verb::Watch,
            (&Method::GET, Target::Collection { .. }) => Verb::List,
            (&Method::GET, _) => Verb::Discovery,
            // Namespaced kinds are created in a namespace, not across all of them.
            (&Method::POST, Target::Collection { namespace, .. }) if namespace.is_some() || !namespaced => Verb::Create,
            (&Method::PUT, Target::Object { .. }) => Verb::Update,
            _ => return None,
        })
    }

    fn kind(&self) -> Option<usize> {
        match self {
            Target::Collection { kind, .. } | Target::Object { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let stream = CountingStream::new(stream, shared.lock().traffic.clone());
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
        connections.spawn(async move {
            // Clients hanging up (mid-watch, too) are normal here, not worth reporting.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    shared.lock().traffic.requests.fetch_add(1, Ordering::Relaxed);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: Query = form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let message = format!("the request body could not be read: {e}");
            return Ok(status_response(413, "RequestEntityTooLarge", message));
        }
    };
    let call = Call {
        method: &method,
        path: &path,
        query: &query,
        accept: &accept,
        body: &body,
    };
    Ok(respond(&shared, call).await)
}

/// What [`respond`] needs of a request.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a Query,
    accept: &'a str,
    body: &'a Bytes,
}

async fn respond(shared: &Arc<Shared>, call: Call<'_>) -> Response<Body> {
    let Call {
        method,
        path,
        query,
        accept,
        body,
    } = call;
    let (target, verb, fault, list_delay) = {
        let mut st = shared.lock();
        let Some(target) = st.parse_target(path) else {
            return status_response(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            );
        };
        let namespaced = target.kind().is_some_and(|k| st.kinds[k].namespaced);
        let Some(verb) = target.verb(method, query, namespaced) else {
            let message = format!("the server does not allow this method on the requested resource: {method}");
            return status_response(405, "MethodNotAllowed", message);
        };
        let mut list_delay = None;
        if let Some(kind) = target.kind() {
            let plural = st.kinds[kind].plural.clone();
            if verb == Verb::List {
                list_delay = st.list_delays.get(&plural).copied();
            }
            if accept.contains("as=PartialObjectMetadata") {
                *st.metadata_requests.entry(plural.clone()).or_default() += 1;
            }
            *st.counts.entry((verb, plural)).or_default() += 1;
        }
        if matches!(verb, Verb::Create | Verb::Update) {
            st.received.push(ReceivedWrite {
                verb,
                path: path.to_owned(),
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
        let fault = st
            .take_fault(verb, path)
            .or_else(|| st.matrix.take_page_fault(verb, query));
        (target, verb, fault, list_delay)
    };
    shared.note_activity();
    if let Some(code) = fault {
        return fault_response(code);
    }
    let kind = target.kind();
    let response = match target {
        Target::Version => Ok(json_response(200, &version_info())),
        Target::CoreVersions => {
            let address = json!({"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()});
            let body = json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [address]});
            Ok(json_response(200, &body))
        }
        Target::Groups => {
            let st = shared.lock();
            let mut names: Vec<&str> = st.kinds.iter().map(|k| k.group.as_str()).collect();
            names.retain(|g| !g.is_empty());
            names.sort_unstable();
            names.dedup();
            let groups: Vec<Value> = names.into_iter().map(|g| api_group(&st, g)).collect();
            Ok(json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        Target::Group(group) => Ok(json_response(200, &api_group(&shared.lock(), &group))),
        Target::Resources { group, version } => {
            Ok(json_response(200, &api_resource_list(&shared.lock(), &group, &version)))
        }
        Target::Object { kind, namespace, name } if verb == Verb::Update => {
            replace(shared, kind, namespace.as_deref(), &name, body)
        }
        Target::Object { kind, namespace, name } => {
            if let Some(delay) = get_delay(shared, kind) {
                tokio::time::sleep(delay).await;
            }
            get(shared, kind, namespace.as_deref(), &name, accept)
        }
        Target::Collection { kind, namespace } if verb == Verb::Create => {
            create(shared, kind, namespace.as_deref(), body)
        }
        Target::Collection { kind, namespace } if verb == Verb::Watch => watch(shared, kind, namespace, query, accept),
        Target::Collection { kind, namespace } => {
            if let Some(delay) = list_delay {
                tokio::time::sleep(delay).await;
            }
            list(shared, kind, namespace, query, accept)
        }
    };
    let response = response.unwrap_or_else(ApiError::into_response);
    if response.status().is_success()
        && let Some(kind) = kind
    {
        let mut st = shared.lock();
        let plural = st.kinds[kind].plural.clone();
        *st.successes.entry((verb, plural)).or_default() += 1;
        drop(st);
        // After the write, so that `wait_for` sees its effects.
        shared.note_activity();
    }
    response
}

/// POST: creates the object in the body.
fn create(shared: &Shared, kind: usize, namespace: Option<&str>, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let mut object = parse_body(body)?;
    let stored = {
        let mut st = shared.lock();
        let kind = &st.kinds[kind];
        check_body_type(&mut object, kind, namespace)?;
        let meta = &mut object["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty)
            && let Some(prefix) = meta["generateName"].as_str().filter(|p| !p.is_empty())
        {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            meta["name"] = json!(format!("{prefix}{:05x}", NEXT.fetch_add(1, Ordering::Relaxed)));
        }
        if kind.group == "events.k8s.io" {
            validate_event(&object)?;
        }
        st.write(object, WriteMode::Create)?
    };
    shared.wake_watches();
    Ok(json_response(201, &*stored))
}

/// PUT: replaces the object at the URL with the body, after the concurrent
/// modification a test asked for with `conflict_next_updates`.
fn replace(
    shared: &Shared,
    kind: usize,
    namespace: Option<&str>,
    name: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mut object = parse_body(body)?;
    let stored = {
        let mut st = shared.lock();
        let kind_info = &st.kinds[kind];
        check_body_type(&mut object, kind_info, namespace)?;
        let body_name = object["metadata"]["name"].as_str().unwrap_or_default();
        if body_name != name {
            let message = format!("the name of the object ({body_name}) does not match the name on the URL ({name})");
            return Err(ApiError::bad_request(message));
        }
        let plural = kind_info.plural.clone();
        let current = kind_info
            .objects
            .get(&kind_info.key(namespace.unwrap_or_default(), name))
            .cloned();
        if let Some(current) = current
            && let Some(remaining) = st.conflicts.get_mut(&plural).filter(|n| **n > 0)
        {
            *remaining -= 1;
            let mut changed = (*current).clone();
            let annotations = &mut changed["metadata"]["annotations"];
            let count = annotations[CONCURRENT_WRITES]
                .as_str()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if !annotations.is_object() {
                *annotations = json!({});
            }
            annotations[CONCURRENT_WRITES] = json!((count + 1).to_string());
            st.write(changed, WriteMode::Apply)?;
        }
        st.write(object, WriteMode::Update)?
    };
    shared.wake_watches();
    Ok(json_response(200, &*stored))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}")))?;
    if !object.is_object() || !object["metadata"].is_object() {
        return Err(ApiError::new(422, "Invalid", "metadata: Required value"));
    }
    Ok(object)
}

/// Fills in or checks the body's `apiVersion`, `kind` and namespace against the URL.
fn check_body_type(object: &mut Value, kind: &Kind, namespace: Option<&str>) -> Result<(), ApiError> {
    for (field, expected) in [("apiVersion", kind.api_version()), ("kind", kind.kind.clone())] {
        match object[field].as_str() {
            None | Some("") => object[field] = json!(expected),
            Some(sent) if sent == expected => {}
            Some(sent) => {
                let message =
                    format!("the {field} in the data ({sent}) does not match the expected {field} ({expected})");
                return Err(ApiError::bad_request(message));
            }
        }
    }
    if let Some(namespace) = namespace {
        let meta = &mut object["metadata"];
        match meta["namespace"].as_str() {
            None | Some("") => meta["namespace"] = json!(namespace),
            Some(sent) if sent == namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    Ok(())
}

/// The checks the real server makes on an `events.k8s.io/v1` Event it creates.
fn validate_event(event: &Value) -> Result<(), ApiError> {
    let text = |field: &str| event[field].as_str().unwrap_or_default();
    let mut problems = Vec::new();
    if event["eventTime"].as_str().is_none_or(str::is_empty) {
        problems.push("eventTime: Required value".to_owned());
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        problems.push(format!(
            "type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"",
            text("type")
        ));
    }
    if !is_qualified_name(text("reportingController")) {
        problems.push(format!(
            "reportingController: Invalid value: {:?}: must be a qualified name",
            text("reportingController")
        ));
    }
    for (field, limit) in [
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
        ("note", 1024),
    ] {
        let value = text(field);
        if value.is_empty() && field != "note" {
            problems.push(format!("{field}: Required value"));
        } else if value.len() > limit {
            problems.push(format!("{field}: Too long: may not be more than {limit} bytes"));
        }
    }
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or_default();
    let regarding = event["regarding"]["namespace"].as_str().unwrap_or_default();
    if !regarding.is_empty() && regarding != namespace {
        problems.push(format!(
            "regarding.namespace: Invalid value: {regarding:?}: does not match event.namespace"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let name = event["metadata"]["name"].as_str().unwrap_or_default();
        let message = format!("Event.events.k8s.io {name:?} is invalid: {}", problems.join(", "));
        Err(ApiError::new(422, "Invalid", message))
    }
}

/// `[prefix/]name`: a DNS subdomain prefix, and a name of at most 63 alphanumerics,
/// `-`, `_` and `.`, starting and ending with an alphanumeric.
fn is_qualified_name(value: &str) -> bool {
    let (prefix, name) = value.rsplit_once('/').unwrap_or(("", value));
    let prefix_ok = !value.contains('/')
        || (!prefix.is_empty()
            && prefix.len() <= 253
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c)));
    let edges_ok = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    prefix_ok
        && name.len() <= 63
        && edges_ok(name)
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn get(
    shared: &Shared,
    kind: usize,
    namespace: Option<&str>,
    name: &str,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let form = item_form(accept, "PartialObjectMetadata")?;
    let st = shared.lock();
    let kind = &st.kinds[kind];
    match kind.objects.get(&kind.key(namespace.unwrap_or_default(), name)) {
        Some(object) => Ok(json_response(200, &Item(object, form))),
        None => {
            let message = format!("{} {name:?} not found", kind.qualified_plural());
            let mut status = status_json(404, "NotFound", message);
            status["details"] = json!({"name": name, "group": kind.group, "kind": kind.plural});
            Ok(json_response(404, &status))
        }
    }
}

fn list(
    shared: &Shared,
    kind: usize,
    namespace: Option<String>,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let form = item_form(accept, "PartialObjectMetadataList")?;
    let filter = Filter::new(namespace, query)?;
    let limit = query_number(query, "limit")?.unwrap_or(0) as usize;
    let rv = query.get("resourceVersion").map(String::as_str).unwrap_or_default();
    let mut st = shared.lock();
    let (snapshot, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if !rv.is_empty() {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (id, offset) =
                parse_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            let snapshot = st.snapshots.iter().find(|s| s.id == id).cloned().ok_or_else(|| {
                let message = "The provided continue parameter is too old to display a consistent list result. \
                               You can start a new list without the continue parameter.";
                ApiError::new(410, "Expired", message)
            })?;
            (snapshot, offset)
        }
        None => {
            let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            if exact && rv != st.rv.to_string() {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", st.rv),
                ));
            }
            let items = st.kinds[kind].objects.values().filter(|o| filter.matches(o));
            let items = Arc::new(items.cloned().collect());
            (
                Snapshot {
                    id: 0,
                    rv: st.rv,
                    items,
                },
                0,
            )
        }
    };
    // resourceVersion=0 is served whole, as from the real server's watch cache.
    let limit = if rv == "0" || limit == 0 { usize::MAX } else { limit };
    let limit = st.matrix.page_cap.map_or(limit, |cap| limit.min(cap));
    let total = snapshot.items.len();
    let start = offset.min(total);
    let end = start.saturating_add(limit).min(total);
    let mut metadata = json!({"resourceVersion": snapshot.rv.to_string()});
    if end < total {
        let id = if snapshot.id != 0 {
            snapshot.id
        } else {
            let id = st.next_snapshot;
            st.next_snapshot += 1;
            st.snapshots.push_back(Snapshot { id, ..snapshot.clone() });
            if st.snapshots.len() > MAX_SNAPSHOTS {
                st.snapshots.pop_front();
            }
            id
        };
        metadata["continue"] = json!(format!("{id}-{end}"));
        metadata["remainingItemCount"] = json!(total - end);
    }
    let kind = &st.kinds[kind];
    let (list_kind, api_version, form) = match form {
        ItemForm::Metadata => (
            "PartialObjectMetadataList".to_owned(),
            "meta.k8s.io/v1".to_owned(),
            form,
        ),
        _ if kind.builtin => (format!("{}List", kind.kind), kind.api_version(), ItemForm::Untyped),
        _ => (format!("{}List", kind.kind), kind.api_version(), ItemForm::Full),
    };
    drop(st);
    let items = snapshot.items[start..end].iter().map(|o| Item(o, form)).collect();
    Ok(json_response(
        200,
        &ListBody {
            kind: list_kind,
            api_version,
            metadata,
            items,
        },
    ))
}

fn watch(
    shared: &Arc<Shared>,
    kind: usize,
    namespace: Option<String>,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let form = item_form(accept, "PartialObjectMetadata")?;
    let filter = Filter::new(namespace, query)?;
    let bookmarks = is_true(query.get("allowWatchBookmarks"));
    // Kubernetes 1.20 knows no sendInitialEvents (an unknown parameter is
    // ignored) and rejects any resourceVersionMatch on a watch.
    let no_watch_list = shared.lock().no_watch_list;
    let send_initial = query
        .get("sendInitialEvents")
        .filter(|_| !no_watch_list)
        .map(|v| is_true(Some(v)));
    let version_match = query.get("resourceVersionMatch").map(String::as_str);
    let invalid = match (send_initial, version_match) {
        (_, Some(_)) if no_watch_list => "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch",
        (Some(true), _) if !bookmarks => {
            "allowWatchBookmarks: Forbidden: allowWatchBookmarks must be true when sendInitialEvents is set"
        }
        (Some(_), Some("NotOlderThan")) | (None, None) => "",
        (Some(_), _) => {
            "resourceVersionMatch: Forbidden: resourceVersionMatch must be NotOlderThan when sendInitialEvents is set"
        }
        (None, Some(_)) => {
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
        }
    };
    if !invalid.is_empty() {
        // The real server's wording: the options, then field, type and detail.
        let message = format!("ListOptions.meta.k8s.io \"\" is invalid: {invalid}");
        return Err(ApiError::new(422, "Invalid", &message));
    }
    // 0 means "the server's default", as for the real server.
    let timeout = query_number(query, "timeoutSeconds")?.filter(|t| *t > 0);
    let timeout = timeout.map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let rv = query.get("resourceVersion").map(String::as_str).unwrap_or_default();
    let from_now = rv.is_empty() || rv == "0";

    let mut st = shared.lock();
    let mut cursor = match rv.parse::<u64>() {
        _ if from_now => st.rv,
        Ok(rv) => rv,
        Err(_) => return Err(ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}"))),
    };
    let kind_info = &st.kinds[kind];
    let bookmark_type = match form {
        ItemForm::Metadata => ("PartialObjectMetadata".to_owned(), "meta.k8s.io/v1".to_owned()),
        _ => (kind_info.kind.clone(), kind_info.api_version()),
    };
    let plural = kind_info.plural.clone();
    let mut pending = VecDeque::new();
    // Synthetic ADDED events for the current state: for a streaming list, or when no
    // version to resume from was given.
    if send_initial.unwrap_or(from_now) {
        for object in kind_info.objects.values().filter(|o| filter.matches(o)) {
            pending.push_back(event_line("ADDED", object, form));
        }
        cursor = st.rv;
        if send_initial == Some(true) {
            pending.push_back(bookmark_line(&bookmark_type, cursor, true));
        }
    }
    *st.open_watches.entry(plural.clone()).or_default() += 1;
    let now = Instant::now();
    let stream = WatchStream {
        shared: shared.clone(),
        changed: shared.changed.subscribe(),
        kind,
        plural,
        filter,
        form,
        bookmark_type,
        cursor,
        pending,
        closing: false,
        deadline: now + timeout,
        bookmarks,
        bookmark_due: false,
        next_bookmark: now + st.bookmark_interval,
        drop_generation: st.drop_generation,
        cut: false,
    };
    drop(st);
    shared.note_activity();
    let frames = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), stream))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The body of one watch response: newline-delimited JSON events.
struct WatchStream {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    kind: usize,
    plural: String,
    filter: Filter,
    form: ItemForm,
    /// `(kind, apiVersion)` of bookmark objects.
    bookmark_type: (String, String),
    /// Every change up to here has been queued in `pending` (or filtered out).
    cursor: u64,
    pending: VecDeque<Bytes>,
    /// The stream ends once `pending` is sent (after an ERROR event).
    closing: bool,
    deadline: Instant,
    bookmarks: bool,
    bookmark_due: bool,
    next_bookmark: Instant,
    drop_generation: u64,
    /// This stream sent a cut event and ends.
    cut: bool,
}

enum Step {
    Send(Bytes),
    Close,
    Wait { stalled: bool },
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.cut {
                return None;
            }
            let stalled = match self.step() {
                Step::Send(chunk) => return Some(self.maybe_cut(chunk)),
                Step::Close => return None,
                Step::Wait { stalled } => stalled,
            };
            let (deadline, next_bookmark) = (self.deadline, self.next_bookmark);
            tokio::select! {
                // The sender lives in `shared`, which this stream keeps alive.
                _ = self.changed.changed() => {}
                () = tokio::time::sleep_until(deadline), if !stalled => {}
                () = tokio::time::sleep_until(next_bookmark), if !stalled && self.bookmarks => {
                    self.bookmark_due = true;
                }
            }
        }
    }

    fn step(&mut self) -> Step {
        self.changed.borrow_and_update();
        let st = self.shared.lock();
        if st.drop_generation != self.drop_generation {
            return Step::Close;
        }
        if st.stalled {
            return Step::Wait { stalled: true };
        }
        if let Some(chunk) = take_chunk(&mut self.pending) {
            return Step::Send(chunk);
        }
        if self.closing || Instant::now() >= self.deadline {
            return Step::Close;
        }
        if self.cursor < st.floor {
            self.closing = true;
            let message = format!("too old resource version: {} ({})", self.cursor, st.floor);
            let status = status_json(410, "Expired", message);
            return Step::Send(event_line("ERROR", &status, ItemForm::Full));
        }
        let first_new = st.history.partition_point(|c| c.rv <= self.cursor);
        for change in st.history.range(first_new..).filter(|c| c.kind == self.kind) {
            if let Some(line) = translate(change, &self.filter, self.form) {
                self.pending.push_back(line);
            }
        }
        self.cursor = self.cursor.max(st.rv);
        if let Some(chunk) = take_chunk(&mut self.pending) {
            return Step::Send(chunk);
        }
        if self.bookmark_due {
            // Only now, with nothing undelivered up to `cursor`.
            self.bookmark_due = false;
            self.next_bookmark = Instant::now() + st.bookmark_interval;
            let line = bookmark_line(&self.bookmark_type, self.cursor, false);
            st.traffic.note_bookmark(line.len());
            return Step::Send(line);
        }
        Step::Wait { stalled: false }
    }
}

impl WatchStream {
    /// Cuts `chunk` in the middle of its last event line if a cut is pending
    /// and that line is an object event; the stream then ends.
    fn maybe_cut(&mut self, chunk: Bytes) -> Bytes {
        let mut st = self.shared.lock();
        if st.matrix.cuts_pending == 0 {
            return chunk;
        }
        let without_newline = &chunk[..chunk.len().saturating_sub(1)];
        let last = without_newline.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let line = &chunk[last..];
        if line.starts_with(b"{\"type\":\"BOOKMARK\"") || line.starts_with(b"{\"type\":\"ERROR\"") {
            return chunk;
        }
        st.matrix.cuts_pending -= 1;
        st.matrix.cuts_done += 1;
        self.cut = true;
        chunk.slice(..last + line.len() / 2)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some(open) = self.shared.lock().open_watches.get_mut(&self.plural) {
            *open -= 1;
        }
        self.shared.note_activity();
    }
}

/// Queued events joined into one chunk of at most about `MAX_CHUNK` bytes: one write
/// per event would make large streaming lists several times slower.
fn take_chunk(pending: &mut VecDeque<Bytes>) -> Option<Bytes> {
    let first = pending.pop_front()?;
    if pending.is_empty() || first.len() >= MAX_CHUNK {
        return Some(first);
    }
    let mut chunk = first.to_vec();
    while chunk.len() < MAX_CHUNK
        && let Some(line) = pending.pop_front()
    {
        chunk.extend_from_slice(&line);
    }
    Some(chunk.into())
}

/// The event a watch with `filter` sees for `change`, if any.
fn translate(change: &Change, filter: &Filter, form: ItemForm) -> Option<Bytes> {
    let old = change.old.as_deref().filter(|o| filter.matches(o));
    let new = change.new.as_deref().filter(|o| filter.matches(o));
    match (old, new) {
        (Some(_), Some(new)) => Some(event_line("MODIFIED", new, form)),
        (None, Some(new)) => Some(event_line("ADDED", new, form)),
        // Modified out of the selection: its last matching state, at the new version.
        (Some(old), None) if change.new.is_some() => {
            Some(event_line("DELETED", &with_resource_version(old, change.rv), form))
        }
        (Some(old), None) => Some(event_line("DELETED", old, form)),
        (None, None) => None,
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// How an object is written in a response.
#[derive(Clone, Copy)]
enum ItemForm {
    /// As stored, with `apiVersion` and `kind`.
    Full,
    /// Without `apiVersion` and `kind` (built-in kinds' list items).
    Untyped,
    /// As a `meta.k8s.io/v1` PartialObjectMetadata.
    Metadata,
}

struct Item<'a>(&'a Value, ItemForm);

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.1, self.0.as_object()) {
            (ItemForm::Metadata, _) => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("kind", "PartialObjectMetadata")?;
                map.serialize_entry("apiVersion", "meta.k8s.io/v1")?;
                map.serialize_entry("metadata", &self.0["metadata"])?;
                map.end()
            }
            (ItemForm::Untyped, Some(fields)) => {
                let mut map = serializer.serialize_map(None)?;
                for (key, value) in fields.iter().filter(|(k, _)| *k != "apiVersion" && *k != "kind") {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            _ => self.0.serialize(serializer),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: String,
    api_version: String,
    metadata: Value,
    items: Vec<Item<'a>>,
}

fn event_line(event_type: &str, object: &Value, form: ItemForm) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        event_type: &'a str,
        object: Item<'a>,
    }
    let mut line = serde_json::to_vec(&Event {
        event_type,
        object: Item(object, form),
    })
    .expect("JSON values always serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line((kind, api_version): &(String, String), rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    event_line("BOOKMARK", &object, ItemForm::Full)
}

fn json_response(code: u16, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("JSON values always serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn status_json(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: String) -> Response<Body> {
    json_response(code, &status_json(code, reason, message))
}

fn fault_response(code: u16) -> Response<Body> {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let mut response = status_response(code, reason, format!("injected fault: {reason}"));
    if code == 429 || code == 503 {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Whether the `Accept` header asks for `as=<metadata_type>`; any other `as=` is 406.
fn item_form(accept: &str, metadata_type: &str) -> Result<ItemForm, ApiError> {
    let first = accept.split(',').next().unwrap_or_default();
    match first.split(';').skip(1).find_map(|p| p.trim().strip_prefix("as=")) {
        None => Ok(ItemForm::Full),
        Some(requested) if requested == metadata_type => Ok(ItemForm::Metadata),
        Some(requested) => {
            let message = format!("only application/json and as={metadata_type} are served here, not as={requested}");
            Err(ApiError::new(406, "NotAcceptable", message))
        }
    }
}

/// A numeric query parameter, if present.
fn query_number(query: &Query, key: &str) -> Result<Option<u64>, ApiError> {
    let value = query.get(key).map(|v| v.parse::<u64>());
    value
        .transpose()
        .map_err(|_| ApiError::bad_request(format!("{key}: Invalid value")))
}

fn with_resource_version(object: &Value, rv: u64) -> Value {
    let mut object = object.clone();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object
}

fn is_true(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("true" | "1"))
}

fn parse_continue(token: &str) -> Option<(u64, usize)> {
    let (id, offset) = token.split_once('-')?;
    Some((id.parse().ok()?, offset.parse().ok()?))
}

fn new_uid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-fa6e-4000-8000-{n:012x}", std::process::id())
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

// ---------------------------------------------------------------------------
// Discovery

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_group(st: &State, group: &str) -> Value {
    let mut versions: Vec<Value> = Vec::new();
    for kind in st.kinds.iter().filter(|k| k.group == group) {
        let version = json!({"groupVersion": kind.api_version(), "version": kind.version});
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    // The first registered version is the preferred one.
    let preferred = versions.first().cloned();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": preferred})
}

fn api_resource_list(st: &State, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = st
        .kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .map(|k| {
            json!({
                "name": k.plural,
                "singularName": k.kind.to_lowercase(),
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["create", "get", "list", "update", "watch"],
            })
        })
        .collect();
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn kubeconfig_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
preferences: {{}}
"
    )
}

// ---------------------------------------------------------------------------
// Selectors

/// The namespace, label selector and field selector of a LIST or WATCH.
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    fn new(namespace: Option<String>, query: &Query) -> Result<Self, ApiError> {
        let selector = |key: &str| query.get(key).map(String::as_str).unwrap_or_default();
        let labels = parse_label_selector(selector("labelSelector")).map_err(ApiError::bad_request)?;
        let fields = parse_field_selector(selector("fieldSelector")).map_err(ApiError::bad_request)?;
        Ok(Self {
            namespace,
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        let labels = meta["labels"].as_object();
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.iter().all(|r| r.matches(labels))
            && self
                .fields
                .iter()
                .all(|r| (meta[r.field].as_str().unwrap_or_default() == r.value) == r.equal)
    }
}

struct LabelRequirement {
    key: String,
    op: LabelOp,
}

enum LabelOp {
    /// `k=v`, `k==v`, `k in (v1,v2)`.
    In(Vec<String>),
    /// `k!=v`, `k notin (v1,v2)`: also true when the label is absent.
    NotIn(Vec<String>),
    /// `k`.
    Exists,
    /// `!k`.
    DoesNotExist,
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key)).and_then(Value::as_str);
        match &self.op {
            LabelOp::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            LabelOp::NotIn(values) => value.is_none_or(|v| values.iter().all(|x| x != v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
        }
    }
}

fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    let invalid = || format!("unable to parse requirement: invalid label selector {selector:?}");
    let mut requirements = Vec::new();
    for part in split_outside_parens(selector) {
        let part = part.trim();
        let (key, op) = if let Some(key) = part.strip_prefix('!') {
            (key, LabelOp::DoesNotExist)
        } else if let Some((key, value)) = part.split_once("!=") {
            (key, LabelOp::NotIn(vec![label_value(value).ok_or_else(invalid)?]))
        } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (key, LabelOp::In(vec![label_value(value).ok_or_else(invalid)?]))
        } else if let Some((head, tail)) = part.split_once('(') {
            let values = tail.strip_suffix(')').ok_or_else(invalid)?;
            let values = values
                .split(',')
                .map(label_value)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)?;
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [key, "in"] => (*key, LabelOp::In(values)),
                [key, "notin"] => (*key, LabelOp::NotIn(values)),
                _ => return Err(invalid()),
            }
        } else {
            (part, LabelOp::Exists)
        };
        let key = key.trim();
        let key_chars_ok = key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if key.is_empty() || !key_chars_ok {
            return Err(invalid());
        }
        requirements.push(LabelRequirement {
            key: key.to_owned(),
            op,
        });
    }
    Ok(requirements)
}

fn label_value(value: &str) -> Option<String> {
    let value = value.trim();
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        .then(|| value.to_owned())
}

fn split_outside_parens(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

struct FieldRequirement {
    /// The `metadata` field compared.
    field: &'static str,
    value: String,
    equal: bool,
}

fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut requirements = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: {part:?}; can't understand it"));
        };
        let field = match field.trim() {
            "metadata.name" => "name",
            "metadata.namespace" => "namespace",
            other => return Err(format!("field label not supported: {other}")),
        };
        requirements.push(FieldRequirement {
            field,
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(requirements)
}

// ---------------------------------------------------------------------------
// Traffic: what a client costs the server

/// What the server sent and served since it started, for measuring what clients
/// cost it (see [`FakeApiServer::traffic`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    /// TCP connections accepted.
    pub connections: u64,
    /// TCP connections open now.
    pub open_connections: u64,
    /// HTTP requests received, discovery included.
    pub requests: u64,
    /// Bytes written to clients: status lines, headers, chunk framing and bodies.
    pub bytes_sent: u64,
    /// Periodic bookmarks sent on watches, and their bytes (event lines only).
    pub bookmarks: u64,
    pub bookmark_bytes: u64,
}

impl std::ops::Sub for TrafficSnapshot {
    type Output = TrafficSnapshot;

    /// What happened between two snapshots (`open_connections` is the later one's).
    fn sub(self, earlier: TrafficSnapshot) -> TrafficSnapshot {
        TrafficSnapshot {
            connections: self.connections - earlier.connections,
            open_connections: self.open_connections,
            requests: self.requests - earlier.requests,
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bookmarks: self.bookmarks - earlier.bookmarks,
            bookmark_bytes: self.bookmark_bytes - earlier.bookmark_bytes,
        }
    }
}

/// Counters shared by every connection; atomics, so that counting bytes never
/// waits on the state lock.
#[derive(Debug, Default)]
struct Traffic {
    connections: AtomicU64,
    open_connections: AtomicU64,
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    bookmarks: AtomicU64,
    bookmark_bytes: AtomicU64,
}

impl Traffic {
    fn note_bookmark(&self, bytes: usize) {
        self.bookmarks.fetch_add(1, Ordering::Relaxed);
        self.bookmark_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bookmarks: self.bookmarks.load(Ordering::Relaxed),
            bookmark_bytes: self.bookmark_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A client connection that counts the bytes written to it, and itself while open.
struct CountingStream {
    inner: tokio::net::TcpStream,
    traffic: Arc<Traffic>,
}

impl CountingStream {
    fn new(inner: tokio::net::TcpStream, traffic: Arc<Traffic>) -> Self {
        traffic.connections.fetch_add(1, Ordering::Relaxed);
        traffic.open_connections.fetch_add(1, Ordering::Relaxed);
        Self { inner, traffic }
    }

    fn count(&self, written: std::task::Poll<std::io::Result<usize>>) -> std::task::Poll<std::io::Result<usize>> {
        if let std::task::Poll::Ready(Ok(n)) = written {
            self.traffic.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }
}

impl Drop for CountingStream {
    fn drop(&mut self) {
        self.traffic.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(written)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl FakeApiServer {
    /// Connections, requests and bytes served so far; subtract two snapshots for
    /// what happened between them.
    pub fn traffic(&self) -> TrafficSnapshot {
        self.shared.lock().traffic.snapshot()
    }
}
