//! Speed of the pure core (DESIGN section 9), with criterion:
//! - `encode`: an object as the watch delivers it (parsed JSON) into what
//!   stores keep (a [`Document`]), for ~1 KB ConfigMaps and ~3 KB
//!   EndpointSlices;
//! - `index_and_apply`: computing keys and applying documents to a full store;
//! - `lookup`: partial-key and full-key lookups in a snapshot of 10k objects;
//! - `render`: one line per object over 10k ConfigMaps (the DESIGN target),
//!   and an HAProxy-style backend list over 1k / 10k / 100k EndpointSlices;
//! - `on_demand`: references applied per second; the bytes a reference keeps
//!   are printed first (counted by the allocator, which is instrumented in
//!   this binary: a few nanoseconds per allocation).
//!
//! `cargo bench --bench pipeline` (or `-- render` for one group).

use std::alloc::System;
use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube_template::config::Config;
use kube_template::object::document::Document;
use kube_template::pipeline;
use kube_template::store::AnyStore;
use kube_template::store::full::FullStore;
use kube_template::store::on_demand::OnDemandStore;
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "../tests/support/objects.rs"]
mod objects;

use objects::{config_map, uid};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// An EndpointSlice of about 3 KB: eight endpoints of one Service.
fn endpoint_slice(i: usize) -> Value {
    let namespace = format!("team-{:02}", i % 40);
    let service = format!("svc-{:05}", i / 2);
    let endpoints: Vec<Value> = (0..8)
        .map(|e| {
            json!({
                "addresses": [format!("10.{}.{}.{}", i % 250, (i / 250) % 250, e + 10)],
                "conditions": {"ready": e != 7, "serving": true, "terminating": false},
                "nodeName": format!("node-{:03}", (i + e) % 300),
                "zone": format!("zone-{}", e % 3),
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": format!("{service}-7d9f8c6b5-{e:05}"), "uid": uid(i * 8 + e)},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{}", if i.is_multiple_of(2) { "a1b2c" } else { "d3e4f" }),
            "namespace": namespace,
            "uid": uid(i),
            "resourceVersion": format!("{}", 500_000 + i),
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "generateName": format!("{service}-"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app.kubernetes.io/name": format!("app-{}", i % 100),
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": uid(i / 2), "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

const CONFIG_MAPS: &str = "  cms:\n    api_version: v1\n    kind: ConfigMap\n    index_by: [\"metadata.labels.app\", \"metadata.namespace\"]\n";
const SLICES: &str = "  slices:\n    api_version: discovery.k8s.io/v1\n    kind: EndpointSlice\n    index_by: [\"metadata.namespace\", \"metadata.labels['kubernetes.io/service-name']\"]\n";

/// One line per ConfigMap.
const LINES: &str = "{% for cm in resources.cms %}{{ cm.metadata.namespace }}/{{ cm.metadata.name }} {{ cm.data.mode }} {{ cm.metadata.labels.app }}\n{% endfor %}";

/// One HAProxy backend per EndpointSlice, one server line per ready endpoint.
const HAPROXY: &str = "{% for slice in resources.slices %}
backend {{ slice.metadata.namespace }}_{{ slice.metadata.labels['kubernetes.io/service-name'] }}_{{ slice.metadata.name }}
    balance roundrobin
{%- for ep in slice.endpoints if ep.conditions.ready %}
    server {{ ep.targetRef.name }} {{ ep.addresses[0] }}:{{ slice.ports[0].port }} check
{%- endfor %}
{% endfor %}";

fn config(template: &str) -> Config {
    let text = format!(
        "watched_resources:\n{CONFIG_MAPS}{SLICES}templates:\n  t:\n    inline: {}\n    path: t.txt\n",
        serde_json::to_string(template).unwrap()
    );
    Config::parse(&text, Path::new("bench.yaml"), Path::new(".")).unwrap()
}

fn encode(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(N as u64));
    for (what, make) in [
        ("configmaps", config_map as fn(usize) -> Value),
        ("endpointslices", endpoint_slice),
    ] {
        let objects: Vec<Value> = (0..N).map(make).collect();
        group.bench_function(format!("10k_{what}"), |b| {
            b.iter(|| objects.iter().map(Document::from_json).collect::<Vec<_>>())
        });
    }
    group.finish();
}

fn index_and_apply(c: &mut Criterion) {
    const N: usize = 10_000;
    let config = config("x");
    let mut group = c.benchmark_group("index_and_apply");
    group.throughput(Throughput::Elements(N as u64));
    for (what, store, make) in [
        ("configmaps", "cms", config_map as fn(usize) -> Value),
        ("endpointslices", "slices", endpoint_slice),
    ] {
        let documents: Vec<Document> = (0..N).map(|i| Document::from_json(&make(i))).collect();
        group.bench_function(format!("10k_{what}"), |b| {
            b.iter_batched(
                || documents.clone(),
                |documents| {
                    let mut store = FullStore::new(
                        config.watched_resources[store].indexer.clone(),
                        config.watched_resources[store].ignore_fields.clone(),
                    );
                    for document in documents {
                        store.apply(document);
                    }
                    // Returned, so that dropping the store is not measured.
                    store
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let config = config("x");
    let objects: Vec<Value> = (0..10_000).map(config_map).collect();
    let stores = pipeline::stores_from(&config, &objects);
    let AnyStore::Full(store) = &stores["cms"] else {
        unreachable!("cms is a full store")
    };
    let snapshot = store.snapshot();
    let mut group = c.benchmark_group("lookup_in_10k");
    group.bench_function("partial_key_100_objects", |b| {
        let key = ["app-42".to_string()];
        b.iter(|| black_box(snapshot.prefix(&key).count()))
    });
    group.bench_function("full_key_3_objects", |b| {
        let key = ["app-42".to_string(), "team-02".to_string()];
        b.iter(|| black_box(snapshot.prefix(&key).count()))
    });
    group.finish();
}

fn render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    group.sample_size(10);
    {
        let config = config(LINES);
        let renderer = pipeline::renderer(&config).unwrap();
        let objects: Vec<Value> = (0..10_000).map(config_map).collect();
        let snapshot = pipeline::snapshot(&pipeline::stores_from(&config, &objects));
        group.bench_function("lines_over_10k_configmaps", |b| {
            b.iter(|| black_box(renderer.render_all(&snapshot).unwrap()))
        });
    }
    let config = config(HAPROXY);
    let renderer = pipeline::renderer(&config).unwrap();
    for n in [1_000, 10_000, 100_000] {
        let objects: Vec<Value> = (0..n).map(endpoint_slice).collect();
        let snapshot = pipeline::snapshot(&pipeline::stores_from(&config, &objects));
        drop(objects);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("haproxy_over_{}k_endpointslices", n / 1000), |b| {
            b.iter(|| black_box(renderer.render_all(&snapshot).unwrap()))
        });
    }
    group.finish();
}

/// What an on-demand store's watch delivers: metadata only.
fn secret_metadata(i: usize) -> Document {
    Document::from_json(&json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "namespace": format!("team-{:02}", i % 50),
            "name": format!("tls-certificate-{i:06}"),
            "uid": uid(i),
            "resourceVersion": format!("{}", 1_000_000 + i),
            "labels": {"app": format!("app-{}", i % 100), "tier": "edge"},
        }
    }))
}

fn on_demand(c: &mut Criterion) {
    const MEASURED: usize = 1_000_000;
    const APPLIED: usize = 100_000;
    let text = "watched_resources:\n  secrets: {api_version: v1, kind: Secret, store: on-demand}\ntemplates:\n  t: {inline: x, path: t}\n";
    let config = Config::parse(text, Path::new("bench.yaml"), Path::new(".")).unwrap();
    let resource = &config.watched_resources["secrets"];

    let documents: Vec<Document> = (0..MEASURED).map(secret_metadata).collect();
    let region = Region::new(GLOBAL);
    let mut store = OnDemandStore::new(resource.indexer.clone(), resource.ignore_fields.clone());
    for document in documents.iter().cloned() {
        store.apply(document);
    }
    let change = region.change();
    let kept = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    println!(
        "on_demand: {:.1} bytes kept per reference ({MEASURED} references)",
        kept / MEASURED as f64
    );
    drop(store);

    let documents = &documents[..APPLIED];
    let mut group = c.benchmark_group("on_demand");
    group.throughput(Throughput::Elements(APPLIED as u64));
    group.bench_function("apply_100k_references", |b| {
        b.iter_batched(
            || documents.to_vec(),
            |documents| {
                let mut store = OnDemandStore::new(resource.indexer.clone(), resource.ignore_fields.clone());
                for document in documents {
                    store.apply(document);
                }
                store
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, encode, index_and_apply, lookup, render, on_demand);
criterion_main!(benches);
