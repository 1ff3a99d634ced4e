//! The indexer: each object's composite key from its `index_by` expressions
//! ([`FieldPath`]s). A key is the tuple of the values, never a joined string,
//! so values that contain `/` cannot collide.

use serde::Deserialize;

use crate::object::{FieldPath, Json, Node};

/// What happens to an object whose `index_by` value is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnMissingKey {
    /// The missing part of the key is `""`.
    #[default]
    Empty,
    /// The object is not stored (and counted).
    Skip,
}

/// A composite key: one value per `index_by` expression.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub Vec<String>);

impl Key {
    pub fn parts(&self) -> &[String] {
        &self.0
    }
}

/// Computes keys for one watched resource.
#[derive(Debug, Clone)]
pub struct Indexer {
    paths: Vec<FieldPath>,
    on_missing: OnMissingKey,
}

impl Indexer {
    pub fn new(paths: Vec<FieldPath>, on_missing: OnMissingKey) -> Indexer {
        Indexer { paths, on_missing }
    }

    /// The `index_by` expressions, in key order.
    pub fn paths(&self) -> &[FieldPath] {
        &self.paths
    }

    /// The object's key, or `None` when a value is missing and the policy is
    /// `skip`. Strings are used as they are, numbers and booleans in their JSON
    /// form, lists and mappings as compact JSON; `null` counts as missing.
    pub fn key(&self, object: Node<'_>) -> Option<Key> {
        let mut parts = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let value = object.at_path(path);
            match value.map(Node::json) {
                Some(Json::String(s)) => parts.push(s.to_string()),
                Some(Json::Null) | None => match self.on_missing {
                    OnMissingKey::Empty => parts.push(String::new()),
                    OnMissingKey::Skip => return None,
                },
                Some(_) => parts.push(serde_json::to_string(&value).unwrap_or_default()),
            }
        }
        Some(Key(parts))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::object::Document;

    fn key_of(indexer: &Indexer, object: serde_json::Value) -> Option<Key> {
        indexer.key(Document::from_json(&object).root())
    }

    fn indexer(exprs: &[&str], on_missing: OnMissingKey) -> Indexer {
        Indexer::new(exprs.iter().map(|e| FieldPath::parse(e).unwrap()).collect(), on_missing)
    }

    #[test]
    fn key_is_a_tuple_so_values_with_slashes_do_not_collide() {
        let ix = indexer(&["metadata.namespace", "metadata.name"], OnMissingKey::Empty);
        let a = key_of(&ix, json!({"metadata": {"namespace": "a/b", "name": "c"}})).unwrap();
        let b = key_of(&ix, json!({"metadata": {"namespace": "a", "name": "b/c"}})).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn numbers_and_booleans_use_their_json_form() {
        let ix = indexer(&["spec.port", "spec.on"], OnMissingKey::Empty);
        let key = key_of(&ix, json!({"spec": {"port": 8080, "on": true}})).unwrap();
        assert_eq!(key.parts(), ["8080", "true"]);
    }

    #[test]
    fn missing_values_follow_on_missing_key() {
        let obj = json!({"metadata": {"name": "x"}});
        let empty = indexer(&["metadata.labels.app", "metadata.name"], OnMissingKey::Empty);
        assert_eq!(key_of(&empty, obj.clone()).unwrap().parts(), ["", "x"]);
        let skip = indexer(&["metadata.labels.app", "metadata.name"], OnMissingKey::Skip);
        assert_eq!(key_of(&skip, obj.clone()), None);
        assert_eq!(
            key_of(&skip, json!({"metadata": {"name": "x", "labels": {"app": null}}})),
            None
        );
    }
}
