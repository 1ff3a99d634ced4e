//! The full store: whole objects (after `ignore_fields`), shared immutably with
//! renders.

use super::{Entry, Store};
use crate::object::Document;

/// Whole objects of one watched resource, indexed by its `index_by` keys;
/// each object is shared by every render (templates read it in place).
pub type FullStore = Store<Document>;

impl Entry for Document {
    fn from_object(object: Document) -> Self {
        object
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::index::Indexer;
    use crate::index::OnMissingKey;
    use crate::object::FieldPath;
    use crate::store::{Applied, Meta, ObjectId, Snapshot};

    fn store(exprs: &[&str], on_missing: OnMissingKey) -> FullStore {
        let paths = exprs.iter().map(|e| FieldPath::parse(e).unwrap()).collect();
        FullStore::new(
            Indexer::new(paths, on_missing),
            vec![FieldPath::parse("metadata.managedFields").unwrap()],
        )
    }

    fn obj(uid: &str, ns: &str, name: &str, app: &str) -> Document {
        doc(json!({"metadata": {"uid": uid, "namespace": ns, "name": name, "labels": {"app": app}}}))
    }

    fn doc(value: Value) -> Document {
        Document::from_json(&value)
    }

    fn names(snapshot: &Snapshot<Document>) -> Vec<String> {
        snapshot.iter().map(|(_, o)| name(o)).collect()
    }

    fn name(object: &Document) -> String {
        Meta::of(object.root()).name.to_string()
    }

    #[test]
    fn keys_are_not_unique_and_prefixes_match() {
        let mut s = store(&["metadata.labels.app", "metadata.namespace"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        s.apply(obj("2", "b", "two", "web"));
        s.apply(obj("3", "a", "three", "db"));
        let snap = s.snapshot();
        let web: Vec<_> = snap.prefix(&["web".into()]).map(|(_, o)| name(o)).collect();
        assert_eq!(web, ["one", "two"]);
        let web_b: Vec<_> = snap.prefix(&["web".into(), "b".into()]).map(|(_, o)| name(o)).collect();
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
        s.apply(doc(
            json!({"metadata": {"namespace": "a", "name": "x", "labels": {"v": "1"}}}),
        ));
        s.apply(doc(
            json!({"metadata": {"namespace": "a", "name": "x", "labels": {"v": "2"}}}),
        ));
        s.apply(doc(json!({"metadata": {"namespace": "b", "name": "x"}})));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn skipped_objects_are_counted_and_leave_the_store() {
        let mut s = store(&["metadata.labels.app"], OnMissingKey::Skip);
        s.apply(obj("1", "a", "one", "web"));
        assert_eq!(
            s.apply(doc(json!({"metadata": {"uid": "1", "namespace": "a", "name": "one"}}))),
            Applied::Skipped { removed: true }
        );
        assert_eq!(
            s.apply(doc(json!({"metadata": {"uid": "2", "namespace": "a", "name": "two"}}))),
            Applied::Skipped { removed: false }
        );
        assert_eq!((s.len(), s.skipped()), (0, 2));
        s.apply(obj("1", "a", "one", "web"));
        assert_eq!((s.len(), s.skipped()), (1, 1));
    }

    #[test]
    fn ignore_fields_are_pruned_before_storing() {
        let mut s = store(&["metadata.name"], OnMissingKey::Empty);
        s.apply(doc(
            json!({"metadata": {"name": "x", "managedFields": [{"manager": "kubectl"}]}}),
        ));
        let snap = s.snapshot();
        let (_, object) = snap.iter().next().unwrap();
        let metadata = object.root().get("metadata").unwrap();
        assert!(metadata.get("managedFields").is_none() && metadata.get("name").is_some());
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
    fn a_listing_is_stored_in_key_order_and_an_object_listed_twice_keeps_its_last() {
        let mut s = store(&["metadata.labels.app"], OnMissingKey::Empty);
        s.apply(obj("9", "a", "gone", "web"));
        s.reset_scope(None, vec![obj("2", "a", "two", "web"), obj("1", "a", "one", "db")]);
        assert_eq!(names(&s.snapshot()), ["one", "two"]);
        s.reset_scope(None, vec![obj("1", "a", "one", "web"), obj("1", "a", "renamed", "db")]);
        assert_eq!(names(&s.snapshot()), ["renamed"]);
        assert_eq!(s.len(), 1);
        assert!(s.delete(&obj("1", "a", "renamed", "db")) && s.is_empty());
    }

    #[test]
    fn a_snapshot_does_not_change_when_the_store_does() {
        let mut s = store(&["metadata.name"], OnMissingKey::Empty);
        s.apply(obj("1", "a", "one", "web"));
        let before = s.snapshot();
        s.apply(obj("2", "a", "two", "web"));
        s.reset_scope(None, vec![obj("3", "a", "three", "web")]);
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
                        s.reset_scope(None, items.iter().map(|(u, n, a)| obj(&u.to_string(), "ns", &format!("n{n}"), &format!("a{a}"))));
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
                    .map(|(slot, o)| (slot.key(snap.layout())[0].to_string(), name(o), slot.id()))
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
