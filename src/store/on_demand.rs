//! The on-demand store: references only (from a metadata-only watch), with
//! object bodies fetched when a template reads them, through a cache bounded
//! by `max_entries` (LRU) and `ttl` (DESIGN section 3).
//!
//! Guarantees:
//! - a cached body is used only while its resourceVersion is the one the
//!   watch last reported for the object (and it is younger than `ttl`);
//!   otherwise it is fetched again, so a render never reads an object older
//!   than the event that triggered it;
//! - concurrent reads of one object share one GET; no lock is held across a
//!   GET; the GETs of one read run concurrently (bounded);
//! - a failed GET falls back to a cached copy, however old (counted as stale,
//!   logged once per object); with no copy the read fails;
//! - an object deleted before its GET is simply absent.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Entry, Store};
use crate::object::{Document, FieldPath, Meta, ObjectId};
use crate::telemetry::metrics::CacheMetrics;

/// What an on-demand store keeps per object besides its position: the
/// version the watch last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    pub version: Version,
}

impl Entry for Reference {
    fn from_object(object: Document) -> Self {
        Reference {
            version: Version::of(Meta::of(object.root()).resource_version),
        }
    }
}

/// References of one watched resource, indexed by its `index_by` keys.
pub type OnDemandStore = Store<Reference>;

/// Bounds of an on-demand store's body cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long a fetched body may be used before it is fetched again.
    pub ttl: Duration,
    /// How many bodies the cache holds at most (least recently used go first).
    pub max_entries: usize,
}

/// A resourceVersion, kept small: the number itself when it is one (as
/// Kubernetes makes them), else a digest. Only compared for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(u64);

impl Version {
    pub fn of(resource_version: &str) -> Version {
        match resource_version.parse::<u64>() {
            Ok(n) => Version(n),
            Err(_) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                resource_version.hash(&mut hasher);
                Version(hasher.finish() | 1 << 63)
            }
        }
    }
}

/// GETs one object by namespace and name: `Ok(None)` when it does not exist.
/// Errors are messages for logs and templates.
pub trait Fetch: Send + Sync + 'static {
    fn fetch(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Option<Value>, String>>;
}

/// A fetched body.
#[derive(Debug, Clone)]
struct Cached {
    version: Version,
    body: Document,
    fetched: Instant,
}

type Flight = Shared<BoxFuture<'static, Result<Option<Value>, String>>>;

/// How many GETs of one store may run at once; also how many bodies a loop
/// over a store reads ahead.
pub const CONCURRENT_GETS: usize = 16;

/// The bodies of one on-demand store.
pub struct BodyCache {
    name: String,
    fetch: Arc<dyn Fetch>,
    ignore_fields: Vec<FieldPath>,
    ttl: Duration,
    entries: Mutex<lru::LruCache<ObjectId, Cached>>,
    in_flight: Mutex<HashMap<ObjectId, Flight>>,
    gets: Arc<Semaphore>,
    stale_logged: Mutex<HashSet<ObjectId>>,
    /// Hits, misses, stale uses, fetch errors and fetch latency.
    pub stats: CacheMetrics,
}

impl std::fmt::Debug for BodyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCache")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("resources.{store}: cannot fetch {object}: {message}")]
pub struct FetchError {
    pub store: String,
    pub object: String,
    pub message: String,
}

/// One object to read: identity, names and the version the watch reported.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub id: ObjectId,
    pub namespace: String,
    pub name: String,
    pub version: Version,
}

impl BodyCache {
    pub fn new(
        name: &str,
        fetch: Arc<dyn Fetch>,
        settings: CacheSettings,
        ignore_fields: Vec<FieldPath>,
        stats: CacheMetrics,
    ) -> BodyCache {
        let capacity = NonZeroUsize::new(settings.max_entries).unwrap_or(NonZeroUsize::MIN);
        BodyCache {
            name: name.to_string(),
            fetch,
            ignore_fields,
            ttl: settings.ttl,
            entries: Mutex::new(lru::LruCache::new(capacity)),
            in_flight: Mutex::new(HashMap::new()),
            gets: Arc::new(Semaphore::new(CONCURRENT_GETS)),
            stale_logged: Mutex::new(HashSet::new()),
            stats,
        }
    }

