//! The full store: whole objects (after `ignore_fields`), shared immutably with
//! renders.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Resource;
use crate::index::{FieldPath, Indexer};

use super::{Index, Meta, ObjectId, Snapshot};

/// One stored object, ready for templates.
#[derive(Debug)]
pub struct Object {
    pub meta: Meta,
    /// The object as templates see it (converted once, shared by every render).
    pub body: minijinja::Value,
}

/// What [`FullStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored (new, changed or moved).
    Stored,
    /// Not stored: an `index_by` value is missing and `on_missing_key: skip`.
    Skipped,
}

/// Whole objects of one watched resource, indexed by its `index_by` keys.
#[derive(Debug, Clone)]
pub struct FullStore {
    indexer: Indexer,
    ignore_fields: Vec<FieldPath>,
    index: Index<Arc<Object>>,
    /// Objects left out for a missing key, with their namespace.
    skipped: HashMap<ObjectId, String>,
}

impl FullStore {
    pub fn new(indexer: Indexer, ignore_fields: Vec<FieldPath>) -> FullStore {
        FullStore {
            index: Index::new(indexer.layout()),
            indexer,
            ignore_fields,
            skipped: HashMap::new(),
        }
    }

    pub fn for_resource(resource: &Resource) -> FullStore {
        FullStore::new(resource.indexer.clone(), resource.ignore_fields.clone())
    }

    /// Adds or updates an object (an ADDED or MODIFIED event).
    pub fn apply(&mut self, object: Value) -> Applied {
        match self.prepare(object) {
            Prepared::Stored(meta, key, object) => {
                self.skipped.remove(&meta.id);
                self.index.upsert(&meta, &key, object);
                Applied::Stored
            }
            Prepared::Skipped(meta) => {
                self.index.remove(meta.id);
                self.skipped.insert(meta.id, meta.namespace);
                Applied::Skipped
            }
        }
    }

    /// Removes an object (a DELETED event); only that object, never its key
    /// siblings.
    pub fn delete(&mut self, object: &Value) -> bool {
        let id = Meta::of(object).id;
        self.skipped.remove(&id);
        self.index.remove(id)
    }

    /// Replaces everything with `objects` at once (an initial list or re-list).
    pub fn reset(&mut self, objects: impl IntoIterator<Item = Value>) {
        self.reset_scope(None, objects);
    }

    /// Replaces the objects of one namespace (`Some`), or all (`None`), with
    /// `objects` at once: the listing of one scope of a watch.
    pub fn reset_scope(&mut self, namespace: Option<&str>, objects: impl IntoIterator<Item = Value>) {
        let mut stored = Vec::new();
        let mut skipped = Vec::new();
        for object in objects {
            match self.prepare(object) {
                Prepared::Stored(meta, key, object) => stored.push((meta, key, object)),
                Prepared::Skipped(meta) => skipped.push(meta),
            }
        }
        match namespace {
            None => self.skipped.clear(),
            Some(ns) => self.skipped.retain(|_, meta_ns| meta_ns != ns),
        }
        self.skipped.extend(skipped.into_iter().map(|m| (m.id, m.namespace)));
        self.index.replace_scope(namespace, stored);
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// How many objects are left out for a missing key (`on_missing_key: skip`).
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    pub fn snapshot(&self) -> Snapshot<Arc<Object>> {
        self.index.snapshot()
    }

    fn prepare(&self, mut object: Value) -> Prepared {
        let meta = Meta::of(&object);
        for field in &self.ignore_fields {
            field.remove(&mut object);
        }
        match self.indexer.key(&object) {
            Some(key) => {
                let body = crate::render::value::from_json(object);
                Prepared::Stored(meta.clone(), key, Arc::new(Object { meta, body }))
            }
            None => Prepared::Skipped(meta),
        }
    }
}

enum Prepared {
    Stored(Meta, crate::index::Key, Arc<Object>),
    Skipped(Meta),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::config::OnMissingKey;

    fn store(exprs: &[&str], on_missing: OnMissingKey) -> FullStore {
        let paths = exprs.iter().map(|e| FieldPath::parse(e).unwrap()).collect();
        FullStore::new(
            Indexer::new(paths, on_missing),
            vec![FieldPath::parse("metadata.managedFields").unwrap()],
        )
    }

    fn obj(uid: &str, ns: &str, name: &str, app: &str) -> Value {
        json!({"metadata": {"uid": uid, "namespace": ns, "name": name, "labels": {"app": app}}})
    }

    fn names(snapshot: &Snapshot<Arc<Object>>) -> Vec<String> {
        snapshot.iter().map(|(_, o)| o.meta.name.clone()).collect()
    }

