//! `namespace_selector` end to end: the real binary against the fake API
//! server, following Namespaces as they are created, relabelled and deleted;
//! and offline (`render --from`), where the Namespaces are the manifests'.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::case::{Case, within};
use support::fake_api::FakeApiServer;

const TEST_DEADLINE: Duration = Duration::from_secs(40);

const CONFIG: &str = r#"
watched_resources:
  cms:
    api_version: v1
    kind: ConfigMap
    namespace_selector: "team=payments"
templates:
  out:
    path: out.txt
    inline: |
      count={{ resources.cms | length }}
      {% for o in resources.cms -%}
      {{ o.metadata.namespace }}/{{ o.metadata.name }}
      {% endfor -%}
render:
  wait: {min: 10ms, max: 100ms}
"#;

fn namespace(name: &str, team: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"team": team}},
    })
}

fn config_map(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"v": "1"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_follow_namespaces_into_and_out_of_the_selection() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(namespace("pay-a", "payments"));
        server.apply(namespace("search", "search"));
        server.apply(config_map("pay-a", "one"));
        server.apply(config_map("search", "two"));
        server.apply(config_map("pay-b", "three"));
        let case = Case::new(CONFIG);
        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", "count=1\npay-a/one\n").await;

        // Created: a namespace whose objects exist already enters the selection.
        server.apply(namespace("pay-b", "payments"));
        sidecar
            .until_file(&case, "out.txt", "count=2\npay-a/one\npay-b/three\n")
            .await;

        // Objects in a selected namespace come and go as usual.
        server.apply(config_map("pay-b", "four"));
        sidecar
            .until_file(&case, "out.txt", "count=3\npay-a/one\npay-b/four\npay-b/three\n")
            .await;

        // Relabelled into the selection.
        server.apply(namespace("search", "payments"));
        sidecar
            .until_file(
                &case,
                "out.txt",
                "count=4\npay-a/one\npay-b/four\npay-b/three\nsearch/two\n",
            )
            .await;

        // Relabelled out of it: its objects go at once.
        server.apply(namespace("pay-a", "search"));
        sidecar
            .until_file(&case, "out.txt", "count=3\npay-b/four\npay-b/three\nsearch/two\n")
            .await;

        // Deleted: its objects go too (the fake keeps them; a cluster would
        // delete them, later).
        server.delete("v1", "Namespace", "", "pay-b").unwrap();
        sidecar.until_file(&case, "out.txt", "count=1\nsearch/two\n").await;

        // A namespace that left stays out: its objects' changes are not seen.
        server.apply(config_map("pay-a", "five"));
        server.apply(config_map("search", "six"));
        sidecar
            .until_file(&case, "out.txt", "count=2\nsearch/six\nsearch/two\n")
            .await;

        // Back in: listed again.
        server.apply(namespace("pay-a", "payments"));
        sidecar
            .until_file(
                &case,
                "out.txt",
                "count=4\npay-a/five\npay-a/one\nsearch/six\nsearch/two\n",
            )
            .await;
        // One shared watch of Namespaces, metadata only.
        assert_eq!(server.open_watches("namespaces"), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_matching_no_namespace_renders_nothing_and_namespaces_intersect() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(namespace("pay-a", "payments"));
        server.apply(namespace("pay-b", "payments"));
        server.apply(config_map("pay-a", "one"));
        server.apply(config_map("pay-b", "two"));
        let case = Case::new(
            r#"
watched_resources:
  cms:
    api_version: v1
    kind: ConfigMap
    namespaces: [pay-b, other]
    namespace_selector: "team in (payments)"
  none:
    api_version: v1
    kind: ConfigMap
    namespace_selector: "team=nobody"
templates:
  out:
    path: out.txt
    inline: |
      none={{ resources.none | length }}
      {% for o in resources.cms -%}
      {{ o.metadata.namespace }}/{{ o.metadata.name }}
      {% endfor -%}
render:
  wait: {min: 10ms, max: 100ms}
"#,
        );
        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", "none=0\npay-b/two\n").await;
        // Labelled in, but not among `namespaces`: still out.
        server.apply(namespace("third", "payments"));
        server.apply(config_map("third", "x"));
        server.apply(namespace("other", "payments"));
        server.apply(config_map("other", "three"));
        sidecar
            .until_file(&case, "out.txt", "none=0\nother/three\npay-b/two\n")
            .await;
    })
    .await;
}

#[test]
fn render_from_manifests_selects_by_the_namespaces_given() {
    let case = Case::new(CONFIG);
    let manifests = [
        namespace("pay-a", "payments"),
        namespace("search", "search"),
        config_map("pay-a", "one"),
        config_map("search", "two"),
        config_map("unknown", "three"),
    ];
    let text: String = manifests
        .iter()
        .map(|m| format!("---\n{}\n", serde_json::to_string(m).unwrap()))
        .collect();
    case.write("manifests.yaml", &text);
    let run = |manifests: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-template"))
            .args(["render", "-c", "config.yaml", "--from", manifests, "--out", "rendered"])
            .current_dir(case.path(""))
            .output()
            .expect("the binary runs")
    };
    let output = run("manifests.yaml");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(case.read("rendered/out.txt").as_deref(), Some("count=1\npay-a/one\n"));

    // No Namespace objects given: no namespace matches, nothing is selected.
    case.write(
        "objects.yaml",
        &serde_json::to_string(&config_map("pay-a", "one")).unwrap(),
    );
    let output = run("objects.yaml");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(case.read("rendered/out.txt").as_deref(), Some("count=0\n"));
}
