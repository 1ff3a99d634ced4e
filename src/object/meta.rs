//! An object's identity and metadata as the API shows them.

use sha2::{Digest, Sha256};

use super::Node;

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

fn parse_uuid(text: &str) -> Option<u128> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    (text.len() == 36 && hex.len() == 32)
        .then(|| u128::from_str_radix(&hex, 16).ok())
        .flatten()
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
        let metadata = object.get("metadata");
        let text = |field: &str| {
            metadata
                .and_then(|m| m.get(field))
                .and_then(Node::as_str)
                .unwrap_or_default()
        };
        let (namespace, name) = (text("namespace"), text("name"));
        Meta {
            id: ObjectId::new(text("uid"), namespace, name),
            namespace,
            name,
            resource_version: text("resourceVersion"),
        }
    }
}
