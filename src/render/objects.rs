//! The template-facing view of the stores: `resources.<name>` with `get`,
//! `get_one`, `keys`, iteration and `|length`, all read from one snapshot and
//! without copying objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

use crate::object::document::Document;
use crate::render::value::document;
use crate::store::on_demand::{BodyCache, CONCURRENT_GETS, Reference, Wanted};
use crate::store::{Slot, Snapshot, StoreSnapshot};

/// One consistent point in time across all stores: what a render reads.
#[derive(Debug, Clone, Default)]
pub struct StoresSnapshot {
    pub stores: BTreeMap<String, StoreSnapshot>,
}

/// `resources`: a mapping of store names to [`StoreView`]s.
#[derive(Debug)]
pub struct Resources {
    stores: BTreeMap<String, Value>,
}

impl Resources {
    pub fn new(snapshot: &StoresSnapshot) -> Resources {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let stores = snapshot
            .stores
            .iter()
            .map(|(name, store)| {
                let view = StoreView {
                    name: name.clone(),
                    store: store.clone(),
                    runtime: runtime.clone(),
                };
                (name.clone(), Value::from_object(view))
            })
            .collect();
        Resources { stores }
    }
}

impl Object for Resources {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.stores.get(key.as_str()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.stores.keys().map(|k| Value::from(k.as_str()))))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.stores.len())
    }
}

/// `resources.<name>`: the objects of one store.
#[derive(Debug)]
pub struct StoreView {
    name: String,
    store: StoreSnapshot,
    /// Where on-demand reads run; templates are synchronous, so a read blocks
    /// the rendering thread (never an async worker) until its GETs are done.
    runtime: Option<tokio::runtime::Handle>,
}

impl StoreView {
    fn key_args(&self, method: &str, args: &[Value]) -> Result<Vec<String>, Error> {
        args.iter()
            .enumerate()
            .map(|(i, arg)| match arg.kind() {
                ValueKind::String => Ok(arg.as_str().unwrap_or_default().to_string()),
                ValueKind::Number | ValueKind::Bool => Ok(arg.to_string()),
                ValueKind::None => Ok(String::new()),
                kind => Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "resources.{}.{method}(): key value {} is {kind}; keys are strings, numbers or booleans",
                        self.name,
                        i + 1
                    ),
                )),
            })
            .collect()
    }

    /// The slots whose key starts with `prefix` (all for `None`), in order.
    fn slots(&self, prefix: Option<&[String]>) -> Vec<Slot> {
        fn collect<'a, T: 'a>(iter: impl Iterator<Item = (&'a Slot, &'a T)>) -> Vec<Slot> {
            iter.map(|(slot, _)| slot.clone()).collect()
        }
        match (&self.store, prefix) {
            (StoreSnapshot::Full(s), None) => collect(s.iter()),
            (StoreSnapshot::Full(s), Some(p)) => collect(s.prefix(p)),
            (StoreSnapshot::OnDemand { snapshot, .. }, None) => collect(snapshot.iter()),
            (StoreSnapshot::OnDemand { snapshot, .. }, Some(p)) => collect(snapshot.prefix(p)),
        }
    }

    /// The objects at `slots` of an on-demand store, in order: fetched
    /// concurrently, leaving out objects deleted meanwhile.
    fn fetch(&self, snapshot: &Snapshot<Reference>, cache: &BodyCache, slots: &[Slot]) -> Result<Vec<Value>, Error> {
        let layout = snapshot.layout();
        let wanted: Vec<Wanted> = slots
            .iter()
            .filter_map(|slot| {
                let reference = snapshot.get(slot)?;
                let (namespace, name) = slot.names(layout);
                Some(Wanted {
                    id: slot.id(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    version: reference.version,
                })
            })
            .collect();
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("resources.{}: on-demand reads need the live pipeline", self.name),
            )
        })?;
        runtime
            .block_on(cache.read_all(&wanted))
            .map(|bodies| bodies.into_iter().map(document).collect())
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    }

    /// The objects whose key starts with `prefix` (all for `None`), in order.
    /// Full documents are shared, not copied.
    fn objects(&self, prefix: Option<&[String]>) -> Result<Vec<Value>, Error> {
        match &self.store {
            StoreSnapshot::Full(s) => Ok(documents(s, prefix).into_iter().map(document).collect()),
            StoreSnapshot::OnDemand { snapshot, cache } => self.fetch(snapshot, cache, &self.slots(prefix)),
        }
    }

    fn full_name(&self, slot: &Slot) -> String {
        let layout = match &self.store {
            StoreSnapshot::Full(s) => s.layout(),
            StoreSnapshot::OnDemand { snapshot, .. } => snapshot.layout(),
        };
        match slot.names(layout) {
            (namespace, name) if namespace.is_empty() => name.into_owned(),
            (namespace, name) => format!("{namespace}/{name}"),
        }
    }
}

