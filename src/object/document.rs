//! How stores keep an object: one compact, immutable buffer per object.
//!
//! A parsed `serde_json::Value` costs four to five times its JSON size (every
//! mapping is a B-tree whose nodes are allocated for eleven entries, every
//! string is a separate allocation). A [`Document`] is a single allocation of
//! about the object's JSON size that templates read in place: values are
//! written children first, each mapping ends with a table of its entries
//! sorted by key (looked up by binary search), each list with a table of its
//! items, and the last four bytes give the root.
//!
//! Encoding, all integers little-endian: a type byte, then its payload.
//! The type's low four bits say what it is: `0` null, `1` false, `2` true,
//! `3` i64, `4` u64, `5` f64 (8 bytes each), `6` string (length, UTF-8
//! bytes), `7` list (count, one reference per item), `8` mapping (count, a
//! key reference and a value reference per entry; keys are strings). Its
//! next two bits say how wide the length, the count and the references are:
//! `0` one byte, `1` two, `2` four; each string and table takes the narrowest
//! that fits, so that most of an object's are one or two bytes, and a
//! document stays within a few bytes of its JSON. A reference is the distance
//! back from its table to the value (values are written before the tables
//! that refer to them, so a table only spans its own children). The last
//! four bytes give the root's offset from the buffer's start.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::object::{FieldPath, Segment};

pub(super) const NULL: u8 = 0;
pub(super) const FALSE: u8 = 1;
pub(super) const TRUE: u8 = 2;
pub(super) const INT: u8 = 3;
pub(super) const UINT: u8 = 4;
pub(super) const FLOAT: u8 = 5;
pub(super) const STRING: u8 = 6;
pub(super) const LIST: u8 = 7;
pub(super) const MAP: u8 = 8;

/// The bits of a type byte that say what the value is.
const KIND: u8 = 0x0f;
/// The bits of a type byte that say how wide its integers are.
const WIDTH_SHIFT: u8 = 4;

/// Mappings up to this size are searched from the start, not bisected.
const LINEAR_LOOKUP: u32 = 8;

/// How much of a document's end [`Document::warm`] reads, and in steps of
/// what.
const WARM_BYTES: usize = 4096;
const CACHE_LINE: usize = 64;

/// Scratch space kept between encodings, per thread.
const SCRATCH_KEPT: usize = 1 << 20;

/// One object, shared by the store and every render that reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct Document(Arc<[u8]>);

impl Document {
    /// Encodes `value`.
    pub fn from_json(value: &Value) -> Document {
        Document::from_json_without(value, &[])
    }

    /// Encodes `value` without the fields at `omit` (`ignore_fields`).
    pub fn from_json_without(value: &Value, omit: &[FieldPath]) -> Document {
        let omit: Vec<&[Segment]> = omit.iter().map(FieldPath::segments).collect();
        Document::encode(|encoder| Ok::<_, std::convert::Infallible>(encoder.value(value, &omit)))
            .unwrap_or_else(|never| match never {})
    }

    /// Builds a document with `write`, which writes the root value with the
    /// encoder and returns its offset.
    pub(super) fn encode<E>(write: impl FnOnce(&mut Encoder) -> Result<u32, E>) -> Result<Document, E> {
        thread_local! {
            /// Scratch space, so that encoding an object allocates only its
            /// document.
            static ENCODER: RefCell<Encoder> = RefCell::default();
        }
        ENCODER.with_borrow_mut(|encoder| {
            encoder.buf.clear();
            encoder.pending.clear();
            let root = write(encoder);
            let document = root.map(|root| {
                encoder.buf.extend_from_slice(&root.to_le_bytes());
                Document(Arc::from(&encoder.buf[..]))
            });
            // A huge object should not pin its size in every thread.
            if encoder.buf.capacity() > SCRATCH_KEPT {
                *encoder = Encoder::default();
            }
            document
        })
    }

