//! What a reference in an on-demand store costs: every byte the store keeps
//! for it (position text, identity, version, ordered map and identity map
//! shares), measured with a counting allocator. Allocator overhead is not
//! included; see the README for resident-memory figures.

use std::alloc::System;

use kube_template::index::Indexer;
use kube_template::index::OnMissingKey;
use kube_template::object::FieldPath;
use kube_template::store::on_demand::OnDemandStore;
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REFERENCES: usize = 100_000;

/// Bytes the store holds per reference after `REFERENCES` metadata-only
/// objects were applied.
fn bytes_per_reference(index_by: &[&str]) -> f64 {
    let paths = index_by.iter().map(|e| FieldPath::parse(e).unwrap()).collect();
    let mut store = OnDemandStore::new(Indexer::new(paths, OnMissingKey::Empty), Vec::new());
    let region = Region::new(GLOBAL);
    for i in 0..REFERENCES {
        // Built and dropped inside the region: only what the store keeps remains.
        let object = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "namespace": format!("team-{:02}", i % 50),
                "name": format!("tls-certificate-{i:06}"),
                "uid": format!("{:08x}-1d4b-4f5e-9a51-0c7f8a3b2d01", i),
                "resourceVersion": format!("{}", 1_000_000 + i),
                "labels": {"app": format!("app-{}", i % 100), "tier": "edge"},
            }
        });
        store.apply(object.into());
    }
    let change = region.change();
    assert_eq!(store.len(), REFERENCES);
    let kept = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    drop(store);
    kept / REFERENCES as f64
}

#[test]
fn an_on_demand_reference_costs_at_most_200_bytes() {
    let default_key = bytes_per_reference(&["metadata.namespace", "metadata.name"]);
    let label_key = bytes_per_reference(&["metadata.labels.app", "metadata.namespace"]);
    println!(
        "bytes per reference: index_by [namespace, name] {default_key:.1}; [labels.app, namespace] {label_key:.1}"
    );
    assert!(default_key <= 200.0, "{default_key:.1} bytes per reference");
    assert!(label_key <= 200.0, "{label_key:.1} bytes per reference");
}
