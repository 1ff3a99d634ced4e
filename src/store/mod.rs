//! Stores: objects of one watched resource, ordered by key and answerable by
//! key prefix (DESIGN section 3).
//!
//! [`Index`] is the shared core: non-unique keys, identity by UID (or
//! namespace/name), moves on re-key, deletes that remove only their object,
//! deterministic order, and cheap snapshots for renders. [`full::FullStore`]
//! keeps whole objects in it; [`on_demand::OnDemandStore`] only references.
//!
//! An entry's position is kept compact, because an on-demand store may hold a
//! million of them: one shared string of the key values, namespace and name,
//! each escaped and ended by `\0` ([`Slot`]), so that byte order is
//! tuple order and a key prefix is a string prefix; and a 128-bit identity.

pub mod full;
pub mod on_demand;
mod slot;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use crate::index::Indexer;
use crate::object::{Document, FieldPath, Meta, ObjectId};
pub use slot::Slot;
use slot::encode_prefix;

/// How a store's positions are laid out: how many key values, and whether
/// namespace and name follow them (not when the key is exactly
/// `[namespace, name]`, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub width: usize,
    pub names_in_key: bool,
}

impl Layout {
    /// How a store lays out `indexer`'s keys: `names_in_key` when the key
    /// is exactly `[metadata.namespace, metadata.name]`.
    pub fn of(indexer: &Indexer) -> Layout {
        let texts: Vec<String> = indexer.paths().iter().map(|p| p.to_string()).collect();
        Layout {
            width: texts.len(),
            names_in_key: texts == ["metadata.namespace", "metadata.name"],
        }
    }
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored (new, changed or moved).
    Stored,
    /// Not stored: an `index_by` value is missing and `on_missing_key: skip`.
    /// `removed`: it was stored until now.
    Skipped { removed: bool },
}

impl Applied {
    /// Whether the store's content changed: a skipped object that was not
    /// stored changes nothing, and renders nothing.
    pub fn changed(self) -> bool {
        !matches!(self, Applied::Skipped { removed: false })
    }
}

/// What a store keeps per object, made from the object (after
/// `ignore_fields`) when it is applied.
pub trait Entry: Clone + Send + Sync + 'static {
    fn from_object(object: Document) -> Self;
}

/// The objects of one watched resource, indexed by its `index_by` keys: pure
/// and synchronous (`apply`, `delete`, `reset_scope`); what it keeps per
/// object is `E` ([`full::FullStore`], [`on_demand::OnDemandStore`]).
#[derive(Debug, Clone)]
pub struct Store<E> {
    indexer: Indexer,
    ignore_fields: Vec<FieldPath>,
    index: Index<E>,
    /// Objects left out for a missing key, with their namespace.
    skipped: HashMap<ObjectId, String>,
}

impl<E: Entry> Store<E> {
    pub fn new(indexer: Indexer, ignore_fields: Vec<FieldPath>) -> Store<E> {
        Store {
            index: Index::new(Layout::of(&indexer)),
            indexer,
            ignore_fields,
            skipped: HashMap::new(),
        }
    }

    /// Adds or updates an object (an ADDED or MODIFIED event).
    pub fn apply(&mut self, object: Document) -> Applied {
        match self.prepare(object) {
            Prepared::Stored(slot, entry) => {
                self.skipped.remove(&slot.id);
                self.index.upsert(slot, entry);
                Applied::Stored
            }
            Prepared::Skipped(id, namespace) => {
                let removed = self.index.remove(id);
                self.skipped.insert(id, namespace);
                Applied::Skipped { removed }
            }
        }
    }

    /// Removes an object (a DELETED event); only that object, never its key
    /// siblings.
    pub fn delete(&mut self, object: &Document) -> bool {
        let id = Meta::of(object.root()).id;
        self.skipped.remove(&id);
        self.index.remove(id)
    }