    /// The whole object.
    pub fn root(&self) -> Node<'_> {
        let at = self.0.len() as u32 - 4;
        Node {
            buf: &self.0,
            at: read_u32(&self.0, at),
        }
    }

    /// The value at `offset` (from [`Node::offset`] of a node of this document).
    pub fn node(&self, offset: u32) -> Node<'_> {
        Node {
            buf: &self.0,
            at: offset,
        }
    }

    /// Reads one byte of each cache line of the document's last
    /// [`WARM_BYTES`] (the root's table and, children being written first,
    /// the mappings it points to), all at once.
    ///
    /// Reading a field walks a chain of dependent offsets (table, key, value);
    /// over a store larger than the CPU's caches each step would wait on
    /// memory in turn, while these reads wait together. Returns a value to
    /// pass to [`std::hint::black_box`] so the reads are kept.
    pub fn warm(&self) -> u8 {
        let tail = &self.0[self.0.len().saturating_sub(WARM_BYTES)..];
        tail.iter().step_by(CACHE_LINE).fold(0, |acc, byte| acc ^ byte)
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.0.len()
    }

    /// The object as a `serde_json::Value`.
    pub fn to_json(&self) -> Value {
        self.root().to_json()
    }

    /// Whether any of `paths` is present.
    pub fn contains_any(&self, paths: &[FieldPath]) -> bool {
        paths.iter().any(|path| self.root().at_path(path).is_some())
    }
}

impl From<Value> for Document {
    fn from(value: Value) -> Document {
        Document::from_json(&value)
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

fn read_u32(buf: &[u8], at: u32) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("four bytes"))
}

/// The width in bytes of the integers after the type byte `tag`.
#[inline]
fn width(tag: u8) -> u32 {
    // Codes 0, 1 and 2 (3 is never written).
    1 << ((tag >> WIDTH_SHIFT) & 3).min(2)
}

/// The unsigned integer of `width` bytes at `at`.
#[inline]
fn read_uint(buf: &[u8], at: u32, width: u32) -> u32 {
    let i = at as usize;
    match buf.get(i..i + 4) {
        // Four bytes read at once and masked, without a branch per width: in
        // a finished document every integer has four bytes after its start
        // (the root's offset ends it); one being written may not.
        Some(four) => u32::from_le_bytes(four.try_into().expect("four bytes")) & (u32::MAX >> (32 - 8 * width)),
        None => match width {
            1 => u32::from(buf[i]),
            2 => u32::from(u16::from_le_bytes([buf[i], buf[i + 1]])),
            _ => read_u32(buf, at),
        },
    }
}

/// The width bits and the width in bytes of integers up to `max`.
fn width_for(max: u32) -> (u8, usize) {
    if max <= u32::from(u8::MAX) {
        (0, 1)
    } else if max <= u32::from(u16::MAX) {
        (1 << WIDTH_SHIFT, 2)
    } else {
        (2 << WIDTH_SHIFT, 4)
    }
}

fn read_8(buf: &[u8], at: u32) -> [u8; 8] {
    let at = at as usize;
    buf[at..at + 8].try_into().expect("eight bytes")
}

/// Writes values children first; `pending` holds the offsets of the items of
/// the lists and mappings being written.
#[derive(Default)]
pub(super) struct Encoder {
    pub(super) buf: Vec<u8>,
    pub(super) pending: Vec<u32>,
}

impl Encoder {
    pub(super) fn offset(&self) -> u32 {
        u32::try_from(self.buf.len()).expect("an object is smaller than 4 GiB")
    }

    pub(super) fn string(&mut self, text: &str) -> u32 {
        let at = self.offset();
        let len = u32::try_from(text.len()).expect("a string is smaller than 4 GiB");
        let (bits, width) = width_for(len);
        self.buf.push(STRING | bits);
        self.push_uint(len, width);
        self.buf.extend_from_slice(text.as_bytes());
        at
    }