    /// How many bodies are cached.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every cached body (for finding the values of fetched Secrets).
    pub fn bodies(&self) -> Vec<Document> {
        lock(&self.entries)
            .iter()
            .map(|(_, cached)| cached.body.clone())
            .collect()
    }

    /// The bodies of `wanted`, in order, fetched concurrently where needed;
    /// objects that no longer exist are left out.
    pub async fn read_all(&self, wanted: &[Wanted]) -> Result<Vec<Document>, FetchError> {
        let bodies = futures::future::join_all(wanted.iter().map(|w| self.read(w))).await;
        bodies.into_iter().filter_map(Result::transpose).collect()
    }

    /// The body of one object, or `None` when it no longer exists.
    pub async fn read(&self, wanted: &Wanted) -> Result<Option<Document>, FetchError> {
        if let Some(cached) = lock(&self.entries).get(&wanted.id)
            && cached.version == wanted.version
            && cached.fetched.elapsed() < self.ttl
        {
            self.stats.hits.inc();
            return Ok(Some(cached.body.clone()));
        }
        self.stats.misses.inc();
        let (flight, started_it) = self.flight(wanted);
        let started = Instant::now();
        let result = flight.clone().await;
        {
            // Whoever finishes first retires the flight, so that a later read
            // fetches afresh.
            let mut in_flight = lock(&self.in_flight);
            if in_flight.get(&wanted.id).is_some_and(|f| f.ptr_eq(&flight)) {
                in_flight.remove(&wanted.id);
            }
        }
        if started_it {
            self.stats.fetch_duration.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Some(object)) => {
                let body = Document::from_json_without(&object, &self.ignore_fields);
                let version = Version::of(Meta::of(body.root()).resource_version);
                lock(&self.entries).put(
                    wanted.id,
                    Cached {
                        version,
                        body: body.clone(),
                        fetched: Instant::now(),
                    },
                );
                lock(&self.stale_logged).remove(&wanted.id);
                Ok(Some(body))
            }
            Ok(None) => {
                lock(&self.entries).pop(&wanted.id);
                Ok(None)
            }
            Err(message) => {
                self.stats.errors.inc();
                let object = format!("{}/{}", wanted.namespace, wanted.name);
                let copy = lock(&self.entries).get(&wanted.id).cloned();
                let Some(copy) = copy else {
                    return Err(FetchError {
                        store: self.name.clone(),
                        object,
                        message,
                    });
                };
                self.stats.stale.inc();
                if lock(&self.stale_logged).insert(wanted.id) {
                    tracing::warn!(
                        store = %self.name,
                        object = %object,
                        age_secs = copy.fetched.elapsed().as_secs(),
                        error = %message,
                        "fetch failed; using the cached copy"
                    );
                }
                Ok(Some(copy.body))
            }
        }
    }

    /// The GET of `wanted`, shared with every concurrent reader of the same
    /// object; `true` for the reader that started it.
    fn flight(&self, wanted: &Wanted) -> (Flight, bool) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(flight) = in_flight.get(&wanted.id) {
            return (flight.clone(), false);
        }
        let fetch = self.fetch.fetch(&wanted.namespace, &wanted.name);
        let gets = Arc::clone(&self.gets);
        let flight = async move {
            let _permit = gets.acquire_owned().await.map_err(|e| e.to_string())?;
            fetch.await
        }
        .boxed()
        .shared();
        in_flight.insert(wanted.id, flight.clone());
        (flight, true)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::sync::Notify;

    use super::*;

    /// A fetcher over a map of objects that counts GETs, can fail, and can hold
    /// every GET until released.
    #[derive(Default)]
    struct FakeFetch {
        objects: Mutex<HashMap<String, Value>>,
        gets: AtomicUsize,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
        gate: Option<Arc<Notify>>,
    }

    impl FakeFetch {
        fn put(&self, name: &str, version: u64, data: &str) {
            let object = json!({"metadata": {"namespace": "ns", "name": name, "resourceVersion": version.to_string(),
                "managedFields": [{"manager": "x"}]}, "data": {"v": data}});
            lock(&self.objects).insert(name.to_string(), object);
        }
    }

    impl Fetch for Arc<FakeFetch> {
        fn fetch(&self, _namespace: &str, name: &str) -> BoxFuture<'static, Result<Option<Value>, String>> {
            let this = Arc::clone(self);
            let name = name.to_string();
            async move {
                this.gets.fetch_add(1, Ordering::SeqCst);
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.most_at_once.fetch_max(now, Ordering::SeqCst);
                if let Some(gate) = &this.gate {
                    gate.notified().await;
                }
                tokio::task::yield_now().await;
                this.running.fetch_sub(1, Ordering::SeqCst);
                if this.failing.load(Ordering::SeqCst) {
                    return Err("connection refused".to_string());
                }
                Ok(lock(&this.objects).get(&name).cloned())
            }
            .boxed()
        }
    }

    fn cache(fetch: &Arc<FakeFetch>, max_entries: usize, ttl: Duration) -> BodyCache {
        BodyCache::new(
            "secrets",
            Arc::new(Arc::clone(fetch)),
            CacheSettings { ttl, max_entries },
            vec![FieldPath::parse("metadata.managedFields").unwrap()],
            CacheMetrics::default(),
        )
    }

    fn wanted(name: &str, version: u64) -> Wanted {
        Wanted {
            id: ObjectId::new("", "ns", name),
            namespace: "ns".into(),
            name: name.into(),
            version: Version(version),
        }
    }

    fn data(body: &Document) -> String {
        body.root()
            .get("data")
            .unwrap()
            .get("v")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_second_read_of_the_same_version_is_a_hit() {
        let fetch = Arc::new(FakeFetch::default());
        fetch.put("a", 1, "one");
        let cache = cache(&fetch, 10, Duration::from_secs(60));
        let body = cache.read(&wanted("a", 1)).await.unwrap().unwrap();
        assert_eq!(data(&body), "one");
        assert!(body.root().get("metadata").unwrap().get("managedFields").is_none());
        cache.read(&wanted("a", 1)).await.unwrap();
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats.hits.get(), 1);
        assert_eq!(cache.stats.misses.get(), 1);
        let metrics = crate::telemetry::metrics::Metrics::new();
        let registered = BodyCache::new(
            "secrets",
            Arc::new(Arc::clone(&fetch)),
            CacheSettings {
                ttl: Duration::from_secs(120),
                max_entries: 512,
            },
            Vec::new(),
            CacheMetrics::registered(&metrics, "secrets"),
        );
        registered.read(&wanted("a", 1)).await.unwrap();
        registered.read(&wanted("a", 1)).await.unwrap();
        let text = metrics.encode();
        for line in [
            "kube_template_cache_hits_total{store=\"secrets\"} 1",
            "kube_template_cache_misses_total{store=\"secrets\"} 1",
            "kube_template_cache_fetch_duration_seconds_count{store=\"secrets\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_newer_version_from_the_watch_is_fetched_again_once() {
        let fetch = Arc::new(FakeFetch::default());
        fetch.put("a", 1, "one");
        let cache = cache(&fetch, 10, Duration::from_secs(60));
        cache.read(&wanted("a", 1)).await.unwrap();
        fetch.put("a", 2, "two");
        let body = cache.read(&wanted("a", 2)).await.unwrap().unwrap();
        assert_eq!(data(&body), "two");
        cache.read(&wanted("a", 2)).await.unwrap();
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_object_share_one_get() {
        let gate = Arc::new(Notify::new());
        let fetch = Arc::new(FakeFetch {
            gate: Some(Arc::clone(&gate)),
            ..FakeFetch::default()
        });
        fetch.put("a", 1, "one");
        let cache = Arc::new(cache(&fetch, 10, Duration::from_secs(60)));
        let readers: Vec<_> = (0..20)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.read(&wanted("a", 1)).await })
            })
            .collect();
        // Let every reader join the flight before the GET answers.
        while fetch.gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for reader in readers {
            assert_eq!(data(&reader.await.unwrap().unwrap().unwrap()), "one");
        }
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn many_reads_fetch_concurrently_within_the_bound() {
        let fetch = Arc::new(FakeFetch::default());
        let names: Vec<String> = (0..50).map(|i| format!("o{i}")).collect();
        for name in &names {
            fetch.put(name, 1, name);
        }
        let cache = cache(&fetch, 100, Duration::from_secs(60));
        let all: Vec<Wanted> = names.iter().map(|n| wanted(n, 1)).collect();
        let bodies = cache.read_all(&all).await.unwrap();
        assert_eq!(bodies.iter().map(data).collect::<Vec<_>>(), names);
        let most = fetch.most_at_once.load(Ordering::SeqCst);
        assert!(most > 1 && most <= CONCURRENT_GETS, "{most} GETs ran at once");
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_max_entries() {
        let fetch = Arc::new(FakeFetch::default());
        for i in 0..100 {
            fetch.put(&format!("o{i}"), 1, "x");
        }
        let cache = cache(&fetch, 10, Duration::from_secs(60));
        for i in 0..100 {
            cache.read(&wanted(&format!("o{i}"), 1)).await.unwrap();
        }
        assert_eq!(cache.len(), 10);
        cache.read(&wanted("o99", 1)).await.unwrap();
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 100, "the most recent entries stay");
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_past_its_ttl_is_fetched_again() {
        let fetch = Arc::new(FakeFetch::default());
        fetch.put("a", 1, "one");
        let cache = cache(&fetch, 10, Duration::from_secs(120));
        cache.read(&wanted("a", 1)).await.unwrap();
        tokio::time::advance(Duration::from_secs(119)).await;
        cache.read(&wanted("a", 1)).await.unwrap();
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.read(&wanted("a", 1)).await.unwrap();
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_get_uses_a_cached_copy_or_fails_without_one() {
        let fetch = Arc::new(FakeFetch::default());
        fetch.put("a", 1, "one");
        fetch.put("b", 1, "two");
        let cache = cache(&fetch, 10, Duration::from_secs(60));
        cache.read(&wanted("a", 1)).await.unwrap();
        fetch.failing.store(true, Ordering::SeqCst);
        let stale = cache.read(&wanted("a", 2)).await.unwrap().unwrap();
        assert_eq!(data(&stale), "one");
        assert_eq!(cache.stats.stale.get(), 1);
        let error = cache.read(&wanted("b", 1)).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "resources.secrets: cannot fetch ns/b: connection refused"
        );
        assert_eq!(cache.stats.errors.get(), 2);
    }

    #[tokio::test]
    async fn an_object_deleted_before_its_get_is_absent() {
        let fetch = Arc::new(FakeFetch::default());
        fetch.put("a", 1, "one");
        let cache = cache(&fetch, 10, Duration::from_secs(60));
        let bodies = cache.read_all(&[wanted("gone", 1), wanted("a", 1)]).await.unwrap();
        assert_eq!(bodies.iter().map(data).collect::<Vec<_>>(), ["one"]);
    }

    #[test]
    fn versions_are_numbers_or_digests() {
        assert_eq!(Version::of("12345"), Version(12345));
        assert_ne!(Version::of("abc"), Version::of("abd"));
        assert_ne!(Version::of("abc").0, 12345);
    }
}
