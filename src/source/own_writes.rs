//! The sidecar's own writes, seen coming back through its watches.
//!
//! With a `status:` section every render writes its outcome into annotations
//! of a ConfigMap (`kube-template/last-render-time`, …). A config that also
//! watches that ConfigMap gets each write back as an event; if that event
//! caused a render, the render would write again, forever. [`OwnWrites`]
//! tells such events apart: a change whose only difference from the object's
//! previous state is in `kube-template/*` annotations.
//!
//! It compares an object with its previous state as the watch delivered it,
//! so it works for metadata-only watches too (their events carry labels and
//! annotations). There, a write that changes a body and `kube-template/*`
//! annotations at once looks like an own write; kube-template's own status
//! writes never change anything else, and nobody else writes those annotations.
//! An object is known from the first time it carried them: the first write
//! into a ConfigMap that never had them causes one more render, whose own
//! write is then recognised.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::Value;

use super::{Event, Scope};
use crate::object::document::{Document, Json};
use crate::object::{Meta, ObjectId};

/// Annotations under this prefix are kube-template's own (its status writer's).
pub const OWN_ANNOTATIONS: &str = "kube-template/";

/// Remembers, for the objects that carry `kube-template/*` annotations (in
/// practice: the status ConfigMap), what they looked like, so that a change
/// of those annotations alone is recognised. Objects without them cost
/// nothing but a look at their annotations.
#[derive(Debug, Default)]
pub struct OwnWrites {
    /// By watch and object: its namespace and its digests.
    seen: HashMap<(usize, ObjectId), Seen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    namespace: String,
    /// The `kube-template/*` annotations.
    ours: u64,
    /// Everything else, but the resourceVersion and managedFields (which
    /// every write changes).
    rest: u64,
}

impl OwnWrites {
    /// Notes `event` of watch number `watch`; whether it only changed
    /// `kube-template/*` annotations of an object, so that it needs no render.
    pub fn only_ours(&mut self, watch: usize, event: &Event) -> bool {
        match event {
            Event::Applied(object) => {
                let id = Meta::of(object.root()).id;
                match digest(object) {
                    Some(now) => {
                        let before = self.seen.insert((watch, id), now.clone());
                        before.is_some_and(|before| before.rest == now.rest && before.ours != now.ours)
                    }
                    None => {
                        self.seen.remove(&(watch, id));
                        false
                    }
                }
            }
            Event::Deleted(object) => {
                self.seen.remove(&(watch, Meta::of(object.root()).id));
                false
            }
            Event::Listed { scope, objects } => {
                self.forget_scope(watch, scope);
                for object in objects {
                    if let Some(now) = digest(object) {
                        self.seen.insert((watch, Meta::of(object.root()).id), now);
                    }
                }
                false
            }
        }
    }

    fn forget_scope(&mut self, watch: usize, scope: &Scope) {
        self.seen
            .retain(|(w, _), seen| *w != watch || scope.as_ref().is_some_and(|namespace| *namespace != seen.namespace));
    }
}

/// The digests of an object that carries `kube-template/*` annotations.
fn digest(object: &Document) -> Option<Seen> {
    let annotations = object.root().get("metadata")?.get("annotations")?;
    let Json::Map(annotations) = annotations.json() else {
        return None;
    };
    if !annotations.entries().any(|(key, _)| key.starts_with(OWN_ANNOTATIONS)) {
        return None;
    }
    let mut value = object.to_json();
    let metadata = value.get_mut("metadata").and_then(Value::as_object_mut)?;
    metadata.remove("resourceVersion");
    metadata.remove("managedFields");
    let annotations = metadata.get_mut("annotations").and_then(Value::as_object_mut)?;
    let ours: BTreeMap<String, Value> = annotations
        .iter()
        .filter(|(key, _)| key.starts_with(OWN_ANNOTATIONS))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    annotations.retain(|key, _| !key.starts_with(OWN_ANNOTATIONS));
    Some(Seen {
        namespace: Meta::of(object.root()).namespace.to_string(),
        ours: hash(&Value::from(serde_json::Map::from_iter(ours))),
        rest: hash(&value),
    })
}

fn hash(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(rv: u64, time: &str, data: &str) -> Event {
        Event::Applied(Document::from_json(&json!({
            "metadata": {"namespace": "ops", "name": "status", "uid": "6f1c2a8e-1d4b-4f5e-9a51-0c7f8a3b2d01",
                "resourceVersion": rv.to_string(), "managedFields": [{"manager": format!("m{rv}")}],
                "annotations": {"kube-template/last-render-time": time, "team": "edge"}},
            "data": {"k": data},
        })))
    }

    #[test]
    fn a_change_of_our_annotations_alone_is_ours_and_any_other_is_not() {
        let mut own = OwnWrites::default();
        assert!(!own.only_ours(0, &status(1, "t1", "a")), "first sight");
        assert!(own.only_ours(0, &status(2, "t2", "a")));
        assert!(!own.only_ours(0, &status(3, "t2", "b")), "the data changed");
        assert!(!own.only_ours(0, &status(4, "t3", "c")), "the data changed too");
        assert!(
            !own.only_ours(1, &status(5, "t4", "c")),
            "another watch saw it first now"
        );
        assert!(own.only_ours(1, &status(6, "t5", "c")));
    }

    #[test]
    fn objects_without_our_annotations_are_never_ours_and_not_remembered() {
        let mut own = OwnWrites::default();
        let plain = |rv: u64| {
            Event::Applied(Document::from_json(
                &json!({"metadata": {"namespace": "a", "name": "x", "resourceVersion": rv.to_string()}}),
            ))
        };
        assert!(!own.only_ours(0, &plain(1)));
        assert!(!own.only_ours(0, &plain(2)));
        assert!(own.seen.is_empty());
    }

    #[test]
    fn a_listing_or_a_delete_starts_over() {
        let mut own = OwnWrites::default();
        own.only_ours(0, &status(1, "t1", "a"));
        let Event::Applied(object) = status(2, "t2", "a") else {
            unreachable!()
        };
        own.only_ours(0, &Event::Deleted(object));
        assert!(!own.only_ours(0, &status(3, "t3", "a")));
        let Event::Applied(listed) = status(4, "t4", "a") else {
            unreachable!()
        };
        own.only_ours(
            0,
            &Event::Listed {
                scope: Some("other".into()),
                objects: vec![],
            },
        );
        assert!(own.only_ours(0, &status(5, "t5", "a")), "another namespace's listing");
        own.only_ours(
            0,
            &Event::Listed {
                scope: None,
                objects: vec![listed],
            },
        );
        assert!(own.only_ours(0, &status(6, "t6", "a")), "remembered from the listing");
        own.only_ours(
            0,
            &Event::Listed {
                scope: Some("ops".into()),
                objects: vec![],
            },
        );
        assert!(!own.only_ours(0, &status(7, "t7", "a")));
    }
}
