//! Decoding an object's JSON straight into a [`Document`], in one pass: no
//! `serde_json::Value` is built on the way, and omitted fields
//! (`ignore_fields`) are skipped unread.
//!
//! The document reads the same as [`Document::from_json_without`] of the same
//! JSON, and is the same bytes when the JSON's keys come sorted (as
//! `serde_json` writes them) and it has its `apiVersion` and `kind`. Keys in
//! another order (as the API server writes them) are written in the order
//! they come, so the bytes differ but not what any lookup finds.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::document::{Encoder, FALSE, FLOAT, INT, LIST, MAP, NULL, STRING, TRUE, UINT, descend, string_bytes};
use super::{Document, FieldPath, Node, Segment};

/// How to decode an object: what to leave out, and the `apiVersion` and
/// `kind` it gets when it comes without them (list items of built-in kinds).
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub omit: Vec<FieldPath>,
    pub api_version: String,
    pub kind: String,
}

/// An object decoded with a [`Shape`].
#[derive(Debug, Clone)]
pub struct Decoded {
    pub document: Document,
    /// `metadata.resourceVersion`, kept even when the document leaves it out.
    pub resource_version: Option<String>,
}

impl Shape {
    /// Decodes one object from `deserializer`.
    pub fn decode<'de, D: Deserializer<'de>>(&self, deserializer: D) -> Result<Decoded, D::Error> {
        let omit: Vec<&[Segment]> = self.omit.iter().map(FieldPath::segments).collect();
        let mut resource_version = None;
        let document = Document::encode(|encoder| {
            deserializer.deserialize_map(Root {
                encoder,
                omit: &omit,
                shape: self,
                resource_version: &mut resource_version,
            })
        })?;
        Ok(Decoded {
            document,
            resource_version,
        })
    }
}

/// The object itself: a mapping, given `apiVersion` and `kind` if it lacks them.
struct Root<'e, 'p> {
    encoder: &'e mut Encoder,
    omit: &'p [&'p [Segment]],
    shape: &'p Shape,
    resource_version: &'e mut Option<String>,
}

impl<'de> Visitor<'de> for Root<'_, '_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        let Root {
            encoder,
            omit,
            shape,
            resource_version,
        } = self;
        let start = encoder.pending.len();
        let (mut api_version, mut kind) = (false, false);
        while let Some(key) = map.next_key_seed(Key { encoder: &mut *encoder })? {
            let name = string_bytes(&encoder.buf, key);
            api_version |= name == b"apiVersion";
            kind |= name == b"kind";
            let metadata = name == b"metadata";
            let inner = descend(omit, |s| matches!(s, Segment::Field(f) if f.as_bytes() == name));
            if inner.as_ref().is_some_and(|inner| inner.omitted) {
                // The key was written already: unwritten, it goes.
                encoder.buf.truncate(key as usize);
                if metadata {
                    *resource_version = map.next_value::<Versioned>()?.resource_version;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
                continue;
            }
            let paths: &[&[Segment]] = inner.as_ref().map_or(&[], |inner| &inner.paths);
            let value = map.next_value_seed(Value {
                encoder: &mut *encoder,
                omit: paths,
                version: metadata.then_some(&mut *resource_version),
            })?;
            if metadata {
                check_metadata(Node::within(&encoder.buf, value)).map_err(A::Error::custom)?;
            }
            encoder.pending.extend([key, value]);
        }
        for (given, field, text) in [
            (api_version, "apiVersion", &shape.api_version),
            (kind, "kind", &shape.kind),
        ] {
            let omitted = descend(omit, |s| matches!(s, Segment::Field(f) if f == field));
            if !given && !omitted.is_some_and(|inner| inner.omitted) {
                let key = encoder.string(field);
                let value = encoder.string(text);
                encoder.pending.extend([key, value]);
            }
        }
        encoder.sort_entries(start);
        Ok(encoder.table(MAP, start, 2))
    }
}

/// Whether `metadata` holds what Kubernetes metadata holds in the fields
/// whose type it fixes (as kube-rs's typed metadata required): an object the
/// server should never have sent is reported, not stored.
fn check_metadata(metadata: Node<'_>) -> Result<(), String> {
    // By tag: the strings were written from `&str`, valid already.
    let strings = |node: Node<'_>| node.tag() == STRING;
    let maps = |node: Node<'_>| node.tag() == MAP;
    let fits = |key: &[u8], node: Node<'_>| match (key, node.tag()) {
        (_, NULL) => true,
        (
            b"name" | b"namespace" | b"uid" | b"resourceVersion" | b"generateName" | b"selfLink" | b"creationTimestamp"
            | b"deletionTimestamp",
            tag,
        ) => tag == STRING,
        (b"generation" | b"deletionGracePeriodSeconds", tag) => tag == INT,
        (b"labels" | b"annotations", MAP) => node.raw_entries().all(|(_, value)| strings(value)),
        (b"finalizers", LIST) => node.raw_items().all(strings),
        (b"ownerReferences" | b"managedFields", LIST) => node.raw_items().all(maps),
        (b"labels" | b"annotations" | b"finalizers" | b"ownerReferences" | b"managedFields", _) => false,
        _ => true,
    };
    match metadata.tag() {
        NULL => Ok(()),
        MAP => match metadata.raw_entries().find(|(key, value)| !fits(key, *value)) {
            Some((key, _)) => Err(format!(
                "metadata.{} is not of the type Kubernetes gives it",
                String::from_utf8_lossy(key)
            )),
            None => Ok(()),
        },
        _ => Err("metadata is not a mapping".to_string()),
    }
}

