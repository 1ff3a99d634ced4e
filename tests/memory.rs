//! What a store costs per object: every byte it keeps (for a reference in
//! an on-demand store: position text, identity, version, ordered map and
//! identity map shares; for a full store the document besides), measured
//! with a counting allocator. Allocator overhead is not included; see the
//! README for resident-memory figures. And what a run gives back of its
//! start-up before it lists.

mod support;

use std::alloc::System;
use std::time::Duration;

use kube_template::index::Indexer;
use kube_template::index::OnMissingKey;
use kube_template::object::{Document, FieldPath};
use kube_template::store::full::FullStore;
use kube_template::store::on_demand::OnDemandStore;
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::case::{Case, config_map as small_config_map, within};
use support::fake_api::FakeApiServer;
use support::objects::config_map;
use support::sidecar::WAIT;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REFERENCES: usize = 100_000;

/// Held by each test while it counts: the counter is the whole process's.
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bytes the store holds per reference after `REFERENCES` metadata-only
/// objects were applied.
fn bytes_per_reference(index_by: &[&str]) -> f64 {
    let paths = index_by.iter().map(|e| FieldPath::parse(e).unwrap()).collect();
    // Taken before the store, so that it is dropped after it.
    let _counting = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
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

#[test]
fn a_listed_full_store_keeps_at_most_one_fifth_more_than_its_objects_json() {
    const OBJECTS: usize = 10_000;
    let _counting = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let paths = ["metadata.namespace", "metadata.name"]
        .iter()
        .map(|e| FieldPath::parse(e).unwrap())
        .collect();
    let mut store = FullStore::new(Indexer::new(paths, OnMissingKey::Empty), Vec::new());
    let mut json_bytes = 0;
    let region = Region::new(GLOBAL);
    let listing: Vec<Document> = (0..OBJECTS)
        .map(|i| {
            let object = config_map(i);
            json_bytes += serde_json::to_vec(&object).unwrap().len();
            Document::from_json(&object)
        })
        .collect();
    store.reset_scope(None, listing);
    let change = region.change();
    assert_eq!(store.len(), OBJECTS);
    let kept = (change.bytes_allocated - change.bytes_deallocated) as f64 / json_bytes as f64;
    println!("a listed full store keeps {kept:.3}× its objects' JSON");
    // Documents about their JSON's size, and the ordered map, the identity
    // map and the positions around 15% of it.
    assert!(kept <= 1.2, "{kept:.3}× the objects' JSON");
}

#[test]
fn a_run_gives_back_its_start_ups_code_pages_before_it_lists_and_the_listings_before_it_renders() {
    // This process's allocations would be counted by the other tests.
    let _counting = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(within(Duration::from_secs(60), async {
        let server = FakeApiServer::start().await;
        server.apply(small_config_map("a", "1"));
        let case = Case::new(
            "watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\n\
             templates:\n  t: {inline: \"{% for cm in resources.cms %}{{ cm.metadata.name }}{% endfor %}\", path: out.txt}\n",
        );
        let mut sidecar = case.spawn_against(&server, &["--once"]);
        let status = sidecar.exit(WAIT).await;
        let log = sidecar.log();
        assert!(status.success(), "exited {status}\n{log}");
        assert_eq!(case.read("out.txt").as_deref(), Some("a"));
        let trimmed = log
            .find("memory only the start-up needed given back")
            .unwrap_or_else(|| panic!("no trim before the listing\n{log}"));
        let listed = log.find("initial list done").expect("the listing is logged");
        assert!(trimmed < listed, "trimmed after the listing\n{log}");
        let mapped: u64 = log[..trimmed]
            .rsplit("mapped_bytes=")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("mapped_bytes logged");
        assert!(mapped > 0, "nothing given back\n{log}");
        // And again once every listing is in, before the first render.
        let after_listing = log
            .find("memory only the listings needed given back")
            .unwrap_or_else(|| panic!("no trim after the listings\n{log}"));
        let rendered = log.find("render started").expect("the render is logged");
        assert!(listed < after_listing && after_listing < rendered, "trimmed out of order\n{log}");
    }));
}
