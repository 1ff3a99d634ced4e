//! `fetch_url(url, object)`: the body of a URL that an object names (as
//! k8s-sidecar's `.url` keys do), fetched once per version of that object.
//!
//! Renders are level-triggered: every render reads every object again. A URL
//! is fetched when the object that names it is new or changed (another
//! `resourceVersion`), and the answer — content or failure — is kept for
//! that version in a cache bounded by count (least recently used go first),
//! so a render caused by another object fetches nothing. A failed fetch gives
//! the content last fetched for the same object and URL, if any, else
//! `none`, and is logged once, naming the object and URL (never the
//! content).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value};
use minijinja::{Error, ErrorKind, State};

/// GETs a URL's body; the error is a message for the log.
pub type Get = Arc<dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync>;

/// The cache of fetched URLs, shared by every render of a [`super::Renderer`].
pub struct Urls {
    get: Get,
    entries: Mutex<lru::LruCache<(String, String), Entry>>,
}

impl std::fmt::Debug for Urls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Urls").finish_non_exhaustive()
    }
}

/// The answer for one object and URL at one version of the object.
struct Entry {
    version: String,
    /// The content last fetched (from an earlier version after a failure).
    content: Option<Value>,
}

impl Urls {
    /// Fetches with `get`, keeping at most `max_entries` answers.
    pub fn new(get: Get, max_entries: usize) -> Urls {
        let capacity = NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN);
        Urls {
            get,
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The content of `url` for `object` (`kind namespace/name`) at `version`;
    /// logs show the URL without its credentials.
    fn content(&self, object: &str, version: &str, url: &str) -> Option<Value> {
        let key = (object.to_string(), url.to_string());
        if let Some(entry) = lock(&self.entries).get(&key)
            && entry.version == version
        {
            return entry.content.clone();
        }
        // No lock is held across the GET: other templates' reads go on.
        let fetched = (self.get)(url);
        let mut entries = lock(&self.entries);
        let content = match fetched {
            Ok(bytes) => Some({
                tracing::debug!(object, url = %shown(url), bytes = bytes.len(), "url fetched");
                match String::from_utf8(bytes) {
                    Ok(text) => Value::from(text),
                    Err(e) => Value::from_bytes(e.into_bytes()),
                }
            }),
            Err(error) => {
                let previous = entries.get(&key).and_then(|e| e.content.clone());
                tracing::warn!(
                    object,
                    url = %shown(url),
                    %error,
                    kept_previous = previous.is_some(),
                    "fetch failed; tried again when the object changes"
                );
                previous
            }
        };
        entries.put(
            key,
            Entry {
                version: version.to_string(),
                content: content.clone(),
            },
        );
        content
    }
}

/// The template function; without [`Urls`] (no `render.fetch` in the
/// config) every call fails, saying so.
#[derive(Debug)]
pub(super) struct FetchUrl(pub(super) Option<Arc<Urls>>);

impl Object for FetchUrl {
    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let invalid = |message: String| Error::new(ErrorKind::InvalidOperation, message);
        let (url, object): (&str, Value) = minijinja::value::from_args(args)?;
        let Some(urls) = &self.0 else {
            return Err(invalid(format!(
                "fetch_url({url:?}): fetching URLs needs `render.fetch` in the config"
            )));
        };
        let meta = |field: &str| {
            object
                .get_attr("metadata")
                .and_then(|m| m.get_attr(field))
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_none())
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        let name = meta("name");
        if name.is_empty() {
            return Err(invalid(format!(
                "fetch_url({url:?}, …): the second argument must be the object that names the URL"
            )));
        }
        let kind = object.get_attr("kind").ok().filter(|k| !k.is_undefined());
        let identity = format!(
            "{} {}/{}",
            kind.map(|k| k.to_string()).unwrap_or_default(),
            meta("namespace"),
            name
        );
        // Objects from manifests may have no resourceVersion: their content is their version.
        let version = match meta("resourceVersion") {
            v if v.is_empty() => serde_json::to_string(&object).map_err(|e| invalid(e.to_string()))?,
            v => format!("{}/{v}", meta("uid")),
        };
        Ok(urls.content(&identity, &version, url.trim()).unwrap_or(Value::from(())))
    }
}

/// `url` without the `user:password@` of its authority.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(fail: bool) -> (Arc<AtomicUsize>, Urls) {
        let gets = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&gets);
        let get: Get = Arc::new(move |url: &str| {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            if fail && n > 1 {
                Err("connection refused".to_string())
            } else {
                Ok(format!("{url} #{n}").into_bytes())
            }
        });
        (gets, Urls::new(get, 8))
    }

    #[test]
    fn logged_urls_leave_out_credentials() {
        assert_eq!(shown("https://u:p@host:1/a@b?c"), "https://…@host:1/a@b?c");
        assert_eq!(shown("http://host/a"), "http://host/a");
    }

    #[test]
    fn a_url_is_fetched_once_per_version_of_its_object() {
        let (gets, urls) = counting(false);
        let first = urls.content("ConfigMap ns/a", "u/1", "http://x/a");
        assert_eq!(first, Some(Value::from("http://x/a #1")));
        assert_eq!(urls.content("ConfigMap ns/a", "u/1", "http://x/a"), first);
        assert_eq!(gets.load(Ordering::SeqCst), 1);
        assert_eq!(
            urls.content("ConfigMap ns/a", "u/2", "http://x/a"),
            Some(Value::from("http://x/a #2"))
        );
    }

    #[test]
    fn a_failure_keeps_the_previous_content_and_is_not_retried_at_the_same_version() {
        let (gets, urls) = counting(true);
        let first = urls.content("ConfigMap ns/a", "u/1", "http://x/a");
        assert_eq!(urls.content("ConfigMap ns/a", "u/2", "http://x/a"), first);
        assert_eq!(urls.content("ConfigMap ns/a", "u/2", "http://x/a"), first);
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        assert_eq!(urls.content("ConfigMap ns/b", "u/1", "http://x/b"), None);
    }
}