impl Object for StoreView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let index = key.as_usize()?;
        match &self.store {
            StoreSnapshot::Full(s) => s.nth(index).map(|(_, d)| document(d.clone())),
            StoreSnapshot::OnDemand { snapshot, cache } => {
                let (slot, _) = snapshot.nth(index)?;
                match self.fetch(snapshot, cache, std::slice::from_ref(slot)) {
                    // Deleted since the snapshot: absent.
                    Ok(mut bodies) => bodies.pop(),
                    // An invalid value fails the expression that reads it
                    // (`is defined` included), with this error.
                    Err(error) => Some(Value::from(error)),
                }
            }
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match &self.store {
            // A loop makes each object a value only when it reaches it.
            StoreSnapshot::Full(s) => Enumerator::Iter(Box::new(documents(s, None).into_iter().map(|d| {
                std::hint::black_box(d.warm());
                document(d)
            }))),
            StoreSnapshot::OnDemand { .. } => Enumerator::Iter(Box::new(Bodies {
                view: Arc::clone(self),
                last: None,
                window: Vec::new().into_iter(),
                failed: false,
            })),
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.store.len())
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "get" => {
                let prefix = self.key_args(method, args)?;
                Ok(Value::from(self.objects(Some(&prefix))?))
            }
            "get_one" => {
                let prefix = self.key_args(method, args)?;
                let slots = self.slots(Some(&prefix));
                match &slots[..] {
                    [] => Ok(Value::from(())),
                    [_] => Ok(self.objects(Some(&prefix))?.pop().unwrap_or(Value::from(()))),
                    [first, second, rest @ ..] => Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!(
                            "resources.{}.get_one({}) matches {} objects ({}, {}{}); use get() to read several",
                            self.name,
                            quoted(&prefix),
                            slots.len(),
                            self.full_name(first),
                            self.full_name(second),
                            if rest.is_empty() { "" } else { ", …" }
                        ),
                    )),
                }
            }
            "keys" => {
                if !args.is_empty() {
                    return Err(Error::new(
                        ErrorKind::TooManyArguments,
                        format!("resources.{}.keys() takes no arguments", self.name),
                    ));
                }
                let keys = match &self.store {
                    StoreSnapshot::Full(s) => s.keys(),
                    StoreSnapshot::OnDemand { snapshot, .. } => snapshot.keys(),
                };
                Ok(Value::from(
                    keys.into_iter()
                        .map(|k| Value::from(k.into_iter().map(|part| Value::from(&*part)).collect::<Vec<_>>()))
                        .collect::<Vec<_>>(),
                ))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// The bodies of an on-demand store in order, read one window of
/// [`CONCURRENT_GETS`] objects at a time as a loop reaches them: a loop over
/// the whole store holds at most one window of bodies besides the cache's
/// `max_entries`, however many objects the store has.
struct Bodies {
    view: Arc<StoreView>,
    /// The last slot of the window read before this one.
    last: Option<Slot>,
    window: std::vec::IntoIter<Value>,
    failed: bool,
}

impl Iterator for Bodies {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(body) = self.window.next() {
                return Some(body);
            }
            let StoreSnapshot::OnDemand { snapshot, cache } = &self.view.store else {
                return None;
            };
            if self.failed {
                return None;
            }
            let slots: Vec<Slot> = match &self.last {
                None => snapshot.iter().take(CONCURRENT_GETS).map(|(s, _)| s.clone()).collect(),
                Some(last) => snapshot
                    .after(last)
                    .take(CONCURRENT_GETS)
                    .map(|(s, _)| s.clone())
                    .collect(),
            };
            self.last = Some(slots.last()?.clone());
            match self.view.fetch(snapshot, cache, &slots) {
                Ok(bodies) => self.window = bodies.into_iter(),
                Err(error) => {
                    self.failed = true;
                    // An invalid value fails the loop that reaches it, with this error.
                    return Some(Value::from(error));
                }
            }
        }
    }
}

/// The documents of a full store whose key starts with `prefix` (all for
/// `None`), in order.
fn documents(snapshot: &Snapshot<Document>, prefix: Option<&[String]>) -> Vec<Document> {
    match prefix {
        None => snapshot.iter().map(|(_, d)| d.clone()).collect(),
        Some(prefix) => snapshot.prefix(prefix).map(|(_, d)| d.clone()).collect(),
    }
}