    /// Writes `value` without the fields `omit` names (paths relative to it)
    /// and returns its offset.
    fn value(&mut self, value: &Value, omit: &[&[Segment]]) -> u32 {
        let at = self.offset();
        match value {
            Value::Null => self.buf.push(NULL),
            Value::Bool(false) => self.buf.push(FALSE),
            Value::Bool(true) => self.buf.push(TRUE),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.buf.push(INT);
                    self.buf.extend_from_slice(&i.to_le_bytes());
                } else if let Some(u) = n.as_u64() {
                    self.buf.push(UINT);
                    self.buf.extend_from_slice(&u.to_le_bytes());
                } else {
                    self.buf.push(FLOAT);
                    self.buf
                        .extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
                }
            }
            Value::String(s) => return self.string(s),
            Value::Array(items) => {
                let start = self.pending.len();
                for (i, item) in items.iter().enumerate() {
                    let inner = descend(omit, |s| *s == Segment::Index(i));
                    if inner.as_ref().is_some_and(|inner| inner.omitted) {
                        continue;
                    }
                    let item = self.value(item, inner.as_ref().map_or(&[], |i| &i.paths));
                    self.pending.push(item);
                }
                return self.table(LIST, start, 1);
            }
            Value::Object(map) => {
                let start = self.pending.len();
                for (key, item) in map {
                    let inner = descend(omit, |s| matches!(s, Segment::Field(f) if f == key));
                    if inner.as_ref().is_some_and(|inner| inner.omitted) {
                        continue;
                    }
                    let key = self.string(key);
                    let item = self.value(item, inner.as_ref().map_or(&[], |i| &i.paths));
                    self.pending.extend([key, item]);
                }
                self.sort_entries(start);
                return self.table(MAP, start, 2);
            }
        }
        at
    }

    /// Sorts the pending (key, value) pairs from `start` by key bytes, in
    /// case the map was not ordered already, keeping one entry per key.
    pub(super) fn sort_entries(&mut self, start: usize) {
        let buf = &self.buf;
        let key = |at: u32| string_bytes(buf, at);
        let pairs = &self.pending[start..];
        let sorted = pairs
            .chunks(2)
            .zip(pairs.chunks(2).skip(1))
            .all(|(a, b)| key(a[0]) < key(b[0]));
        if !sorted {
            let mut entries: Vec<[u32; 2]> = pairs.chunks(2).map(|p| [p[0], p[1]]).collect();
            // Stable: of a key given twice (JSON text may), the last stays,
            // as in a `serde_json::Map`.
            entries.sort_by(|a, b| key(a[0]).cmp(key(b[0])));
            self.pending.truncate(start);
            for entry in entries {
                let len = self.pending.len();
                if len > start && key(self.pending[len - 2]) == key(entry[0]) {
                    self.pending.truncate(len - 2);
                }
                self.pending.extend(entry);
            }
        }
    }

    /// Writes a list or mapping header over the pending offsets from `start`
    /// (`width` offsets per item) and returns its offset.
    pub(super) fn table(&mut self, tag: u8, start: usize, width: usize) -> u32 {
        let at = self.offset();
        let count = ((self.pending.len() - start) / width) as u32;
        // The first item written is the farthest back; a sorted mapping's
        // first entry need not be, so take the least offset.
        let farthest = self.pending[start..].iter().min().map_or(0, |first| at - first);
        let (bits, width) = width_for(count.max(farthest));
        self.buf.push(tag | bits);
        self.push_uint(count, width);
        for i in start..self.pending.len() {
            let offset = self.pending[i];
            self.push_uint(at - offset, width);
        }
        self.pending.truncate(start);
        at
    }

    /// Appends the low `width` bytes of `value`: four written and the rest
    /// dropped, as a copy of a length known only at run time is a call.
    #[inline]
    fn push_uint(&mut self, value: u32, width: usize) {
        let end = self.buf.len() + width;
        self.buf.extend_from_slice(&value.to_le_bytes());
        self.buf.truncate(end);
    }
}

/// The omitted paths below one child.
pub(super) struct Inner<'p> {
    /// The child itself is omitted.
    pub(super) omitted: bool,
    pub(super) paths: Vec<&'p [Segment]>,
}

/// Which of `omit` go through the child that `step` matches; `None` (and no
/// allocation) when none does, the usual case.
pub(super) fn descend<'p>(omit: &[&'p [Segment]], step: impl Fn(&Segment) -> bool) -> Option<Inner<'p>> {
    let mut inner: Option<Inner<'p>> = None;
    for path in omit {
        let Some((first, rest)) = path.split_first() else {
            continue;
        };
        if !step(first) {
            continue;
        }
        let inner = inner.get_or_insert_with(|| Inner {
            omitted: false,
            paths: Vec::new(),
        });
        if rest.is_empty() {
            inner.omitted = true;
        } else {
            inner.paths.push(rest);
        }
    }
    inner
}

