//! The server's state: kinds, objects, their history and LIST snapshots.

use super::*;

/// State shared by the handle and the connection tasks.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Bumped after every change an open watch may have to react to.
    pub(super) changed: watch::Sender<u64>,
    /// Bumped after every request and every watch opened or closed (for `wait_for`).
    pub(super) activity: watch::Sender<u64>,
    pub(super) addr: SocketAddr,
}

impl Shared {
    pub(super) fn new(addr: SocketAddr) -> Self {
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own failure
        // behind a poisoned-lock panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn wake_watches(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) fn note_activity(&self) {
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[derive(Default)]
pub(super) struct State {
    /// The global resourceVersion: that of the latest change.
    pub(super) rv: u64,
    /// Registered kinds; an index into this never changes.
    pub(super) kinds: Vec<Kind>,
    /// Recent changes, oldest first, at most `history_limit` of them.
    pub(super) history: VecDeque<Change>,
    pub(super) history_limit: usize,
    /// Every change after `floor` is in `history`: a watch can resume from N >= floor.
    pub(super) floor: u64,
    /// Paged list results, for `continue` tokens.
    pub(super) snapshots: VecDeque<Snapshot>,
    pub(super) next_snapshot: u64,
    pub(super) faults: Vec<Fault>,
    pub(super) stalled: bool,
    /// Watches opened under an older generation end.
    pub(super) drop_generation: u64,
    pub(super) bookmark_interval: Duration,
    /// Like a server before 1.27: no streaming lists (WatchList).
    pub(super) no_watch_list: bool,
    pub(super) list_delays: HashMap<String, Duration>,
    pub(super) counts: HashMap<(Verb, String), u64>,
    /// Requests per verb and plural that were answered 2xx.
    pub(super) successes: HashMap<(Verb, String), u64>,
    /// Every write body received.
    pub(super) received: Vec<ReceivedWrite>,
    /// PUTs of a plural still to be preceded by a concurrent modification.
    pub(super) conflicts: HashMap<String, usize>,
    /// Requests for `plural` that asked for metadata only.
    pub(super) metadata_requests: HashMap<String, u64>,
    pub(super) open_watches: HashMap<String, usize>,
    /// Controls of the fault matrix (see `FaultMatrix`).
    pub(super) matrix: FaultMatrix,
    /// Every change since the start, never compacted (see [`FakeApiServer::full_history`]).
    pub(super) journal: Vec<Change>,
    /// Delays of GETs by plural (see [`FakeApiServer::set_get_delay`]).
    pub(super) get_delays: HashMap<String, Duration>,
    /// What went over the wire (see [`FakeApiServer::traffic`]).
    pub(super) traffic: Arc<Traffic>,
}

pub(super) struct Kind {
    pub(super) group: String,
    pub(super) version: String,
    pub(super) kind: String,
    pub(super) plural: String,
    pub(super) namespaced: bool,
    /// Built-in kinds' list items carry no `apiVersion`/`kind`.
    pub(super) builtin: bool,
    /// Objects by (namespace, name); the namespace is "" for cluster-scoped kinds.
    pub(super) objects: BTreeMap<(String, String), Arc<Value>>,
}

impl Kind {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `widgets.example.com`, as in the real server's messages.
    pub(super) fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub(super) fn key(&self, namespace: &str, name: &str) -> (String, String) {
        let namespace = if self.namespaced { namespace } else { "" };
        (namespace.to_owned(), name.to_owned())
    }
}

/// One create, update or delete. `old` of a delete is the last state at the
/// deletion's resourceVersion.
#[derive(Clone)]
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) kind: usize,
    pub(super) old: Option<Arc<Value>>,
    pub(super) new: Option<Arc<Value>>,
}

#[derive(Clone)]
pub(super) struct Snapshot {
    pub(super) id: u64,
    pub(super) rv: u64,
    pub(super) items: Arc<Vec<Arc<Value>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteMode {
    Create,
    Update,
    Apply,
}

impl State {
    pub(super) fn register(
        &mut self,
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        builtin: bool,
    ) {
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

    pub(super) fn kind_by_type(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.kind == kind && k.api_version() == api_version)
    }

    pub(super) fn kind_by_path(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.group == group && k.version == version && k.plural == plural)
    }

    pub(super) fn write(&mut self, mut object: Value, mode: WriteMode) -> Result<Arc<Value>, ApiError> {
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

    pub(super) fn delete(&mut self, index: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
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

    pub(super) fn record(&mut self, change: Change) {
        self.journal.push(change.clone());
        self.history.push_back(change);
        let limit = self.history_limit;
        self.set_history_limit(limit);
    }

    pub(super) fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit;
        while self.history.len() > limit {
            if let Some(evicted) = self.history.pop_front() {
                self.floor = evicted.rv;
            }
        }
    }

    /// Takes one use of the first fault matching this request.
    pub(super) fn take_fault(&mut self, verb: Verb, path: &str) -> Option<u16> {
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

    pub(super) fn parse_target(&self, path: &str) -> Option<Target> {
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
pub(super) enum Target {
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
    pub(super) fn verb(&self, method: &Method, query: &Query, namespaced: bool) -> Option<Verb> {
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

    pub(super) fn kind(&self) -> Option<usize> {
        match self {
            Target::Collection { kind, .. } | Target::Object { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}
