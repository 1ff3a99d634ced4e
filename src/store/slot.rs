//! Where an object sits in a store: its key values, namespace and name in
//! one compact string whose byte order is tuple order, and its identity.

use std::borrow::Cow;
use std::sync::Arc;

use super::Layout;
use crate::index::Key;
use crate::object::{Meta, ObjectId};

/// Where an object sits in a store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// Key values, then namespace and name (unless the key is them), each
    /// encoded by [`encode_part`].
    pub(super) text: Arc<str>,
    pub(super) id: ObjectId,
}

impl Slot {
    pub fn new(layout: Layout, key: &Key, meta: &Meta<'_>) -> Slot {
        let mut text = String::new();
        for part in key.parts() {
            encode_part(&mut text, part);
        }
        if !layout.names_in_key {
            encode_part(&mut text, meta.namespace);
            encode_part(&mut text, meta.name);
        }
        Slot {
            text: text.into(),
            id: meta.id,
        }
    }

    fn parts(&self) -> impl Iterator<Item = Cow<'_, str>> {
        self.text.split_terminator(END).map(decode_part)
    }

    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The key values.
    pub fn key(&self, layout: &Layout) -> Vec<Cow<'_, str>> {
        self.parts().take(layout.width).collect()
    }

    /// Namespace and name of the object.
    pub fn names(&self, layout: &Layout) -> (Cow<'_, str>, Cow<'_, str>) {
        let mut parts = self.parts().skip(if layout.names_in_key { 0 } else { layout.width });
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
    }
}

/// Ends every encoded part; never found inside one.
const END: char = '\0';
/// Starts a two-character escape inside a part.
const ESCAPE: char = '\x01';

/// Appends `part` and its end to `text`, escaping `\0` as `\x01\x01` and
/// `\x01` as `\x01\x02`. Values that contain NUL (a label or annotation may)
/// so cannot shift the parts after them, and byte order stays tuple order:
/// the end sorts before every character, and the escapes keep the order of
/// the two characters they stand for, below every other one.
fn encode_part(text: &mut String, part: &str) {
    if part.contains([END, ESCAPE]) {
        for c in part.chars() {
            match c {
                END => text.push_str("\x01\x01"),
                ESCAPE => text.push_str("\x01\x02"),
                c => text.push(c),
            }
        }
    } else {
        text.push_str(part);
    }
    text.push(END);
}

/// The value [`encode_part`] encoded (without its end).
fn decode_part(encoded: &str) -> Cow<'_, str> {
    if !encoded.contains(ESCAPE) {
        return Cow::Borrowed(encoded);
    }
    let mut text = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        if c == ESCAPE {
            text.push(if chars.next() == Some('\x01') { END } else { ESCAPE });
        } else {
            text.push(c);
        }
    }
    Cow::Owned(text)
}

pub(super) fn encode_prefix(prefix: &[String]) -> String {
    prefix.iter().fold(String::new(), |mut text, part| {
        encode_part(&mut text, part);
        text
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::Index;
    use super::*;

    /// The slot of object `ns/name` (no uid) under `key`, for tests here and
    /// in the store's.
    pub(in crate::store) fn slot(layout: Layout, ns: &str, name: &str, key: &[&str]) -> Slot {
        let meta = Meta {
            namespace: ns,
            name,
            id: ObjectId::new("", ns, name),
            resource_version: "1",
        };
        Slot::new(layout, &Key(key.iter().map(|p| p.to_string()).collect()), &meta)
    }

    #[test]
    fn values_containing_nul_keep_their_parts() {
        let layout = Layout {
            width: 2,
            names_in_key: false,
        };
        let mut index = Index::new(layout);
        index.upsert(slot(layout, "ns", "1", &["a\0b", "c"]), ());
        index.upsert(slot(layout, "ns", "2", &["a", "b\0c"]), ());
        index.upsert(slot(layout, "ns\0x", "3", &["\x01", "\0"]), ());
        let snapshot = index.snapshot();
        let keys = snapshot.keys();
        assert_eq!(keys, [vec!["\x01", "\0"], vec!["a", "b\0c"], vec!["a\0b", "c"]]);
        let a: Vec<_> = snapshot
            .prefix(&["a".into()])
            .map(|(s, _)| s.names(&layout).1.into_owned())
            .collect();
        assert_eq!(a, ["2"]);
        let (first, _) = snapshot.iter().next().unwrap();
        assert_eq!(first.names(&layout).0, "ns\0x");
        index.replace_scope(Some("ns"), []);
        assert_eq!(index.len(), 1, "the namespace `ns\\0x` is another one");
    }

    /// Key values of any characters, NUL and the escape included.
    fn part() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("[a\\x00\\x01\\x02b]{0,4}|.{0,3}").unwrap()
    }

    proptest::proptest! {
        /// Slots against their tuples: byte order is tuple order, every part
        /// reads back as written, and a prefix query returns exactly the keys
        /// that start with the prefix.
        #[test]
        fn slots_order_and_prefixes_follow_the_tuples(
            objects in proptest::collection::vec((part(), part(), part(), part()), 1..30),
            prefix in proptest::collection::vec(part(), 0..3),
        ) {
            let layout = Layout { width: 2, names_in_key: false };
            let mut index = Index::new(layout);
            let mut model = std::collections::BTreeSet::new();
            for (k1, k2, ns, name) in &objects {
                let key = vec![k1.clone(), k2.clone()];
                index.upsert(slot(layout, ns, name, &[k1, k2]), ());
                model.retain(|(_, n, m, _): &(Vec<String>, String, String, ObjectId)| (n, m) != (ns, name));
                model.insert((key, ns.clone(), name.clone(), ObjectId::new("", ns, name)));
            }
            let snapshot = index.snapshot();
            let actual: Vec<_> = snapshot
                .iter()
                .map(|(s, _)| {
                    let key: Vec<String> = s.key(&layout).into_iter().map(Cow::into_owned).collect();
                    let (ns, name) = s.names(&layout);
                    (key, ns.into_owned(), name.into_owned(), s.id())
                })
                .collect();
            let expected: Vec<_> = model.iter().cloned().collect();
            proptest::prop_assert_eq!(&actual, &expected);
            let matching: Vec<_> = snapshot.prefix(&prefix).map(|(s, _)| s.clone()).collect();
            let want: Vec<_> = snapshot
                .iter()
                .filter(|(s, _)| {
                    let key = s.key(&layout);
                    key.len() >= prefix.len() && key.iter().zip(&prefix).all(|(a, b)| a == b)
                })
                .map(|(s, _)| s.clone())
                .collect();
            proptest::prop_assert_eq!(matching, want);
        }
    }
}
