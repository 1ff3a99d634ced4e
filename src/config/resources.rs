//! `watched_resources`: what to watch and how to index and store it.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::humane::{self, DurationText};
use super::validate::{self, Validator, api_version_shape, dns_label, kind_shape};
use crate::index::{Indexer, OnMissingKey};
use crate::object::FieldPath;
use crate::object::selector::{FieldSelector, LabelSelector};
use crate::store::on_demand::CacheSettings;

/// A `watched_resources` entry as the user writes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchedResource {
    /// `apiVersion` of the kind, e.g. `v1` or `networking.k8s.io/v1`.
    #[schemars(pattern(validate::API_VERSION))]
    pub api_version: String,
    /// The kind, e.g. `Ingress` or a CRD's kind.
    #[schemars(pattern(validate::KIND))]
    pub kind: String,
    /// Namespaces to watch; empty means all. Ignored for cluster-scoped kinds.
    #[serde(default)]
    #[schemars(inner(pattern(validate::DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// Label selector over Namespaces: the resource is watched in the
    /// namespaces whose labels match, followed as they change. With
    /// `namespaces`, only the listed ones that match. Ignored for
    /// cluster-scoped kinds.
    #[serde(default)]
    pub namespace_selector: String,
    /// Kubernetes label selector, applied server-side.
    #[serde(default)]
    pub label_selector: String,
    /// Kubernetes field selector, applied server-side.
    #[serde(default)]
    pub field_selector: String,
    /// Expressions whose values form each object's key.
    #[serde(default = "default_index_by")]
    #[schemars(length(min = 1))]
    pub index_by: Vec<String>,
    /// `full` keeps whole objects, `on-demand` only references.
    #[serde(default)]
    pub store: StoreKind,
    /// Fields pruned from every object before it is stored.
    #[serde(default = "default_ignore_fields")]
    pub ignore_fields: Vec<String>,
    /// What a missing `index_by` value does to an object.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// Cache bounds of an on-demand store.
    #[serde(default)]
    pub cache: Option<CacheEntry>,
}

fn default_index_by() -> Vec<String> {
    vec!["metadata.namespace".into(), "metadata.name".into()]
}

fn default_ignore_fields() -> Vec<String> {
    vec!["metadata.managedFields".into()]
}

/// Which store holds a resource's objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Whole objects, pruned of `ignore_fields`.
    #[default]
    Full,
    /// References only (from a metadata-only watch); bodies are fetched when
    /// a template reads them, and cached.
    OnDemand,
}

/// `cache:` of an on-demand store as the user writes it.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    /// How long a fetched body may be used before it is fetched again.
    #[serde(default = "default_cache_ttl", deserialize_with = "humane::duration::deserialize")]
    #[schemars(with = "DurationText")]
    pub ttl: Duration,
    /// How many bodies the cache holds at most (least recently used go first).
    #[serde(default = "default_cache_entries")]
    #[schemars(range(min = 1))]
    pub max_entries: usize,
}

impl Default for CacheEntry {
    fn default() -> Self {
        CacheEntry {
            ttl: default_cache_ttl(),
            max_entries: default_cache_entries(),
        }
    }
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(120)
}

fn default_cache_entries() -> usize {
    512
}

/// A validated `watched_resources` entry.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The entry's name: `resources.<name>` in templates.
    pub name: String,
    pub spec: WatchedResource,
    pub indexer: Indexer,
    pub ignore_fields: Vec<FieldPath>,
    pub labels: LabelSelector,
    /// Empty: every namespace (or those of `namespaces`).
    pub namespace_labels: LabelSelector,
    pub fields: FieldSelector,
    pub cache: CacheSettings,
}

