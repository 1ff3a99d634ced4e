//! The HTTP side: requests routed to discovery, GET, POST, PUT, LIST and WATCH.

use super::*;

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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

pub(super) async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
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
pub(super) struct Call<'a> {
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    pub(super) query: &'a Query,
    pub(super) accept: &'a str,
    pub(super) body: &'a Bytes,
}

pub(super) async fn respond(shared: &Arc<Shared>, call: Call<'_>) -> Response<Body> {
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
pub(super) fn create(
    shared: &Shared,
    kind: usize,
    namespace: Option<&str>,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
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
pub(super) fn replace(
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

pub(super) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}")))?;
    if !object.is_object() || !object["metadata"].is_object() {
        return Err(ApiError::new(422, "Invalid", "metadata: Required value"));
    }
    Ok(object)
}

/// Fills in or checks the body's `apiVersion`, `kind` and namespace against the URL.
pub(super) fn check_body_type(object: &mut Value, kind: &Kind, namespace: Option<&str>) -> Result<(), ApiError> {
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
pub(super) fn validate_event(event: &Value) -> Result<(), ApiError> {
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
pub(super) fn is_qualified_name(value: &str) -> bool {
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

pub(super) fn get(
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

pub(super) fn list(
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

pub(super) fn watch(
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
pub(super) struct WatchStream {
    pub(super) shared: Arc<Shared>,
    pub(super) changed: watch::Receiver<u64>,
    pub(super) kind: usize,
    pub(super) plural: String,
    pub(super) filter: Filter,
    pub(super) form: ItemForm,
    /// `(kind, apiVersion)` of bookmark objects.
    pub(super) bookmark_type: (String, String),
    /// Every change up to here has been queued in `pending` (or filtered out).
    pub(super) cursor: u64,
    pub(super) pending: VecDeque<Bytes>,
    /// The stream ends once `pending` is sent (after an ERROR event).
    pub(super) closing: bool,
    pub(super) deadline: Instant,
    pub(super) bookmarks: bool,
    pub(super) bookmark_due: bool,
    pub(super) next_bookmark: Instant,
    pub(super) drop_generation: u64,
    /// This stream sent a cut event and ends.
    pub(super) cut: bool,
}

pub(super) enum Step {
    Send(Bytes),
    Close,
    Wait { stalled: bool },
}

impl WatchStream {
    pub(super) async fn next_chunk(&mut self) -> Option<Bytes> {
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

    pub(super) fn step(&mut self) -> Step {
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
    pub(super) fn maybe_cut(&mut self, chunk: Bytes) -> Bytes {
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
pub(super) fn take_chunk(pending: &mut VecDeque<Bytes>) -> Option<Bytes> {
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
pub(super) fn translate(change: &Change, filter: &Filter, form: ItemForm) -> Option<Bytes> {
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
