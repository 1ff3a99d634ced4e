//! Objects of a realistic size for the memory test and the pipeline
//! benchmarks (which include this file), so both measure the same thing.

use serde_json::{Value, json};

/// A uid as the API server gives one, unique per `i`.
pub fn uid(i: usize) -> String {
    format!("{i:08x}-1d4b-4f5e-9a51-0c7f8a3b2d01")
}

/// A ConfigMap of about 1 KB, with the metadata a server adds.
pub fn config_map(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("config-{i:06}"),
            "namespace": format!("team-{:02}", i % 40),
            "uid": uid(i),
            "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {"app": format!("app-{}", i % 100), "tier": "backend"},
            "annotations": {"owner": "platform-team@example.com"},
        },
        "data": {
            "settings.json": "x".repeat(700),
            "mode": "production",
        }
    })
}