#[inline]
pub(super) fn string_bytes(buf: &[u8], at: u32) -> &[u8] {
    let i = at as usize;
    // A one-byte length (every key but the longest, most values) is read
    // without the general case's steps: lookups compare keys by the many.
    if buf[i] == STRING {
        let len = usize::from(buf[i + 1]);
        return &buf[i + 2..i + 2 + len];
    }
    wide_string_bytes(buf, at)
}

/// [`string_bytes`] of a string whose length takes two or four bytes.
#[cold]
fn wide_string_bytes(buf: &[u8], at: u32) -> &[u8] {
    let width = width(buf[at as usize]);
    let len = read_uint(buf, at + 1, width) as usize;
    let start = (at + 1 + width) as usize;
    &buf[start..start + len]
}

/// A value inside a [`Document`].
#[derive(Clone, Copy)]
pub struct Node<'a> {
    buf: &'a [u8],
    at: u32,
}

/// What a [`Node`] holds.
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(&'a str),
    List(Table<'a>),
    Map(Table<'a>),
}

impl<'a> Node<'a> {
    /// The value at `at` of a document being written.
    pub(super) fn within(buf: &'a [u8], at: u32) -> Node<'a> {
        Node { buf, at }
    }

    /// The type byte of the value (see the module's encoding).
    pub(super) fn tag(self) -> u8 {
        self.buf[self.at as usize] & KIND
    }

    /// The entries of a mapping, keys as written.
    pub(super) fn raw_entries(self) -> impl Iterator<Item = (&'a [u8], Node<'a>)> {
        let table = self.table();
        (0..table.len).map(move |i| {
            let at = table.entries + 2 * table.width * i;
            (string_bytes(self.buf, table.node(at).at), table.node(at + table.width))
        })
    }

    /// The items of a list.
    pub(super) fn raw_items(self) -> impl Iterator<Item = Node<'a>> {
        self.table().items()
    }

    /// Where this node is in its document (see [`Document::node`]).
    pub fn offset(self) -> u32 {
        self.at
    }

    pub fn json(self) -> Json<'a> {
        let payload = self.at + 1;
        match self.tag() {
            FALSE => Json::Bool(false),
            TRUE => Json::Bool(true),
            INT => Json::Int(i64::from_le_bytes(read_8(self.buf, payload))),
            UINT => Json::UInt(u64::from_le_bytes(read_8(self.buf, payload))),
            FLOAT => Json::Float(f64::from_le_bytes(read_8(self.buf, payload))),
            // Written from a `&str`: valid UTF-8 unless the buffer is damaged.
            STRING => Json::String(std::str::from_utf8(string_bytes(self.buf, self.at)).unwrap_or_default()),
            LIST => Json::List(self.table()),
            MAP => Json::Map(self.table()),
            _ => Json::Null,
        }
    }

    #[inline]
    fn table(self) -> Table<'a> {
        let width = width(self.buf[self.at as usize]);
        Table {
            buf: self.buf,
            at: self.at,
            width,
            len: read_uint(self.buf, self.at + 1, width),
            entries: self.at + 1 + width,
        }
    }

    pub fn as_str(self) -> Option<&'a str> {
        match self.json() {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key`, if this is a mapping that has it.
    pub fn get(self, key: &str) -> Option<Node<'a>> {
        match self.json() {
            Json::Map(map) => map.get(key),
            _ => None,
        }
    }

    /// Item `index` of a list.
    pub fn item(self, index: usize) -> Option<Node<'a>> {
        match self.json() {
            Json::List(list) => list.item(index),
            _ => None,
        }
    }

    /// The value at `path`, if every step exists.
    pub fn at_path(self, path: &FieldPath) -> Option<Node<'a>> {
        path.segments().iter().try_fold(self, |node, segment| match segment {
            Segment::Field(name) => node.get(name),
            Segment::Index(i) => node.item(*i),
        })
    }

    pub fn to_json(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The entries of a list or mapping.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    buf: &'a [u8],
    /// Offset of the table, which its references count back from.
    at: u32,
    /// Bytes per reference.
    width: u32,
    len: u32,
    /// Offset of the first entry's references.
    entries: u32,
}

impl<'a> Table<'a> {
    pub fn len(self) -> usize {
        self.len as usize
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The value the reference at `at` refers to.
    #[inline]
    fn node(self, at: u32) -> Node<'a> {
        Node {
            buf: self.buf,
            at: self.at - read_uint(self.buf, at, self.width),
        }
    }

    /// Item `index` of a list.
    pub fn item(self, index: usize) -> Option<Node<'a>> {
        (index < self.len()).then(|| self.node(self.entries + self.width * index as u32))
    }

    /// The items of a list.
    pub fn items(self) -> impl ExactSizeIterator<Item = Node<'a>> + 'a {
        (0..self.len).map(move |i| self.node(self.entries + self.width * i))
    }

    /// Entry `index` of a mapping: key and value.
    pub fn entry(self, index: usize) -> Option<(&'a str, Node<'a>)> {
        (index < self.len()).then(|| {
            let at = self.entries + 2 * self.width * index as u32;
            let key = self.node(at).as_str().unwrap_or_default();
            (key, self.node(at + self.width))
        })
    }

    /// Whether entry `index` of a mapping is under `key`.
    pub fn has_key(self, index: usize, key: &str) -> bool {
        index < self.len() && self.key_bytes(index as u32) == key.as_bytes()
    }

    /// The key of entry `index` of a mapping, as written.
    fn key_bytes(self, index: u32) -> &'a [u8] {
        string_bytes(self.buf, self.node(self.entries + 2 * self.width * index).at)
    }

    /// The entries of a mapping, in key order.
    pub fn entries(self) -> impl ExactSizeIterator<Item = (&'a str, Node<'a>)> + 'a {
        (0..self.len()).map(move |i| self.entry(i).expect("in range"))
    }

    /// The value under `key` in a mapping.
    pub fn get(self, key: &str) -> Option<Node<'a>> {
        self.value(self.position(key)?)
    }

    /// The value of entry `index` of a mapping.
    pub fn value(self, index: usize) -> Option<Node<'a>> {
        (index < self.len()).then(|| self.node(self.entries + 2 * self.width * index as u32 + self.width))
    }

    /// The index of the entry under `key` in a mapping (see [`Table::entry`]).
    pub fn position(self, key: &str) -> Option<usize> {
        if self.len <= LINEAR_LOOKUP {
            // Small mappings (most of an object's): lengths rule out most
            // keys without comparing bytes.
            return (0..self.len)
                .find(|&i| self.key_bytes(i) == key.as_bytes())
                .map(|i| i as usize);
        }
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.key_bytes(mid).cmp(key.as_bytes()) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return Some(mid as usize),
            }
        }
        None
    }
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.json() {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(b),
            Json::Int(i) => serializer.serialize_i64(i),
            Json::UInt(u) => serializer.serialize_u64(u),
            Json::Float(f) => serializer.serialize_f64(f),
            Json::String(s) => serializer.serialize_str(s),
            Json::List(list) => {
                let mut seq = serializer.serialize_seq(Some(list.len()))?;
                for item in list.items() {
                    seq.serialize_element(&item)?;
                }
                seq.end()
            }
            Json::Map(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map.entries() {
                    out.serialize_entry(key, &value)?;
                }
                out.end()
            }
        }
    }
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.root().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(exprs: &[&str]) -> Vec<FieldPath> {
        exprs.iter().map(|e| FieldPath::parse(e).unwrap()).collect()
    }

    #[test]
    fn a_document_gives_back_the_json_it_was_made_from() {
        let value = json!({
            "s": "text", "empty": "", "n": null, "t": true, "f": false,
            "i": -3, "u": u64::MAX, "x": 2.5, "list": [1, [], {}, "a"],
            "map": {"z": 1, "a": {"deep": ["x"]}, "ünïcode": "✓"}
        });
        let doc = Document::from_json(&value);
        assert_eq!(doc.to_json(), value);
        assert_eq!(serde_json::to_string(&doc).unwrap(), value.to_string());
    }

    #[test]
    fn lookups_find_keys_and_items_and_nothing_else() {
        let doc = Document::from_json(&json!({"b": {"k": [10, 20]}, "a": 1, "c": "x"}));
        let root = doc.root();
        assert_eq!(root.get("c").and_then(Node::as_str), Some("x"));
        assert!(root.get("d").is_none() && root.get("").is_none());
        let list = root.get("b").and_then(|b| b.get("k")).unwrap();
        assert!(matches!(list.item(1).unwrap().json(), Json::Int(20)));
        assert!(list.item(2).is_none());
        assert!(root.get("c").unwrap().get("x").is_none());
        let Json::Map(map) = root.json() else {
            panic!("a mapping")
        };
        let keys: Vec<&str> = map.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let wide: serde_json::Map<String, Value> = (0..40).map(|i| (format!("key-{i}"), json!(i))).collect();
        let doc_wide = Document::from_json(&Value::Object(wide));
        for i in 0..40 {
            let found = doc_wide.root().get(&format!("key-{i}")).map(Node::json);
            assert!(matches!(found, Some(Json::Int(n)) if n == i), "key-{i}");
        }
        assert!(doc_wide.root().get("key-40").is_none() && doc_wide.root().get("a").is_none());
        let nested = paths(&["b.k[0]"]);
        assert!(matches!(root.at_path(&nested[0]).unwrap().json(), Json::Int(10)));
    }

    #[test]
    fn omitted_fields_are_left_out_and_others_kept() {
        let value = json!({
            "metadata": {"name": "x", "managedFields": [{"manager": "kubectl"}], "labels": {"a": "1", "b": "2"}},
            "spec": {"items": ["keep", "drop"]}
        });
        let doc = Document::from_json_without(
            &value,
            &paths(&[
                "metadata.managedFields",
                "metadata.labels.b",
                "spec.items[1]",
                "absent.field",
            ]),
        );
        assert_eq!(
            doc.to_json(),
            json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"items": ["keep"]}})
        );
        assert!(!doc.contains_any(&paths(&["metadata.managedFields"])));
        assert!(doc.contains_any(&paths(&["absent", "metadata.name"])));
    }

    #[test]
    fn a_document_is_no_bigger_than_its_json_but_for_a_few_bytes() {
        let value = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "config-000001", "namespace": "team-01", "uid": "0b0c6f3e-1d4b-4f5e-9a51-0c7f8a3b2d01",
                          "resourceVersion": "100001", "labels": {"app": "app-1", "tier": "backend"}},
            "data": {"settings.json": "x".repeat(700), "mode": "production"}
        });
        let json_size = value.to_string().len();
        let size = Document::from_json(&value).size();
        // Strings and small tables cost what their quotes, colons and commas
        // do in JSON; the root's offset and the two-byte references of the
        // top mapping are the difference.
        assert!(size <= json_size + 24, "{size} bytes for {json_size} bytes of JSON");
    }

    #[test]
    fn long_strings_and_wide_tables_read_back_whatever_their_width() {
        let long = "y".repeat(70_000);
        let many: Vec<Value> = (0..300).map(|i| json!(format!("item-{i}"))).collect();
        let wide: serde_json::Map<String, Value> = (0..300).map(|i| (format!("k{i:03}"), json!(i))).collect();
        let value = json!({"a": "short", "b": "z".repeat(300), "c": long, "list": many, "map": wide, "tail": [1]});
        let doc = Document::from_json(&value);
        assert_eq!(doc.to_json(), value);
        let root = doc.root();
        assert_eq!(root.get("c").and_then(Node::as_str).map(str::len), Some(70_000));
        assert_eq!(
            root.get("list").and_then(|l| l.item(299)).and_then(Node::as_str),
            Some("item-299")
        );
        assert!(matches!(
            root.get("map").and_then(|m| m.get("k150")).map(Node::json),
            Some(Json::Int(150))
        ));
        assert!(matches!(
            root.get("tail").and_then(|t| t.item(0)).map(Node::json),
            Some(Json::Int(1))
        ));
    }
}
