//! Speed of the pure core (DESIGN section 9): indexing and applying objects
//! into a full store, and rendering a template over 10k objects.
//!
//! `cargo bench --bench pipeline`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_template::config::Config;
use kube_template::pipeline;
use kube_template::render::Renderer;
use kube_template::store::full::FullStore;
use serde_json::{Value, json};

/// A ConfigMap of about 1 KB.
fn config_map(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("config-{i:06}"),
            "namespace": format!("team-{:02}", i % 40),
            "uid": format!("{:08x}-1d4b-4f5e-9a51-0c7f8a3b2d01", i),
            "resourceVersion": format!("{}", 100_000 + i),
            "labels": {"app": format!("app-{}", i % 100), "tier": "backend"},
            "annotations": {"owner": "platform-team@example.com"},
        },
        "data": {
            "settings.json": "x".repeat(700),
            "mode": "production",
        }
    })
}

fn config(template: &str) -> Config {
    let text = format!(
        "watched_resources:\n  cms:\n    api_version: v1\n    kind: ConfigMap\n    index_by: [\"metadata.labels.app\", \"metadata.namespace\"]\ntemplates:\n  t:\n    inline: {}\n    path: t.txt\n",
        serde_json::to_string(template).unwrap()
    );
    Config::parse(&text, Path::new("bench.yaml"), Path::new(".")).unwrap()
}

fn apply(c: &mut Criterion) {
    const N: usize = 10_000;
    let config = config("x");
    let objects: Vec<Value> = (0..N).map(config_map).collect();
    let mut group = c.benchmark_group("full_store");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("index_and_apply_10k_configmaps", |b| {
        b.iter_batched(
            || objects.clone(),
            |objects| {
                let mut store = FullStore::for_resource(&config.watched_resources["cms"]);
                for object in objects {
                    store.apply(object);
                }
                // Returned, so that dropping the store is not measured.
                store
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn render(c: &mut Criterion) {
    let template = "{% for cm in resources.cms %}{{ cm.metadata.namespace }}/{{ cm.metadata.name }} {{ cm.data.mode }} {{ cm.metadata.labels.app }}\n{% endfor %}";
    let config = config(template);
    let renderer = Renderer::new(&config).unwrap();
    let objects: Vec<Value> = (0..10_000).map(config_map).collect();
    let stores = pipeline::stores_from(&config, &objects);
    let snapshot = pipeline::snapshot(&stores);
    c.bench_function("render_template_over_10k_objects", |b| {
        b.iter(|| black_box(renderer.render_all(&snapshot).unwrap()))
    });
}

criterion_group!(benches, apply, render);
criterion_main!(benches);