/// `metadata.resourceVersion` alone, for when the document leaves out the
/// whole `metadata`.
#[derive(serde::Deserialize)]
struct Versioned {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// A mapping key, written as a string; gives its offset.
struct Key<'e> {
    encoder: &'e mut Encoder,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<u32, E> {
        Ok(self.encoder.string(key))
    }
}

/// Any value, written without the fields `omit` names (paths relative to
/// it); gives its offset.
struct Value<'e, 'p> {
    encoder: &'e mut Encoder,
    omit: &'p [&'p [Segment]],
    /// For `metadata`: where its `resourceVersion` goes, written or not.
    version: Option<&'e mut Option<String>>,
}

impl Value<'_, '_> {
    fn scalar(self, tag: u8, payload: [u8; 8]) -> u32 {
        let at = self.encoder.offset();
        self.encoder.buf.push(tag);
        self.encoder.buf.extend_from_slice(&payload);
        at
    }

    fn tag(self, tag: u8) -> u32 {
        let at = self.encoder.offset();
        self.encoder.buf.push(tag);
        at
    }
}

impl<'de> DeserializeSeed<'de> for Value<'_, '_> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(self)
    }
}

// The same numbers as a `serde_json::Value` makes of them: integers that fit
// are i64, other non-negative ones u64, and floats that are not finite null.
impl<'de> Visitor<'de> for Value<'_, '_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<u32, E> {
        Ok(self.tag(NULL))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<u32, E> {
        Ok(self.tag(NULL))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<u32, E> {
        Ok(self.tag(if b { TRUE } else { FALSE }))
    }

    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<u32, E> {
        Ok(self.scalar(INT, i.to_le_bytes()))
    }

    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<u32, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => self.scalar(INT, i.to_le_bytes()),
            Err(_) => self.scalar(UINT, u.to_le_bytes()),
        })
    }

    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<u32, E> {
        Ok(if x.is_finite() {
            self.scalar(FLOAT, x.to_le_bytes())
        } else {
            self.tag(NULL)
        })
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u32, E> {
        Ok(self.encoder.string(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let Value { encoder, omit, .. } = self;
        let start = encoder.pending.len();
        let mut index = 0;
        loop {
            let inner = descend(omit, |s| *s == Segment::Index(index));
            index += 1;
            if inner.as_ref().is_some_and(|inner| inner.omitted) {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                continue;
            }
            let item = Value {
                encoder: &mut *encoder,
                omit: inner.as_ref().map_or(&[][..], |inner| &inner.paths),
                version: None,
            };
            match seq.next_element_seed(item)? {
                Some(item) => encoder.pending.push(item),
                None => break,
            }
        }
        Ok(encoder.table(LIST, start, 1))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        let Value {
            encoder,
            omit,
            mut version,
        } = self;
        let start = encoder.pending.len();
        while let Some(key) = map.next_key_seed(Key { encoder: &mut *encoder })? {
            let name = string_bytes(&encoder.buf, key);
            let inner = descend(omit, |s| matches!(s, Segment::Field(f) if f.as_bytes() == name));
            let omitted = inner.as_ref().is_some_and(|inner| inner.omitted);
            if let Some(version) = version.as_deref_mut().filter(|_| name == b"resourceVersion") {
                // Watches resume from it, whatever the stores keep.
                let text: String = map.next_value()?;
                if omitted {
                    encoder.buf.truncate(key as usize);
                } else {
                    let value = encoder.string(&text);
                    encoder.pending.extend([key, value]);
                }
                *version = Some(text);
                continue;
            }
            if omitted {
                // The key was written already: unwritten, it goes.
                encoder.buf.truncate(key as usize);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value_seed(Value {
                encoder: &mut *encoder,
                omit: inner.as_ref().map_or(&[][..], |inner| &inner.paths),
                version: None,
            })?;
            encoder.pending.extend([key, value]);
        }
        encoder.sort_entries(start);
        Ok(encoder.table(MAP, start, 2))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    use super::*;

    fn paths(exprs: &[&str]) -> Vec<FieldPath> {
        exprs.iter().map(|e| FieldPath::parse(e).unwrap()).collect()
    }

    fn shape(omit: &[&str]) -> Shape {
        Shape {
            omit: paths(omit),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
        }
    }

    fn decode(text: &str, shape: &Shape) -> Decoded {
        shape.decode(&mut serde_json::Deserializer::from_str(text)).unwrap()
    }

    /// What the two-pass path made: the object with its types set, encoded.
    fn expected(mut value: Json, shape: &Shape) -> Document {
        let map = value.as_object_mut().unwrap();
        map.entry("apiVersion").or_insert_with(|| json!(shape.api_version));
        map.entry("kind").or_insert_with(|| json!(shape.kind));
        Document::from_json_without(&value, &shape.omit)
    }

    #[test]
    fn a_list_item_reads_as_the_two_pass_encoding_whatever_the_key_order() {
        // The API server's order: struct fields as declared, not sorted.
        let text = r#"{"metadata":{"name":"a","namespace":"ns","uid":"u-1","resourceVersion":"42",
            "labels":{"app":"web"},"managedFields":[{"manager":"kubectl","fieldsV1":{"f:data":{}}}]},
            "data":{"z":"last","a":"ünïcode ✓","n":"-0"},"binaryData":{},"immutable":false}"#;
        let value: Json = serde_json::from_str(text).unwrap();
        let shape = shape(&["metadata.managedFields", "data.z", "absent.field"]);
        let decoded = decode(text, &shape);
        assert_eq!(decoded.document.to_json(), expected(value, &shape).to_json());
        assert_eq!(decoded.resource_version.as_deref(), Some("42"));
        let root = decoded.document.root();
        assert_eq!(root.get("kind").and_then(|k| k.as_str()), Some("ConfigMap"));
        assert!(root.get("metadata").unwrap().get("managedFields").is_none());
    }

    #[test]
    fn types_the_object_has_are_kept_and_omitted_ones_not_added() {
        let text = r#"{"kind":"Widget","apiVersion":"example.com/v1","metadata":{"resourceVersion":"7"}}"#;
        let document = decode(text, &shape(&[])).document;
        assert_eq!(
            document.to_json(),
            json!({"kind": "Widget", "apiVersion": "example.com/v1", "metadata": {"resourceVersion": "7"}})
        );
        let document = decode(r#"{"metadata":{}}"#, &shape(&["kind"])).document;
        assert_eq!(document.to_json(), json!({"apiVersion": "v1", "metadata": {}}));
    }

    #[test]
    fn the_resource_version_is_kept_even_when_the_stores_leave_it_out() {
        let text = r#"{"metadata":{"name":"a","resourceVersion":"9"},"data":{}}"#;
        for omit in [&["metadata.resourceVersion"][..], &["metadata"]] {
            let decoded = decode(text, &shape(omit));
            assert_eq!(decoded.resource_version.as_deref(), Some("9"), "{omit:?}");
            let metadata = decoded.document.root().get("metadata");
            assert!(metadata.is_none_or(|m| m.get("resourceVersion").is_none()), "{omit:?}");
        }
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_as_a_json_value_does() {
        let text = r#"{"metadata":{},"data":{"b":1,"a":2,"b":3}}"#;
        let value: Json = serde_json::from_str(text).unwrap();
        let shape = shape(&[]);
        assert_eq!(
            decode(text, &shape).document.to_json(),
            expected(value, &shape).to_json()
        );
    }

    #[test]
    fn what_is_not_an_object_is_an_error() {
        for text in [
            "[]",
            "\"x\"",
            "null",
            "{\"metadata\":{\"resourceVersion\":5}}",
            "{\"metadata\":{\"labels\":7}}",
            "{\"metadata\":{\"annotations\":{\"a\":1}}}",
            "{\"metadata\":{\"name\":[]}}",
            "{\"metadata\":3}",
        ] {
            let result = shape(&[]).decode(&mut serde_json::Deserializer::from_str(text));
            assert!(result.is_err(), "{text}");
        }
    }

    fn any_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Json::from),
            "\\PC{0,12}".prop_map(Json::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                prop::collection::btree_map("[a-c]{0,2}|\\PC{0,6}", inner, 0..6)
                    .prop_map(|map| Json::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn decoding_gives_the_bytes_of_the_two_pass_encoding(
            body in prop::collection::btree_map("[a-c]{1,2}|metadata|kind", any_json(), 0..6),
            version in "[0-9]{1,4}",
            omit in prop::sample::select(vec![
                vec![],
                vec!["a", "b.a"],
                vec!["metadata.managedFields", "c[1]", "a.b[0].c"],
                vec!["kind", "apiVersion", "b"],
            ]),
        ) {
            let mut value = Json::Object(body.into_iter().collect());
            value["metadata"] = json!({"resourceVersion": version, "x": value.get("a").cloned()});
            let shape = shape(&omit);
            let map = value.as_object_mut().unwrap();
            map.entry("apiVersion").or_insert_with(|| json!(shape.api_version));
            map.entry("kind").or_insert_with(|| json!(shape.kind));
            // `serde_json` writes keys sorted: the same bytes are expected of
            // both encoders given the same text.
            let text = value.to_string();
            let decoded = decode(&text, &shape);
            let parsed: Json = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&decoded.document, &Document::from_json_without(&parsed, &shape.omit));
            prop_assert_eq!(decoded.resource_version, Some(version));
        }
    }
}