impl Validator<'_> {
    /// The `watched_resources` section: each valid entry by name.
    pub(super) fn watched_resources(&mut self) -> BTreeMap<String, Resource> {
        let mut resources = BTreeMap::new();
        for (name, entry) in self.named_entries("watched_resources") {
            let path = vec!["watched_resources".to_string(), name.clone()];
            if let Some(spec) = self.typed::<WatchedResource>(&path, &entry, &["cache"])
                && let Some(resource) = self.resource(&path, name.clone(), spec)
            {
                resources.insert(name, resource);
            }
        }
        resources
    }

    fn resource(&mut self, path: &[String], name: String, spec: WatchedResource) -> Option<Resource> {
        let before = self.issues.len();
        let at = |field: &str| -> Vec<String> {
            let mut p = path.to_vec();
            p.push(field.to_string());
            p
        };
        if spec.api_version.trim().is_empty() {
            self.issue(&at("api_version"), "must not be empty");
        } else if !api_version_shape(&spec.api_version) {
            self.issue(
                &at("api_version"),
                format!(
                    "`{}` is not an apiVersion: expected `version` or `group/version`, e.g. `v1` or `networking.k8s.io/v1`",
                    spec.api_version
                ),
            );
        }
        if spec.kind.trim().is_empty() {
            self.issue(&at("kind"), "must not be empty");
        } else if !kind_shape(&spec.kind) {
            self.issue(
                &at("kind"),
                format!(
                    "`{}` is not a kind: expected a name such as `Ingress` or `ConfigMap`",
                    spec.kind
                ),
            );
        }
        for (i, namespace) in spec.namespaces.iter().enumerate() {
            if !dns_label(namespace) {
                self.issue(
                    &[at("namespaces"), vec![i.to_string()]].concat(),
                    format!("`{namespace}` is not a namespace name (lowercase letters, digits and `-`)"),
                );
            }
        }
        let mut paths = Vec::new();
        if spec.index_by.is_empty() {
            self.issue(&at("index_by"), "needs at least one expression");
        }
        for (i, expr) in spec.index_by.iter().enumerate() {
            match FieldPath::parse(expr) {
                Ok(p) => paths.push(p),
                Err(e) => self.issue(
                    &[at("index_by"), vec![i.to_string()]].concat(),
                    format!("bad expression `{expr}`: {e}"),
                ),
            }
        }
        if spec.store == StoreKind::OnDemand {
            // An on-demand store is fed by a metadata-only watch.
            for (i, path) in paths.iter().enumerate() {
                if path.segments().first() != Some(&crate::object::Segment::Field("metadata".into())) {
                    self.issue(
                        &[at("index_by"), vec![i.to_string()]].concat(),
                        format!("`{path}`: an on-demand store indexes by metadata only (its watch carries no bodies)"),
                    );
                }
            }
        }
        let mut ignore_fields = Vec::new();
        for (i, expr) in spec.ignore_fields.iter().enumerate() {
            match FieldPath::parse(expr) {
                Ok(p) => ignore_fields.push(p),
                Err(e) => self.issue(
                    &[at("ignore_fields"), vec![i.to_string()]].concat(),
                    format!("bad expression `{expr}`: {e}"),
                ),
            }
        }
        let labels = LabelSelector::parse(&spec.label_selector)
            .map_err(|e| {
                self.issue(
                    &at("label_selector"),
                    format!("bad selector `{}`: {e}", spec.label_selector),
                )
            })
            .ok();
        let namespace_labels = LabelSelector::parse(&spec.namespace_selector)
            .map_err(|e| {
                self.issue(
                    &at("namespace_selector"),
                    format!("bad selector `{}`: {e}", spec.namespace_selector),
                )
            })
            .ok();
        let fields = FieldSelector::parse(&spec.field_selector)
            .map_err(|e| {
                self.issue(
                    &at("field_selector"),
                    format!("bad selector `{}`: {e}", spec.field_selector),
                )
            })
            .ok();
        if spec.cache.is_some() && spec.store != StoreKind::OnDemand {
            self.issue(&at("cache"), "`cache` applies only to `store: on-demand`");
        }
        if let Some(cache) = spec.cache
            && cache.max_entries == 0
        {
            self.issue(
                &at("cache")
                    .into_iter()
                    .chain(["max_entries".into()])
                    .collect::<Vec<_>>(),
                "must be at least 1",
            );
        }
        if self.issues.len() > before {
            return None;
        }
        Some(Resource {
            name,
            indexer: Indexer::new(paths, spec.on_missing_key),
            ignore_fields,
            labels: labels?,
            namespace_labels: namespace_labels?,
            fields: fields?,
            cache: {
                let entry = spec.cache.unwrap_or_default();
                CacheSettings {
                    ttl: entry.ttl,
                    max_entries: entry.max_entries,
                }
            },
            spec,
        })
    }
}
