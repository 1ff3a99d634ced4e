//! What the watches keep of an object, decoded straight from the API's JSON:
//! `ignore_fields` left out, `apiVersion` and `kind` present on list items of
//! built-in kinds (which come without them), the same through listings and
//! watch events, paged and streaming lists.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::case::{Case, within};
use support::fake_api::FakeApiServer;

const TEST_DEADLINE: Duration = Duration::from_secs(40);

fn config_map(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": "ünïcode ✓"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:data": {}}}],
        },
        "data": {"v": value, "secret": "hidden", "n": "-0"},
    })
}

const CONFIG: &str = r#"
watched_resources:
  cms:
    api_version: v1
    kind: ConfigMap
    ignore_fields: [metadata.managedFields, data.secret]
templates:
  out:
    path: out.txt
    inline: |
      {% for o in resources.cms -%}
      {{ o.apiVersion }} {{ o.kind }} {{ o.metadata.name }} v={{ o.data.v }} app={{ o.metadata.labels.app }} managed={{ o.metadata.managedFields is defined }} secret={{ o.data.secret is defined }} keys={{ o.data | list | join(",") }}
      {% endfor -%}
render:
  wait: {min: 10ms, max: 100ms}
"#;

fn line(name: &str, value: &str) -> String {
    format!("v1 ConfigMap {name} v={value} app=ünïcode ✓ managed=False secret=False keys=n,v\n")
}

async fn listed_and_watched_objects_keep_what_the_stores_keep(args: &[&str]) {
    let server = FakeApiServer::start().await;
    server.apply(config_map("a", "1"));
    let case = Case::new(CONFIG);
    let sidecar = case.spawn_against(&server, args);
    sidecar.until_file(&case, "out.txt", &line("a", "1")).await;

    server.apply(config_map("b", "2"));
    server.apply(config_map("a", "3"));
    sidecar
        .until_file(&case, "out.txt", &(line("a", "3") + &line("b", "2")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_and_events_leave_out_ignore_fields_and_carry_their_kind() {
    within(TEST_DEADLINE, listed_and_watched_objects_keep_what_the_stores_keep(&[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_leave_out_ignore_fields_and_carry_their_kind() {
    within(
        TEST_DEADLINE,
        listed_and_watched_objects_keep_what_the_stores_keep(&["--streaming-lists"]),
    )
    .await;
}
