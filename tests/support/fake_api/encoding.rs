//! How objects, lists, watch events and errors are written in responses.

use super::*;

/// How an object is written in a response.
#[derive(Clone, Copy)]
pub(super) enum ItemForm {
    /// As stored, with `apiVersion` and `kind`.
    Full,
    /// Without `apiVersion` and `kind` (built-in kinds' list items).
    Untyped,
    /// As a `meta.k8s.io/v1` PartialObjectMetadata.
    Metadata,
}

pub(super) struct Item<'a>(pub(super) &'a Value, pub(super) ItemForm);

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
pub(super) struct ListBody<'a> {
    pub(super) kind: String,
    pub(super) api_version: String,
    pub(super) metadata: Value,
    pub(super) items: Vec<Item<'a>>,
}

pub(super) fn event_line(event_type: &str, object: &Value, form: ItemForm) -> Bytes {
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

pub(super) fn bookmark_line((kind, api_version): &(String, String), rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    event_line("BOOKMARK", &object, ItemForm::Full)
}

pub(super) fn json_response(code: u16, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("JSON values always serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn status_json(code: u16, reason: &str, message: String) -> Value {
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

pub(super) fn status_response(code: u16, reason: &str, message: String) -> Response<Body> {
    json_response(code, &status_json(code, reason, message))
}

pub(super) fn fault_response(code: u16) -> Response<Body> {
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
pub(super) fn item_form(accept: &str, metadata_type: &str) -> Result<ItemForm, ApiError> {
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
pub(super) fn query_number(query: &Query, key: &str) -> Result<Option<u64>, ApiError> {
    let value = query.get(key).map(|v| v.parse::<u64>());
    value
        .transpose()
        .map_err(|_| ApiError::bad_request(format!("{key}: Invalid value")))
}

pub(super) fn with_resource_version(object: &Value, rv: u64) -> Value {
    let mut object = object.clone();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object
}

pub(super) fn is_true(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("true" | "1"))
}

pub(super) fn parse_continue(token: &str) -> Option<(u64, usize)> {
    let (id, offset) = token.split_once('-')?;
    Some((id.parse().ok()?, offset.parse().ok()?))
}

pub(super) fn new_uid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-fa6e-4000-8000-{n:012x}", std::process::id())
}

pub(super) fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