fn quoted(parts: &[String]) -> String {
    parts.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use futures::future::BoxFuture;
    use serde_json::json;

    use super::*;
    use crate::index::Indexer;
    use crate::object::FieldPath;
    use crate::store::on_demand::{CacheSettings, Fetch, OnDemandStore};

    /// Answers every GET with a small body, counting them; fails once `failing`.
    #[derive(Default)]
    struct Counting {
        gets: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Fetch for Arc<Counting> {
        fn fetch(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Option<serde_json::Value>, String>> {
            let this = Arc::clone(self);
            let body = json!({"metadata": {"namespace": namespace, "name": name, "resourceVersion": "1"}});
            async move {
                this.gets.fetch_add(1, Ordering::SeqCst);
                if this.failing.load(Ordering::SeqCst) {
                    return Err("connection refused".into());
                }
                Ok(Some(body))
            }
            .boxed()
        }
    }

    /// An on-demand store `s` of `n` references read through `fetch`.
    fn on_demand(n: usize, fetch: &Arc<Counting>) -> StoresSnapshot {
        let index_by = ["metadata.namespace", "metadata.name"].map(|e| FieldPath::parse(e).unwrap());
        let mut store = OnDemandStore::new(Indexer::new(index_by.to_vec(), Default::default()), Vec::new());
        for i in 0..n {
            let reference =
                json!({"metadata": {"namespace": "ns", "name": format!("o{i:05}"), "resourceVersion": "1"}});
            store.apply(Document::from_json(&reference));
        }
        let settings = CacheSettings {
            ttl: std::time::Duration::from_secs(60),
            max_entries: 8,
        };
        let cache = BodyCache::new(
            "s",
            Arc::new(Arc::clone(fetch)),
            settings,
            Vec::new(),
            Default::default(),
        );
        let store = StoreSnapshot::OnDemand {
            snapshot: store.snapshot(),
            cache: Arc::new(cache),
        };
        StoresSnapshot {
            stores: BTreeMap::from([("s".to_string(), store)]),
        }
    }

    /// Renders `template` with `resources` and `gets()` (GETs so far), off
    /// the runtime's threads as the pipeline does.
    async fn render(snapshot: StoresSnapshot, fetch: &Arc<Counting>, template: &'static str) -> Result<String, Error> {
        let fetch = Arc::clone(fetch);
        tokio::task::spawn_blocking(move || {
            let mut env = minijinja::Environment::new();
            // Debug info would print `resources`, reading every object.
            env.set_debug(false);
            env.add_global("resources", Value::from_object(Resources::new(&snapshot)));
            env.add_function("gets", move || fetch.gets.load(Ordering::SeqCst));
            env.render_str(template, ())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loop_over_an_on_demand_store_fetches_a_window_at_a_time() {
        let fetch = Arc::new(Counting::default());
        let text = render(
            on_demand(1000, &fetch),
            &fetch,
            "{% for o in resources.s %}{{ gets() }} {% endfor %}",
        )
        .await
        .unwrap();
        let seen: Vec<usize> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert_eq!(seen.len(), 1000);
        for (i, gets) in seen.iter().enumerate() {
            let window_end = (i / CONCURRENT_GETS + 1) * CONCURRENT_GETS;
            assert!(*gets <= window_end, "object {i} was reached after {gets} GETs");
        }
        assert_eq!(fetch.gets.load(Ordering::SeqCst), 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_get_fails_positional_reads_and_loops_instead_of_hiding_the_object() {
        let fetch = Arc::new(Counting::default());
        fetch.failing.store(true, Ordering::SeqCst);
        for template in [
            "{% if resources.s[3] is defined %}yes{% else %}no{% endif %}",
            "{{ resources.s[3].metadata.name }}",
            "{% for o in resources.s %}{{ o.metadata.name }}{% endfor %}",
        ] {
            let error = render(on_demand(40, &fetch), &fetch, template).await.unwrap_err();
            assert!(
                error.to_string().contains("cannot fetch ns/o000"),
                "{template}: {error}"
            );
        }
        fetch.failing.store(false, Ordering::SeqCst);
        let text = render(
            on_demand(40, &fetch),
            &fetch,
            "{{ resources.s[39].metadata.name }} {{ resources.s[0].metadata.name }} {{ resources.s[40] is defined }}",
        )
        .await
        .unwrap();
        assert_eq!(text, "o00039 o00000 False");
    }
}