    /// Replaces the objects of one namespace (`Some`), or all (`None`), with
    /// `objects` at once: the listing of one scope of a watch.
    pub fn reset_scope(&mut self, namespace: Option<&str>, objects: impl IntoIterator<Item = Document>) {
        let objects = objects.into_iter();
        let mut stored = Vec::with_capacity(objects.size_hint().0);
        let mut skipped = Vec::new();
        for object in objects {
            match self.prepare(object) {
                Prepared::Stored(slot, entry) => stored.push((slot, entry)),
                Prepared::Skipped(id, namespace) => skipped.push((id, namespace)),
            }
        }
        match namespace {
            None => self.skipped.clear(),
            Some(ns) => self.skipped.retain(|_, meta_ns| meta_ns != ns),
        }
        self.skipped.extend(skipped);
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

    pub fn snapshot(&self) -> Snapshot<E> {
        self.index.snapshot()
    }

    fn prepare(&self, mut object: Document) -> Prepared<E> {
        // Sources leave out what every store of their watch ignores, so this
        // re-encoding is for fields only some of them ignore.
        if object.contains_any(&self.ignore_fields) {
            object = Document::from_json_without(&object.to_json(), &self.ignore_fields);
        }
        let meta = Meta::of(object.root());
        let Some(key) = self.indexer.key(object.root()) else {
            return Prepared::Skipped(meta.id, meta.namespace.to_string());
        };
        let slot = Slot::new(self.index.layout, &key, &meta);
        Prepared::Stored(slot, E::from_object(object))
    }
}

enum Prepared<E> {
    Stored(Slot, E),
    /// Left out for a missing key: identity and namespace.
    Skipped(ObjectId, String),
}

/// One store at one point in time.
#[derive(Debug, Clone)]
pub enum StoreSnapshot {
    /// Whole objects.
    Full(Snapshot<Document>),
    /// References, with the cache their bodies are read through.
    OnDemand {
        snapshot: Snapshot<on_demand::Reference>,
        cache: Arc<on_demand::BodyCache>,
    },
}

impl StoreSnapshot {
    pub fn len(&self) -> usize {
        match self {
            StoreSnapshot::Full(s) => s.len(),
            StoreSnapshot::OnDemand { snapshot, .. } => snapshot.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A live store of either kind.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Full(full::FullStore),
    OnDemand(on_demand::OnDemandStore, Arc<on_demand::BodyCache>),
}

impl AnyStore {
    pub fn apply(&mut self, object: Document) -> Applied {
        match self {
            AnyStore::Full(s) => s.apply(object),
            AnyStore::OnDemand(s, _) => s.apply(object),
        }
    }

    pub fn delete(&mut self, object: &Document) -> bool {
        match self {
            AnyStore::Full(s) => s.delete(object),
            AnyStore::OnDemand(s, _) => s.delete(object),
        }
    }

    pub fn reset_scope(&mut self, namespace: Option<&str>, objects: impl IntoIterator<Item = Document>) {
        match self {
            AnyStore::Full(s) => s.reset_scope(namespace, objects),
            AnyStore::OnDemand(s, _) => s.reset_scope(namespace, objects),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            AnyStore::Full(s) => s.len(),
            AnyStore::OnDemand(s, _) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn skipped(&self) -> usize {
        match self {
            AnyStore::Full(s) => s.skipped(),
            AnyStore::OnDemand(s, _) => s.skipped(),
        }
    }

    pub fn snapshot(&self) -> StoreSnapshot {
        match self {
            AnyStore::Full(s) => StoreSnapshot::Full(s.snapshot()),
            AnyStore::OnDemand(s, cache) => StoreSnapshot::OnDemand {
                snapshot: s.snapshot(),
                cache: Arc::clone(cache),
            },
        }
    }
}

/// An ordered multi-map from slots to entries, with identity lookup.
///
/// Writers change it in place; [`Index::snapshot`] hands renders an immutable
/// view that later writes never touch (copy-on-write of the ordered map).
#[derive(Debug, Clone)]
pub struct Index<T> {
    layout: Layout,
    entries: Arc<BTreeMap<Slot, T>>,
    slots: HashMap<ObjectId, Arc<str>>,
    /// The identities in each namespace, kept from the first listing of one
    /// namespace on (watches of chosen namespaces list each one on its own),
    /// so that replacing a namespace costs what it holds, not the whole
    /// store. Watches of all namespaces never pay for it.
    namespaces: Option<HashMap<Box<str>, HashSet<ObjectId>>>,
}

impl<T: Clone> Index<T> {
    pub fn new(layout: Layout) -> Index<T> {
        Index {
            layout,
            entries: Arc::default(),
            slots: HashMap::new(),
            namespaces: None,
        }
    }

    fn slot_of(&self, id: ObjectId) -> Option<Slot> {
        self.slots.get(&id).map(|text| Slot {
            text: Arc::clone(text),
            id,
        })
    }

    /// Inserts or replaces the object `slot.id()` at `slot`, moving it if
    /// its key (or name) changed.
    pub fn upsert(&mut self, mut slot: Slot, entry: T) {
        let id = slot.id;
        let old = self.slot_of(id);
        let entries = Arc::make_mut(&mut self.entries);
        if let Some(old) = old {
            if old == slot {
                // Same position: keep sharing the old text.
                slot = old;
            } else {
                entries.remove(&old);
                if let Some(namespaces) = &mut self.namespaces {
                    forget(namespaces, &old.names(&self.layout).0, id);
                }
            }
        }
        if let Some(namespaces) = &mut self.namespaces {
            let namespace = slot.names(&self.layout).0;
            namespaces.entry(namespace.into()).or_default().insert(id);
        }
        self.slots.insert(id, Arc::clone(&slot.text));
        entries.insert(slot, entry);
    }

    /// Removes the object with this identity; its key siblings stay.
    pub fn remove(&mut self, id: ObjectId) -> bool {
        match self.slots.remove(&id) {
            Some(text) => {
                let slot = Slot { text, id };
                if let Some(namespaces) = &mut self.namespaces {
                    forget(namespaces, &slot.names(&self.layout).0, id);
                }
                Arc::make_mut(&mut self.entries).remove(&slot);
                true
            }
            None => false,
        }
    }

    /// Replaces the entries of one namespace (`Some`) or all entries (`None`)
    /// at once: a listing of one scope of a watch.
    pub fn replace_scope(&mut self, namespace: Option<&str>, items: impl IntoIterator<Item = (Slot, T)>) {
        match namespace {
            None => return self.replace_all(items.into_iter().collect()),
            Some(namespace) => {
                let layout = self.layout;
                let slots = &self.slots;
                let namespaces = self.namespaces.get_or_insert_with(|| {
                    let mut namespaces: HashMap<Box<str>, HashSet<ObjectId>> = HashMap::new();
                    for (id, text) in slots {
                        let slot = Slot {
                            text: Arc::clone(text),
                            id: *id,
                        };
                        namespaces.entry(slot.names(&layout).0.into()).or_default().insert(*id);
                    }
                    namespaces
                });
                for id in namespaces.remove(namespace).unwrap_or_default() {
                    self.remove(id);
                }
            }
        }
        for (slot, entry) in items {
            self.upsert(slot, entry);
        }
    }

    /// Replaces every entry with `items` (see [`Index::replace_scope`]),
    /// built at once: a B-tree filled one entry at a time leaves its nodes
    /// about half full, while collecting into one sorts the items and fills
    /// its nodes, which halves what a listing's tree costs.
    fn replace_all(&mut self, items: Vec<(Slot, T)>) {
        self.entries = Arc::default();
        self.slots.clear();
        self.slots.reserve(items.len());
        let unique = items
            .iter()
            .all(|(slot, _)| self.slots.insert(slot.id, Arc::clone(&slot.text)).is_none());
        if !unique {
            // An identity listed twice (a server never does): the last
            // stands, as when applied one by one.
            self.slots.clear();
            if let Some(namespaces) = &mut self.namespaces {
                namespaces.clear();
            }
            for (slot, entry) in items {
                self.upsert(slot, entry);
            }
            return;
        }
        if let Some(namespaces) = &mut self.namespaces {
            namespaces.clear();
            for (slot, _) in &items {
                let namespace = slot.names(&self.layout).0;
                namespaces.entry(namespace.into()).or_default().insert(slot.id);
            }
        }
        self.entries = Arc::new(items.into_iter().collect());
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
            layout: self.layout,
            entries: Arc::clone(&self.entries),
            positions: Arc::default(),
        }
    }
}

/// Drops `id` from the identities of `namespace`.
fn forget(namespaces: &mut HashMap<Box<str>, HashSet<ObjectId>>, namespace: &str, id: ObjectId) {
    if let Some(ids) = namespaces.get_mut(namespace) {
        ids.remove(&id);
        if ids.is_empty() {
            namespaces.remove(namespace);
        }
    }
}

/// A point-in-time view of a store, as a render reads it.
#[derive(Debug, Clone)]
pub struct Snapshot<T> {
    layout: Layout,
    entries: Arc<BTreeMap<Slot, T>>,
    /// Every slot in order: made by the first read by position
    /// ([`Snapshot::nth`]), which a snapshot that is only iterated never pays.
    positions: Arc<OnceLock<Vec<Slot>>>,
}

impl<T> Snapshot<T> {
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

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
    pub fn prefix<'a>(&'a self, prefix: &[String]) -> impl Iterator<Item = (&'a Slot, &'a T)> + 'a {
        let text: Arc<str> = encode_prefix(prefix).into();
        let start = Slot {
            text: Arc::clone(&text),
            id: ObjectId(0),
        };
        self.entries
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(slot, _)| slot.text.starts_with(&*text))
    }

