//! Which watches a config needs: entries with the same kind, namespaces and
//! selectors share one watch ([`plan`]), and on-demand entries that share one
//! must agree on its settings ([`shared_watch_issues`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::Namespaces;
use crate::config::{Config, Issue, Resource, StoreKind};
use crate::object::FieldPath;
use crate::object::document::Document;
use crate::object::selector::{FieldSelector, LabelSelector};

/// What one watch is about; entries with equal specs share a watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub api_version: String,
    pub kind: String,
    /// Sorted and deduplicated; empty means all namespaces.
    pub namespaces: Vec<String>,
    pub labels: LabelSelector,
    /// Labels of the namespaces watched ([`selected`]); empty: no selection
    /// by namespace labels.
    pub namespace_labels: LabelSelector,
    pub fields: FieldSelector,
    /// Only metadata is watched (for on-demand stores).
    pub metadata_only: bool,
}

impl WatchSpec {
    fn of(resource: &Resource) -> WatchSpec {
        let mut namespaces = resource.spec.namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        WatchSpec {
            api_version: resource.spec.api_version.clone(),
            kind: resource.spec.kind.clone(),
            namespaces,
            labels: resource.labels.clone(),
            namespace_labels: resource.namespace_labels.clone(),
            fields: resource.fields.clone(),
            metadata_only: resource.spec.store == StoreKind::OnDemand,
        }
    }

    /// What makes two specs the same watch.
    fn identity(&self) -> (String, String, Vec<String>, String, String, String, bool) {
        (
            self.api_version.clone(),
            self.kind.clone(),
            self.namespaces.clone(),
            self.namespace_labels.canonical(),
            self.labels.canonical(),
            self.fields.canonical(),
            self.metadata_only,
        )
    }

    /// Whether `object` belongs to this watch: same apiVersion and kind, in one
    /// of its namespaces (if any) whose labels match its namespace selector
    /// (if any; `namespaces` holds the Namespace objects there are), matching
    /// its selectors. The API server and [`selected`] do this for real
    /// watches; manifests are filtered here the same way.
    pub fn selects(&self, object: &Value, namespaces: &Namespaces) -> bool {
        let text = |field: &str| object.get(field).and_then(Value::as_str).unwrap_or_default();
        if text("apiVersion") != self.api_version || text("kind") != self.kind {
            return false;
        }
        if let Some(namespace) = object.pointer("/metadata/namespace").and_then(Value::as_str)
            && !self.in_namespace(namespace, namespaces.labels(namespace))
        {
            return false;
        }
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// Whether objects of `namespace` belong to this watch, the namespace's
    /// labels being `labels` (`{"metadata": {"labels": …}}`; `None`: there
    /// is no such namespace).
    pub fn in_namespace(&self, namespace: &str, labels: Option<&Value>) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        self.namespace_labels.is_empty() || labels.is_some_and(|labels| self.namespace_labels.matches(labels))
    }

    /// A short description for logs: `v1/Secret in [a, b] labels=… fields=…`.
    pub fn describe(&self) -> String {
        let mut text = format!("{}/{}", self.api_version, self.kind);
        if !self.namespaces.is_empty() {
            text.push_str(&format!(" in [{}]", self.namespaces.join(", ")));
        }
        if !self.namespace_labels.is_empty() {
            text.push_str(&format!(" in namespaces labelled {}", self.namespace_labels.as_str()));
        }
        if !self.labels.is_empty() {
            text.push_str(&format!(" labels={}", self.labels.as_str()));
        }
        if !self.fields.is_empty() {
            text.push_str(&format!(" fields={}", self.fields.as_str()));
        }
        if self.metadata_only {
            text.push_str(" (metadata only)");
        }
        text
    }
}

/// One watch and the `watched_resources` entries (stores) it feeds.
#[derive(Debug, Clone)]
pub struct Watch {
    pub spec: WatchSpec,
    pub stores: Vec<String>,
    /// The `ignore_fields` of every one of its stores: left out of objects
    /// as they arrive, so that no store ever holds them.
    pub omit: Vec<FieldPath>,
}

impl Watch {
    /// What the stores of this watch keep of `object`.
    pub fn document(&self, object: &Value) -> Document {
        Document::from_json_without(object, &self.omit)
    }
}

/// The distinct watches a config needs, in a stable order; a watch's index in
/// this list is its id in [`SourceEvent`]s.
pub fn plan(config: &Config) -> Vec<Watch> {
    let mut watches: BTreeMap<_, Watch> = BTreeMap::new();
    for (name, resource) in &config.watched_resources {
        let spec = WatchSpec::of(resource);
        let watch = watches.entry(spec.identity()).or_insert_with(|| Watch {
            spec,
            stores: Vec::new(),
            omit: resource.ignore_fields.clone(),
        });
        watch.stores.push(name.clone());
        watch.omit.retain(|field| resource.ignore_fields.contains(field));
    }
    watches.into_values().collect()
}

