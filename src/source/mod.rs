//! Sources of objects: a directory of manifests (`--from`) or, in live mode,
//! the Kubernetes API.

pub mod manifests;
pub mod selector;

use serde_json::Value;

use crate::config::Resource;

/// Whether `object` belongs to `resource`: same apiVersion and kind, in one of
/// its namespaces (if any are given), and matching its selectors. The API server
/// does this for watches; manifests are filtered here the same way.
pub fn selects(resource: &Resource, object: &Value) -> bool {
    let text = |field: &str| object.get(field).and_then(Value::as_str).unwrap_or_default();
    if text("apiVersion") != resource.spec.api_version || text("kind") != resource.spec.kind {
        return false;
    }
    let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str);
    if !resource.spec.namespaces.is_empty()
        && namespace.is_some_and(|ns| !resource.spec.namespaces.iter().any(|n| n == ns))
    {
        return false;
    }
    resource.labels.matches(object) && resource.fields.matches(object)
}