    #[test]
    fn keys_are_not_unique_and_prefixes_match() {
        let mut s = store(&["metadata.labels.app", "metadata.namespace"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        s.apply(obj("2", "b", "two", "web"));
        s.apply(obj("3", "a", "three", "db"));
        let snap = s.snapshot();
        let web: Vec<_> = snap.prefix(&["web".into()]).map(|(_, o)| o.meta.name.clone()).collect();
        assert_eq!(web, ["one", "two"]);
        let web_b: Vec<_> = snap
            .prefix(&["web".into(), "b".into()])
            .map(|(_, o)| o.meta.name.clone())
            .collect();
        assert_eq!(web_b, ["two"]);
        assert_eq!(snap.prefix(&["we".into()]).count(), 0);
        assert_eq!(snap.keys().len(), 3);
    }

    #[test]
    fn delete_removes_only_that_object_not_its_key_siblings() {
        let mut s = store(&["metadata.labels.app"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        s.apply(obj("2", "a", "two", "web"));
        assert!(s.delete(&obj("1", "a", "one", "web")));
        assert_eq!(names(&s.snapshot()), ["two"]);
        assert!(!s.delete(&obj("1", "a", "one", "web")));
    }

    #[test]
    fn update_with_new_index_values_moves_the_object() {
        let mut s = store(&["metadata.labels.app"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        s.apply(obj("1", "a", "one", "db"));
        let snap = s.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap.prefix(&["web".into()]).count(), 0);
        assert_eq!(snap.prefix(&["db".into()]).count(), 1);
    }

    #[test]
    fn objects_without_uid_are_identified_by_namespace_and_name() {
        let mut s = store(&["metadata.name"], OnMissingKey::Empty);
        s.apply(json!({"metadata": {"namespace": "a", "name": "x", "labels": {"v": "1"}}}));
        s.apply(json!({"metadata": {"namespace": "a", "name": "x", "labels": {"v": "2"}}}));
        s.apply(json!({"metadata": {"namespace": "b", "name": "x"}}));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn skipped_objects_are_counted_and_leave_the_store() {
        let mut s = store(&["metadata.labels.app"], OnMissingKey::Skip);
        s.apply(obj("1", "a", "one", "web"));
        assert_eq!(
            s.apply(json!({"metadata": {"uid": "1", "namespace": "a", "name": "one"}})),
            Applied::Skipped
        );
        assert_eq!((s.len(), s.skipped()), (0, 1));
        s.apply(obj("1", "a", "one", "web"));
        assert_eq!((s.len(), s.skipped()), (1, 0));
    }

    #[test]
    fn ignore_fields_are_pruned_before_storing() {
        let mut s = store(&["metadata.name"], OnMissingKey::Empty);
        s.apply(json!({"metadata": {"name": "x", "managedFields": [{"manager": "kubectl"}]}}));
        let snap = s.snapshot();
        let (_, object) = snap.iter().next().unwrap();
        let metadata = object.body.get_attr("metadata").unwrap();
        assert!(metadata.get_attr("managedFields").unwrap().is_undefined());
    }

    #[test]
    fn a_scoped_reset_replaces_only_that_namespace() {
        let mut s = store(&["metadata.name"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        s.apply(obj("2", "b", "two", "web"));
        s.apply(obj("3", "b", "three", "web"));
        s.reset_scope(Some("b"), vec![obj("4", "b", "four", "web")]);
        assert_eq!(names(&s.snapshot()), ["four", "one"]);
        s.reset_scope(None, vec![]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_snapshot_does_not_change_when_the_store_does() {
        let mut s = store(&["metadata.name"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        let before = s.snapshot();
        s.apply(obj("2", "a", "two", "web"));
        s.reset(vec![obj("3", "a", "three", "web")]);
        assert_eq!(names(&before), ["one"]);
        assert_eq!(names(&s.snapshot()), ["three"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert { uid: u8, name: u8, app: u8 },
        Delete { uid: u8 },
        Reset { items: Vec<(u8, u8, u8)> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..8u8, 0..4u8, 0..3u8).prop_map(|(uid, name, app)| Op::Upsert { uid, name, app }),
            3 => (0..8u8).prop_map(|uid| Op::Delete { uid }),
            1 => proptest::collection::vec((0..8u8, 0..4u8, 0..3u8), 0..6).prop_map(|items| Op::Reset { items }),
        ]
    }

    proptest! {
        /// The store against a plain map of uid -> (app, name): same objects,
        /// in (key, namespace, name) order, and prefix queries agree.
        #[test]
        fn full_store_behaves_like_a_map_sorted_by_key(ops in proptest::collection::vec(op(), 1..60)) {
            let mut s = store(&["metadata.labels.app", "metadata.namespace"], OnMissingKey::Empty);
            let mut model: BTreeMap<u8, (u8, u8)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Upsert { uid, name, app } => {
                        s.apply(obj(&uid.to_string(), "ns", &format!("n{name}"), &format!("a{app}")));
                        model.insert(uid, (app, name));
                    }
                    Op::Delete { uid } => {
                        let removed = s.delete(&obj(&uid.to_string(), "ns", "ignored", "ignored"));
                        prop_assert_eq!(removed, model.remove(&uid).is_some());
                    }
                    Op::Reset { items } => {
                        s.reset(items.iter().map(|(u, n, a)| obj(&u.to_string(), "ns", &format!("n{n}"), &format!("a{a}"))));
                        model = items.iter().map(|(u, n, a)| (*u, (*a, *n))).collect();
                    }
                }
                let mut expected: Vec<(String, String, ObjectId)> = model
                    .iter()
                    .map(|(uid, (app, name))| (format!("a{app}"), format!("n{name}"), ObjectId::new(&uid.to_string(), "", "")))
                    .collect();
                expected.sort();
                let snap = s.snapshot();
                let actual: Vec<(String, String, ObjectId)> = snap
                    .iter()
                    .map(|(slot, o)| (slot.key(snap.layout())[0].to_string(), o.meta.name.clone(), o.meta.id))
                    .collect();
                prop_assert_eq!(&actual, &expected);
                for app in 0..3u8 {
                    let prefix = [format!("a{app}")];
                    let got = snap.prefix(&prefix).count();
                    let want = expected.iter().filter(|(a, _, _)| *a == prefix[0]).count();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
