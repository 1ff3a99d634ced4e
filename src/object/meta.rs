//! An object's identity and metadata as the API shows them.

use sha2::{Digest, Sha256};

use super::Node;
use super::document::MAP;

/// How an object is identified: its UID (as 128 bits), or a digest of
/// `namespace/name` when it has none (manifests written by hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u128);

impl ObjectId {
    /// The identity of an object with this `uid` (empty: none) and name.
    pub fn new(uid: &str, namespace: &str, name: &str) -> ObjectId {
        if let Some(id) = parse_uuid(uid) {
            return ObjectId(id);
        }
        let mut digest = Sha256::new();
        if uid.is_empty() {
            // Length first, so that no NUL in a name can shift the parts.
            digest.update(b"name\0");
            digest.update((namespace.len() as u64).to_be_bytes());
            digest.update(namespace.as_bytes());
            digest.update(name.as_bytes());
        } else {
            digest.update(b"uid\0");
            digest.update(uid.as_bytes());
        }
        let bytes: [u8; 16] = digest.finalize()[..16]
            .try_into()
            .expect("a sha256 digest has 32 bytes");
        ObjectId(u128::from_be_bytes(bytes))
    }
}

/// The 128 bits of a UUID written as 36 characters (32 hex digits and four
/// dashes), read without copying.
fn parse_uuid(text: &str) -> Option<u128> {
    if text.len() != 36 {
        return None;
    }
    let mut id: u128 = 0;
    let mut digits = 0;
    for byte in text.bytes().filter(|b| *b != b'-') {
        id = id << 4 | u128::from(char::from(byte).to_digit(16)?);
        digits += 1;
    }
    (digits == 32).then_some(id)
}

/// Namespace, name, identity and version of an object as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub id: ObjectId,
    pub resource_version: &'a str,
}

impl<'a> Meta<'a> {
    /// Reads `metadata` of a Kubernetes object.
    pub fn of(object: Node<'a>) -> Meta<'a> {
        // One pass over `metadata` for the four fields (every store reads
        // them of every object it is given).
        let (mut namespace, mut name, mut uid, mut resource_version) = ("", "", "", "");
        if let Some(metadata) = object.get("metadata").filter(|m| m.tag() == MAP) {
            for (key, value) in metadata.raw_entries() {
                let field = match key {
                    b"namespace" => &mut namespace,
                    b"name" => &mut name,
                    b"uid" => &mut uid,
                    b"resourceVersion" => &mut resource_version,
                    _ => continue,
                };
                *field = value.as_str().unwrap_or_default();
            }
        }
        Meta {
            id: ObjectId::new(uid, namespace, name),
            namespace,
            name,
            resource_version,
        }
    }

    /// Only `metadata.resourceVersion`, for callers that need nothing else.
    pub fn resource_version(object: Node<'a>) -> &'a str {
        object
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Node::as_str)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::object::document::Document;

    #[test]
    fn a_uuid_is_its_128_bits_and_any_other_uid_a_digest() {
        let id = ObjectId::new("0123abcd-4567-89ef-ABCD-0123456789ab", "ns", "x");
        assert_eq!(id, ObjectId(0x0123abcd_4567_89ef_abcd_0123456789ab));
        for uid in [
            "0123abcd-4567-89ef-abcd-0123456789a",  // 35 characters
            "0123abcd-4567-89ef-abcd-0123456789ag", // not hex
            "0123abcd4567-89ef-abcd-0123456789ab0", // a dash short
            "+123abcd-4567-89ef-abcd-0123456789ab", // a sign is not a digit
        ] {
            let digested = ObjectId::new(uid, "ns", "x");
            assert_ne!(digested, id, "{uid}");
            assert_eq!(
                digested,
                ObjectId::new(uid, "other", "names"),
                "{uid}: a uid is digested alone"
            );
        }
        assert_ne!(ObjectId::new("", "ns", "x"), ObjectId::new("", "ns", "y"));
        assert_ne!(ObjectId::new("", "ns", "x"), ObjectId::new("", "n", "sx"));
    }

    #[test]
    fn meta_reads_namespace_name_uid_and_version() {
        let uid = "0123abcd-4567-89ef-abcd-0123456789ab";
        let doc = Document::from_json(&json!({
            "metadata": {"annotations": {"name": "not this"}, "name": "x", "namespace": "ns", "resourceVersion": "42", "uid": uid},
            "name": "nor this"
        }));
        let meta = Meta::of(doc.root());
        assert_eq!((meta.namespace, meta.name, meta.resource_version), ("ns", "x", "42"));
        assert_eq!(meta.id, ObjectId::new(uid, "", ""));
        assert_eq!(Meta::resource_version(doc.root()), "42");

        let bare = Document::from_json(&json!({"metadata": ["not", "a", "mapping"], "name": "x"}));
        let meta = Meta::of(bare.root());
        assert_eq!((meta.namespace, meta.name, meta.resource_version), ("", "", ""));
        assert_eq!(Meta::resource_version(bare.root()), "");
    }
}
