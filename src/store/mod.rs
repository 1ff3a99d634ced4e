//! Stores: objects of one watched resource, ordered by key and answerable by
//! key prefix (DESIGN section 3).
//!
//! [`Index`] is the shared core: non-unique keys, identity by UID (or
//! namespace/name), moves on re-key, deletes that remove only their object,
//! deterministic order, and cheap snapshots for renders. [`full::FullStore`]
//! keeps whole objects in it.

pub mod full;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::Value;

use crate::index::Key;

/// How an object is identified: its UID, or `namespace/name` when it has none
/// (manifests written by hand).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub String);

/// Where an object sits in a store: key first, then namespace and name, then
/// identity (two objects may briefly share a name across a re-create).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub key: Key,
    pub namespace: String,
    pub name: String,
    pub id: ObjectId,
}

/// Namespace, name and identity of an object as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    pub id: ObjectId,
    pub resource_version: String,
}

impl Meta {
    /// Reads `metadata` of a Kubernetes object.
    pub fn of(object: &Value) -> Meta {
        let text = |field: &str| {
            object
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (namespace, name, uid) = (text("namespace"), text("name"), text("uid"));
        let id = if uid.is_empty() {
            ObjectId(format!("{namespace}/{name}"))
        } else {
            ObjectId(uid)
        };
        Meta {
            namespace,
            name,
            id,
            resource_version: text("resourceVersion"),
        }
    }
}

/// An ordered multi-map from slots to entries, with identity lookup.
///
/// Writers change it in place; [`Index::snapshot`] hands renders an immutable
/// view that later writes never touch (copy-on-write of the ordered map).
#[derive(Debug, Clone)]
pub struct Index<T> {
    entries: Arc<BTreeMap<Slot, T>>,
    slots: HashMap<ObjectId, Slot>,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index {
            entries: Arc::default(),
            slots: HashMap::new(),
        }
    }
}

impl<T: Clone> Index<T> {
    /// Inserts or replaces the object `meta.id` at `key`, moving it if its key
    /// (or name) changed.
    pub fn upsert(&mut self, meta: &Meta, key: Key, entry: T) {
        let slot = Slot {
            key,
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            id: meta.id.clone(),
        };
        let entries = Arc::make_mut(&mut self.entries);
        if let Some(old) = self.slots.insert(meta.id.clone(), slot.clone())
            && old != slot
        {
            entries.remove(&old);
        }
        entries.insert(slot, entry);
    }

    /// Removes the object with this identity; its key siblings stay.
    pub fn remove(&mut self, id: &ObjectId) -> bool {
        match self.slots.remove(id) {
            Some(slot) => {
                Arc::make_mut(&mut self.entries).remove(&slot);
                true
            }
            None => false,
        }
    }

    /// Replaces the whole content at once (a re-list).
    pub fn replace(&mut self, items: impl IntoIterator<Item = (Meta, Key, T)>) {
        let mut entries = BTreeMap::new();
        let mut slots = HashMap::new();
        for (meta, key, entry) in items {
            let slot = Slot {
                key,
                namespace: meta.namespace,
                name: meta.name,
                id: meta.id.clone(),
            };
            if let Some(old) = slots.insert(meta.id, slot.clone()) {
                entries.remove(&old);
            }
            entries.insert(slot, entry);
        }
        self.entries = Arc::new(entries);
        self.slots = slots;
    }

    /// Replaces the entries of one namespace (`Some`) or all entries (`None`)
    /// at once: a re-list of one scope of a watch.
    pub fn replace_scope(&mut self, namespace: Option<&str>, items: impl IntoIterator<Item = (Meta, Key, T)>) {
        let Some(namespace) = namespace else {
            self.replace(items);
            return;
        };
        let entries = Arc::make_mut(&mut self.entries);
        entries.retain(|slot, _| slot.namespace != namespace);
        self.slots.retain(|_, slot| slot.namespace != namespace);
        for (meta, key, entry) in items {
            self.upsert(&meta, key, entry);
        }
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.slots.contains_key(id)
    }

    pub fn get(&self, id: &ObjectId) -> Option<&T> {
        self.slots.get(id).and_then(|slot| self.entries.get(slot))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An immutable view of the current content.
    pub fn snapshot(&self) -> Snapshot<T> {
        Snapshot {
            entries: Arc::clone(&self.entries),
        }
    }
}

/// A point-in-time view of a store, as a render reads it.
#[derive(Debug, Clone)]
pub struct Snapshot<T> {
    entries: Arc<BTreeMap<Slot, T>>,
}

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot {
            entries: Arc::default(),
        }
    }
}

impl<T> Snapshot<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, by key, then namespace/name.
    pub fn iter(&self) -> impl Iterator<Item = (&Slot, &T)> + '_ {
        self.entries.iter()
    }

    /// The entries whose key starts with `prefix`, in order.
    pub fn prefix<'a>(&'a self, prefix: &'a [String]) -> impl Iterator<Item = (&'a Slot, &'a T)> + 'a {
        let start = Slot {
            key: Key(prefix.to_vec()),
            namespace: String::new(),
            name: String::new(),
            id: ObjectId(String::new()),
        };
        self.entries
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(slot, _)| slot.key.starts_with(prefix))
    }

    /// The distinct keys, in order.
    pub fn keys(&self) -> Vec<&Key> {
        let mut keys: Vec<&Key> = Vec::new();
        for slot in self.entries.keys() {
            if keys.last() != Some(&&slot.key) {
                keys.push(&slot.key);
            }
        }
        keys
    }

    /// Whether two snapshots are the same version of the same store.
    pub fn same_as(&self, other: &Snapshot<T>) -> bool {
        Arc::ptr_eq(&self.entries, &other.entries)
    }
}