    /// The entries after `slot`, in order.
    pub fn after<'a>(&'a self, slot: &Slot) -> impl Iterator<Item = (&'a Slot, &'a T)> + 'a {
        self.entries.range((Bound::Excluded(slot.clone()), Bound::Unbounded))
    }

    /// The entry at position `index`: O(n) for the first read by position of
    /// a snapshot, O(log n) for every later one.
    pub fn nth(&self, index: usize) -> Option<(&Slot, &T)> {
        let positions = self.positions.get_or_init(|| self.entries.keys().cloned().collect());
        self.entries.get_key_value(positions.get(index)?)
    }

    /// The entry at `slot`, if it is in this snapshot.
    pub fn get(&self, slot: &Slot) -> Option<&T> {
        self.entries.get(slot)
    }

    /// The distinct keys, in order.
    pub fn keys(&self) -> Vec<Vec<Cow<'_, str>>> {
        let mut keys: Vec<Vec<Cow<'_, str>>> = Vec::new();
        for slot in self.entries.keys() {
            let key = slot.key(&self.layout);
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::slot::tests::slot;
    use super::*;

    #[test]
    fn uuids_are_their_own_identity_and_other_ids_are_digested() {
        let uuid = "6f1c2a8e-1d4b-4f5e-9a51-0c7f8a3b2d01";
        assert_eq!(ObjectId::new(uuid, "a", "b").0, 0x6f1c2a8e_1d4b_4f5e_9a51_0c7f8a3b2d01);
        assert_ne!(ObjectId::new("", "a/b", "c"), ObjectId::new("", "a", "b/c"));
        assert_ne!(ObjectId::new("", "a", "b"), ObjectId::new("a\0b", "", ""));
    }

    #[test]
    fn byte_order_of_slots_is_tuple_order() {
        let layout = Layout {
            width: 2,
            names_in_key: false,
        };
        let mut index = Index::new(layout);
        for (k, name) in [(["a", "b"], "1"), (["ab", ""], "2"), (["a", ""], "3"), (["", "z"], "4")] {
            index.upsert(slot(layout, "ns", name, &k), ());
        }
        let snapshot = index.snapshot();
        let names: Vec<_> = snapshot.iter().map(|(s, _)| s.names(&layout).1).collect();
        assert_eq!(names, ["4", "3", "1", "2"]);
        let a: Vec<_> = snapshot
            .prefix(&["a".into()])
            .map(|(s, _)| s.names(&layout).1)
            .collect();
        assert_eq!(a, ["3", "1"]);
        assert_eq!(
            snapshot.keys(),
            [vec!["", "z"], vec!["a", ""], vec!["a", "b"], vec!["ab", ""]]
        );
    }

    #[test]
    fn the_default_layout_reads_names_from_the_key() {
        let layout = Layout {
            width: 2,
            names_in_key: true,
        };
        let mut index = Index::new(layout);
        index.upsert(slot(layout, "ns", "x", &["ns", "x"]), ());
        let snapshot = index.snapshot();
        let (slot, _) = snapshot.iter().next().unwrap();
        assert_eq!(slot.names(&layout).0, "ns");
        assert_eq!(slot.names(&layout).1, "x");
        assert_eq!(&*slot.text, "ns\0x\0");
    }

    #[test]
    fn replacing_a_namespace_costs_what_it_holds_not_the_whole_store() {
        let layout = Layout {
            width: 2,
            names_in_key: false,
        };
        let mut index = Index::new(layout);
        for i in 0..100_000 {
            index.upsert(slot(layout, "big", &format!("o{i}"), &["k", &format!("o{i}")]), ());
        }
        // The first listing of a namespace may look at everything once.
        index.replace_scope(Some("small"), []);
        let started = std::time::Instant::now();
        for round in 0..500 {
            let small = slot(layout, "small", &format!("s{}", round % 3), &["k", "s"]);
            index.replace_scope(Some("small"), [(small, ())]);
        }
        let elapsed = started.elapsed();
        assert_eq!(index.len(), 100_001);
        // A scan of the store per listing takes seconds here; what the
        // namespace holds, about a millisecond.
        assert!(
            elapsed < std::time::Duration::from_millis(500),
            "500 listings took {elapsed:?}"
        );
        index.upsert(slot(layout, "big", "o1", &["moved", "o1"]), ());
        index.remove(ObjectId::new("", "big", "o2"));
        index.replace_scope(Some("big"), [(slot(layout, "big", "new", &["k", "new"]), ())]);
        let names: Vec<_> = index
            .snapshot()
            .iter()
            .map(|(s, _)| s.names(&layout).1.into_owned())
            .collect();
        assert_eq!(names, ["new", "s1"]);
    }
}