/// The problems of on-demand entries that share a watch but not its settings.
///
/// Entries with the same kind, namespaces and selectors share one watch, and
/// on-demand ones one cache of bodies: one GET per object, one copy of it.
/// For them, differing `cache` or `ignore_fields` settings are an error, not
/// merged: a merged cache would be sized for neither entry as its author
/// meant, and one copy of a body cannot leave out a field for one entry and
/// keep it for the other without re-encoding it on every read (or a second
/// cache, doubling GETs and memory). Full stores keep their own copies of
/// objects, so their `ignore_fields` may differ freely.
pub fn shared_watch_issues(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    for watch in plan(config).iter().filter(|w| w.spec.metadata_only) {
        let first = &config.watched_resources[&watch.stores[0]];
        for name in &watch.stores[1..] {
            let other = &config.watched_resources[name];
            let why = format!(
                "`{name}` and `{}` share one watch ({}) and so one cache of bodies",
                first.name,
                watch.spec.describe()
            );
            if (other.cache.ttl, other.cache.max_entries) != (first.cache.ttl, first.cache.max_entries) {
                issues.push(config.issue_at(
                    &["watched_resources", name, "cache"],
                    format!("{why}, but their `cache` settings differ; make them equal"),
                ));
            }
            if !same_fields(&other.ignore_fields, &first.ignore_fields) {
                issues.push(config.issue_at(
                    &["watched_resources", name, "ignore_fields"],
                    format!("{why}, but their `ignore_fields` differ; make them equal"),
                ));
            }
        }
    }
    issues
}

fn same_fields(a: &[FieldPath], b: &[FieldPath]) -> bool {
    let within = |a: &[FieldPath], b: &[FieldPath]| a.iter().all(|x| b.iter().any(|y| x.segments() == y.segments()));
    within(a, b) && within(b, a)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn entries_with_the_same_kind_and_selectors_share_one_watch() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, namespaces: [y, x], label_selector: "app=web"}
  b: {api_version: v1, kind: Secret, namespaces: [x, y], label_selector: "app=web", index_by: ["metadata.name"]}
  c: {api_version: v1, kind: Secret}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let watches = plan(&config);
        assert_eq!(watches.len(), 2);
        let shared = watches.iter().find(|w| w.stores.len() == 2).unwrap();
        assert_eq!(shared.stores, ["a", "b"]);
        assert_eq!(shared.spec.namespaces, ["x", "y"]);
    }

    #[test]
    fn a_watch_leaves_out_only_what_all_its_stores_ignore() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, ignore_fields: [metadata.managedFields, metadata.annotations]}
  b: {api_version: v1, kind: Secret, ignore_fields: [metadata.managedFields, data]}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let watches = plan(&config);
        let omitted: Vec<String> = watches[0].omit.iter().map(ToString::to_string).collect();
        assert_eq!(omitted, ["metadata.managedFields"]);
    }

    #[test]
    fn equivalent_selectors_share_one_watch() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, label_selector: "app=web,tier in (a, b)", field_selector: "metadata.name=x"}
  b: {api_version: v1, kind: Secret, label_selector: "tier in (b,a), app==web", field_selector: "$.metadata.name==x"}
  c: {api_version: v1, kind: Secret, label_selector: "app=web"}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let watches = plan(&config);
        assert_eq!(watches.len(), 2);
        assert_eq!(watches.iter().find(|w| w.stores.len() == 2).unwrap().stores, ["a", "b"]);
    }

    #[test]
    fn on_demand_entries_sharing_a_watch_must_agree_on_cache_and_ignore_fields() {
        let text = r#"
watched_resources:
  a: {api_version: v1, kind: Secret, store: on-demand, cache: {max_entries: 10}, ignore_fields: [metadata.managedFields]}
  b: {api_version: v1, kind: Secret, store: on-demand, cache: {max_entries: 99}, ignore_fields: [data]}
  c: {api_version: v1, kind: Secret, store: on-demand, cache: {max_entries: 10}, ignore_fields: [$.metadata.managedFields]}
  full: {api_version: v1, kind: Secret, ignore_fields: [data]}
  full2: {api_version: v1, kind: Secret}
templates:
  t: {inline: x, path: t}
"#;
        let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
        let issues: Vec<String> = shared_watch_issues(&config).iter().map(ToString::to_string).collect();
        assert_eq!(issues.len(), 2, "{issues:#?}");
        assert!(
            issues[0].contains("watched_resources.b.cache: `b` and `a` share one watch (v1/Secret (metadata only))"),
            "{}",
            issues[0]
        );
        assert!(issues[0].contains("`cache` settings differ"), "{}", issues[0]);
        assert!(
            issues[1].contains("watched_resources.b.ignore_fields: `b` and `a`"),
            "{}",
            issues[1]
        );
    }
}
