//! The validator: reads each entry into its typed form, recording every
//! problem at its YAML path and position, and the shapes of Kubernetes names.

use serde::de::DeserializeOwned;

use super::Issue;
use super::yaml::{Node, NodeValue};

/// Walks one YAML tree, section by section, collecting every problem.
pub(super) struct Validator<'a> {
    /// The whole file: issues point into it.
    pub(super) tree: &'a Node,
    /// Every problem found so far, in the order found.
    pub(super) issues: Vec<Issue>,
}

impl Validator<'_> {
    /// Records a problem with the node at `path`, or the deepest part of it that exists.
    pub(super) fn issue(&mut self, path: &[String], message: impl Into<String>) {
        self.issues.push(Issue {
            path: display_path(path),
            position: Some(self.tree.deepest(path).position),
            message: message.into(),
        });
    }

    /// A top-level section that is given and not empty.
    pub(super) fn section(&self, name: &str) -> Option<Node> {
        self.tree
            .get(name)
            .filter(|node| !matches!(node.value, NodeValue::Null))
            .cloned()
    }

    /// The entries of a top-level mapping section, or none (with an issue) when it
    /// is not a mapping.
    pub(super) fn named_entries(&mut self, section: &str) -> Vec<(String, Node)> {
        let Some(node) = self.tree.get(section) else {
            return Vec::new();
        };
        match &node.value {
            NodeValue::Mapping(entries) => entries.clone(),
            NodeValue::Null => Vec::new(),
            _ => {
                let found = node.type_name();
                self.issue(
                    &[section.into()],
                    format!("expected a mapping of names to entries, found {found}"),
                );
                Vec::new()
            }
        }
    }

    /// Deserializes one mapping into a typed entry. Each problem is recorded at
    /// its exact path inside the entry; the offending key is then set aside and
    /// the rest read again, so that an entry with several problems reports them
    /// all. `nested` names the fields that are mappings themselves (serde would
    /// also take a list for a struct).
    pub(super) fn typed<T: DeserializeOwned>(&mut self, path: &[String], node: &Node, nested: &[&str]) -> Option<T> {
        if !self.expect_mapping(path, node) {
            return None;
        }
        let mut json = node.to_json();
        let mut failed = false;
        for field in nested {
            if let Some(child) = node.get(field)
                && !matches!(child.value, NodeValue::Null)
                && !self.expect_mapping(&[path, &[field.to_string()]].concat(), child)
            {
                failed = true;
                set_aside(&mut json, &[field.to_string()]);
            }
        }
        let mut set_aside_paths: Vec<Vec<String>> = Vec::new();
        // Bounded: each round sets one key aside.
        for _ in 0..64 {
            let err = match serde_path_to_error::deserialize::<_, T>(json.clone()) {
                Ok(value) => return (!failed).then_some(value),
                Err(err) => err,
            };
            let mut inner = Vec::new();
            for segment in err.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => inner.push(index.to_string()),
                    serde_path_to_error::Segment::Map { key } => inner.push(key.clone()),
                    serde_path_to_error::Segment::Enum { variant } => inner.push(variant.clone()),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let message = err.into_inner().to_string();
            // serde names unknown fields in its message, and the path then stops
            // at their parent: point at the unknown key itself.
            if let Some(unknown) = quoted_field(&message, "unknown field `")
                && inner.last() != Some(&unknown)
            {
                inner.push(unknown);
            }
            if let Some(missing) = quoted_field(&message, "missing field `") {
                // Not a problem of its own when it is missing because it was
                // set aside after an earlier one.
                let mut at = inner.clone();
                at.push(missing);
                if !set_aside_paths.contains(&at) {
                    self.issue(&[path, &inner].concat(), plain_serde_message(&message));
                }
                return None;
            }
            self.issue(&[path, &inner].concat(), plain_serde_message(&message));
            failed = true;
            match set_aside(&mut json, &inner) {
                Some(removed) => set_aside_paths.push(removed),
                None => return None,
            }
        }
        None
    }

    /// Records an issue unless `node` is a mapping.
    pub(super) fn expect_mapping(&mut self, path: &[String], node: &Node) -> bool {
        if matches!(node.value, NodeValue::Mapping(_)) {
            return true;
        }
        self.issue(path, format!("expected a mapping, found {}", node.type_name()));
        false
    }
}

/// [`dns_label`] as a JSON Schema `pattern` (its length by the repeat count).
pub(super) const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// [`dns_subdomain`] as a JSON Schema `pattern`, but for its total length.
// `status.config_map` (in `report`, which cannot import this) spells it out;
// the schema test holds the two equal.
#[cfg(test)]
pub(super) const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// [`api_version_shape`] as a JSON Schema `pattern`, but for lengths.
pub(super) const API_VERSION: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-z]([-a-z0-9]*[a-z0-9])?$";

/// [`kind_shape`] as a JSON Schema `pattern`.
pub(super) const KIND: &str = r"^[A-Za-z][A-Za-z0-9]*$";

/// [`listen_shape`] as a JSON Schema `pattern`: a port of 0 to 65535.
pub(super) const LISTEN: &str =
    r"^\S+:0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";

/// `v1`, `apps/v1`, `networking.k8s.io/v1`, `example.com/v1alpha1`: an
/// optional DNS-subdomain group, then a DNS-label version.
pub(super) fn api_version_shape(text: &str) -> bool {
    let version = |s: &str| dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase());
    match text.split_once('/') {
        None => version(text),
        Some((group, v)) => dns_subdomain(group) && version(v),
    }
}

/// A Kubernetes DNS label (RFC 1123): a namespace name, one part of a group.
pub(super) fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes DNS subdomain: most object names, API groups.
pub(super) fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// `host:port` as a listener binds it: `0.0.0.0:9090`, `[::]:9090`,
/// `localhost:9090`.
pub(super) fn listen_shape(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

/// `Ingress`, `ConfigMap`, a CRD's kind: letters and digits, starting with a
/// letter.
pub(super) fn kind_shape(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic()) && text.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Orders issues as they appear in the file.
pub fn sort_issues(issues: &mut [Issue]) {
    issues.sort_by_key(|i| i.position.map(|p| (p.line, p.column)));
}

/// Extracts `x` from serde's "unknown field `x`, expected …" (with that
/// `prefix`) or "missing field `x`".
fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_string())
}

/// Removes the key a problem is about from `json` (the deepest mapping key on
/// `path` before any list index) and returns the path removed.
fn set_aside(json: &mut serde_json::Value, path: &[String]) -> Option<Vec<String>> {
    let mut depth = 0;
    let mut node = &*json;
    for segment in path {
        match node.get(segment.as_str()) {
            Some(next) if node.is_object() => {
                depth += 1;
                node = next;
            }
            _ => break,
        }
    }
    let (parent, key) = path[..depth].split_at(depth.checked_sub(1)?);
    let mut map = &mut *json;
    for segment in parent {
        map = map.get_mut(segment.as_str())?;
    }
    map.as_object_mut()?.remove(&key[0])?;
    Some(path[..depth].to_vec())
}

/// Serde's wording with Rust's names replaced by the YAML ones.
fn plain_serde_message(message: &str) -> String {
    let mut out = message
        .replace("expected a sequence", "expected a list")
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected usize", "expected a whole number");
    if let Some(at) = out.find("expected struct ") {
        let end = out[at + "expected struct ".len()..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |n| at + "expected struct ".len() + n);
        out.replace_range(at..end, "expected a mapping");
    }
    out
}

pub(super) fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        return "(document)".into();
    }
    let mut out = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}
