//! Live mode end to end: the real `kube-template run` binary against the fake
//! Kubernetes API server (or a manifests directory), proving the guarantees of
//! DESIGN section 5 and the command line of section 6.
//!
//! Every test has an overall deadline and waits on conditions (a file's content,
//! a server counter, the process exiting) by polling them until a deadline;
//! nothing waits by sleeping a fixed time. The sidecar is killed when a test
//! ends, whether it passed or not.
//!
//! To see every version a render wrote, a test gives its template a `check`
//! that copies the staged file into `versions/` (checks run on each changed
//! file before it replaces the old one); to count action runs, an action
//! appends the output's first line (`count=N`) to `actions.log`.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::case::{CAPTURE_VERSIONS, CMS_TEMPLATE, Case, config_map, listing, server_until, within};
use support::fake_api::FakeApiServer;
use support::sidecar::{POLL, WAIT};
use tokio::time::{Instant, sleep};

/// Upper bound for a whole test; they normally take one to five seconds.
const TEST_DEADLINE: Duration = Duration::from_secs(40);

/// An action appending the output's first line (`count=N`) to `actions.log`.
const COUNT_ACTION: &str = r#"{command: ["sh", "-c", "head -n 1 out.txt >> actions.log"]}"#;

async fn within_deadline(test: impl Future<Output = ()>) {
    within(TEST_DEADLINE, test).await
}

fn labelled_config_map(name: &str, app: &str) -> Value {
    let mut object = config_map(name, "1");
    object["metadata"]["labels"] = json!({ "app": app });
    object
}

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": {"k": "dmFsdWU="},
    })
}

fn widget(name: &str, size: u32) -> Value {
    json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"size": size},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_updates_and_deletes_of_builtin_and_custom_kinds_show_up_in_the_file() {
    within_deadline(follow_creates_updates_and_deletes(&[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_streaming_lists_creates_updates_and_deletes_show_up_in_the_file() {
    within_deadline(follow_creates_updates_and_deletes(&["--streaming-lists"])).await;
}

/// A ConfigMap and a custom kind, created, updated and deleted; `args` go to the sidecar.
async fn follow_creates_updates_and_deletes(args: &[&str]) {
    let server = FakeApiServer::start().await;
    server.register_kind("example.com", "v1", "Widget", "widgets", true);
    server.apply(config_map("a", "1"));
    server.apply(widget("w1", 1));
    let case = Case::new(
        r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap}
  widgets: {api_version: example.com/v1, kind: Widget}
templates:
  out:
    path: out.txt
    inline: |
      {% for o in resources.cms -%}
      cm {{ o.metadata.name }}={{ o.data.v }}
      {% endfor -%}
      {% for o in resources.widgets -%}
      widget {{ o.metadata.namespace }}/{{ o.metadata.name }} size={{ o.spec.size }}
      {% endfor -%}
render:
  wait: {min: 10ms, max: 100ms}
"#,
    );
    let sidecar = case.spawn_against(&server, args);
    sidecar
        .until_file(&case, "out.txt", "cm a=1\nwidget default/w1 size=1\n")
        .await;

    server.apply(config_map("b", "2"));
    server.apply(widget("w2", 2));
    sidecar
        .until_file(
            &case,
            "out.txt",
            "cm a=1\ncm b=2\nwidget default/w1 size=1\nwidget default/w2 size=2\n",
        )
        .await;

    server.apply(config_map("a", "10"));
    server.apply(widget("w1", 5));
    sidecar
        .until_file(
            &case,
            "out.txt",
            "cm a=10\ncm b=2\nwidget default/w1 size=5\nwidget default/w2 size=2\n",
        )
        .await;

    server.delete("v1", "ConfigMap", "default", "b").unwrap();
    server.delete("example.com/v1", "Widget", "default", "w2").unwrap();
    sidecar
        .until_file(&case, "out.txt", "cm a=10\nwidget default/w1 size=5\n")
        .await;
    if args.contains(&"--streaming-lists") {
        assert_eq!(server.list_count("configmaps") + server.list_count("widgets"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_rendered_before_every_watch_finished_its_initial_list() {
    within_deadline(async {
        const SLOW_LIST: Duration = Duration::from_millis(2000);
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(secret("s1"));
        server.apply(secret("s2"));
        server.set_list_delay("secrets", SLOW_LIST);
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
  secrets: {{api_version: v1, kind: Secret}}
templates:
  out:
    path: out.txt
    check: {CAPTURE_VERSIONS}
    inline: |
{CMS_TEMPLATE}      {{% for o in resources.secrets -%}}
      secret {{{{ o.metadata.name }}}}
      {{% endfor -%}}
render:
  wait: {{min: 10ms, max: 100ms}}
"#
        ));
        // The Secrets LIST arrives after the last look that did not see it, so
        // it cannot be answered before that look plus its delay.
        let mut not_yet = Instant::now();
        let deadline = not_yet + WAIT;
        let sidecar = case.spawn_against(&server, &[]);
        loop {
            let looked = Instant::now();
            if server.list_count("secrets") > 0 {
                break;
            }
            not_yet = looked;
            assert!(looked < deadline, "no Secrets LIST\n{}", sidecar.log());
            sleep(Duration::from_millis(5)).await;
        }
        let answered_at_the_earliest = not_yet + SLOW_LIST;

        // The ConfigMaps are listed and watched, and change, while the Secrets
        // are still being listed: still nothing may be rendered.
        server_until(&server, &sidecar, "the ConfigMap watch", |s| {
            s.open_watches("configmaps") == 1
        })
        .await;
        server.apply(config_map("b", "2"));
        let margin = answered_at_the_earliest.saturating_duration_since(Instant::now());
        assert!(
            margin > Duration::from_millis(300),
            "the ConfigMaps were watched only {margin:?} before the Secrets could be listed; too slow for this test"
        );
        while Instant::now() + Duration::from_millis(50) < answered_at_the_earliest {
            assert!(
                !case.path("out.txt").exists(),
                "rendered {:?} before the Secrets could be listed\n{}",
                answered_at_the_earliest - Instant::now(),
                sidecar.log()
            );
            sleep(POLL).await;
        }

        let everything = "count=2\na=1\nb=2\nsecret s1\nsecret s2\n";
        sidecar.until_file(&case, "out.txt", everything).await;
        let versions = case.recorded("versions");
        let first = &versions[0];
        for line in ["a=1", "secret s1", "secret s2"] {
            assert!(
                first.lines().any(|l| l == line),
                "the first render lacks `{line}`:\n{first}"
            );
        }
        assert_eq!(server.list_count("secrets"), 1);
    })
    .await;
}

/// The ConfigMaps part of a rendered version: the number it printed and the
/// `name=value` lines, checked to agree.
fn configmaps_of(version: &str) -> Vec<String> {
    let mut lines = version.lines();
    let ticks = lines.next().unwrap_or_default();
    assert!(ticks.starts_with("ticks="), "unexpected version:\n{version}");
    let count: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in version:\n{version}"));
    let objects: Vec<String> = lines.map(str::to_owned).collect();
    assert_eq!(count, objects.len(), "the count disagrees with the objects:\n{version}");
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_never_renders_a_half_loaded_store_and_drops_objects_deleted_in_the_gap() {
    within_deadline(async {
        const OBJECTS: usize = 300;
        let server = FakeApiServer::start().await;
        let name = |i: usize| format!("cm-{i:03}");
        for i in 0..OBJECTS {
            server.apply(config_map(&name(i), "1"));
        }
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
  ticks: {{api_version: v1, kind: Secret}}
templates:
  out:
    path: out.txt
    check: {CAPTURE_VERSIONS}
    inline: |
      ticks={{{{ resources.ticks | length }}}}
{CMS_TEMPLATE}render:
  wait: {{min: 0ms, max: 20ms}}
"#
        ));
        let state = |deleted: Option<usize>, updated: Option<usize>, extra: Option<usize>| -> Vec<String> {
            (0..OBJECTS)
                .chain(extra)
                .filter(|i| Some(*i) != deleted)
                .map(|i| format!("{}={}", name(i), if Some(i) == updated { "2" } else { "1" }))
                .collect()
        };
        let before = state(None, None, None);
        let after_relist = state(Some(7), Some(100), None);
        let after_resume = state(Some(7), Some(100), Some(OBJECTS));
        let file = |ticks: usize, objects: &[String]| {
            format!("ticks={ticks}\ncount={}\n{}\n", objects.len(), objects.join("\n"))
        };

        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", &file(0, &before)).await;

        // Changes the watches never see: they are stalled, then the history is
        // compacted and they are dropped, so they resume from a version that
        // is gone (410) and must list again. That re-list is slow, and a
        // change of another kind in the meantime makes a render while it runs.
        server.set_list_delay("configmaps", Duration::from_millis(1200));
        server.stall_watches(true);
        server.delete("v1", "ConfigMap", "default", &name(7)).unwrap();
        server.apply(config_map(&name(100), "2"));
        server.compact();
        server.drop_watches();
        server.stall_watches(false);
        server_until(&server, &sidecar, "the ConfigMaps re-list", |s| {
            s.list_count("configmaps") >= 2
        })
        .await;
        server_until(&server, &sidecar, "the Secrets re-list and watch", |s| {
            s.list_count("secrets") >= 2 && s.open_watches("secrets") == 1
        })
        .await;
        server.apply(secret("tick"));
        sidecar.until_file(&case, "out.txt", &file(1, &after_relist)).await;

        // The watch goes on after the re-list.
        server.apply(config_map(&name(OBJECTS), "1"));
        sidecar.until_file(&case, "out.txt", &file(1, &after_resume)).await;

        let versions = case.recorded("versions");
        for version in &versions {
            let objects = configmaps_of(version);
            assert!(
                objects == before || objects == after_relist || objects == after_resume,
                "a render saw a store that is neither the old nor the new listing ({} objects):\n{}",
                objects.len(),
                version.lines().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        let with_tick: Vec<usize> = versions
            .iter()
            .filter(|v| v.starts_with("ticks=1"))
            .map(|v| configmaps_of(v).len())
            .collect();
        assert!(!with_tick.is_empty());
        eprintln!(
            "{} versions; ConfigMaps in the versions with the tick: {with_tick:?}",
            versions.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_inside_wait_min_gives_one_render_and_one_action_run() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("base", "1"));
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    check: {CAPTURE_VERSIONS}
    inline: |
{CMS_TEMPLATE}actions:
  - {COUNT_ACTION}
render:
  wait: {{min: 500ms, max: 5s}}
"#
        ));
        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", &listing(&[("base", "1")])).await;
        sidecar
            .until("the first action run", || (case.action_runs().len() == 1).then_some(()))
            .await;

        // Five concurrent creates, spread over 300ms so that the events do not
        // simply arrive together: each comes well within `min` of the last.
        let creates = (0..5u32).map(|i| {
            let server = &server;
            async move {
                sleep(Duration::from_millis(75) * i).await;
                server.apply(config_map(&format!("burst-{i}"), "1"));
            }
        });
        futures::future::join_all(creates).await;
        let mut objects = vec![("base", "1")];
        let names: Vec<String> = (0..5).map(|i| format!("burst-{i}")).collect();
        objects.extend(names.iter().map(|n| (n.as_str(), "1")));
        sidecar.until_file(&case, "out.txt", &listing(&objects)).await;

        // A later change renders on its own; once its action ran, every render
        // and action run of the burst is behind us.
        server.apply(config_map("later", "1"));
        objects.push(("later", "1"));
        sidecar.until_file(&case, "out.txt", &listing(&objects)).await;
        sidecar
            .until("the action run of the later change", || {
                (case.action_runs().last().map(String::as_str) == Some("count=7")).then_some(())
            })
            .await;

        assert_eq!(case.action_runs(), ["count=1", "count=6", "count=7"]);
        let written: Vec<String> = case
            .recorded("versions")
            .iter()
            .map(|v| v.lines().next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(written, ["count=1", "count=6", "count=7"], "one write per render");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_over_the_same_kind_and_selectors_share_one_list_and_one_watch() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(labelled_config_map("a", "web"));
        server.apply(labelled_config_map("b", "web"));
        server.apply(labelled_config_map("c", "other"));
        let case = Case::new(
            r#"
watched_resources:
  by_name:
    api_version: v1
    kind: ConfigMap
    label_selector: "app=web"
    index_by: ["metadata.name"]
  by_namespace:
    api_version: v1
    kind: ConfigMap
    label_selector: "app=web"
    index_by: ["metadata.namespace", "metadata.name"]
templates:
  out:
    path: out.txt
    inline: |
      {{ resources.by_name | map(attribute="metadata.name") | join(",") }}
      {{ resources.by_namespace | map(attribute="metadata.name") | join(",") }}
render:
  wait: {min: 10ms, max: 100ms}
"#,
        );
        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", "a,b\na,b\n").await;
        server_until(&server, &sidecar, "the ConfigMap watch", |s| {
            s.open_watches("configmaps") >= 1
        })
        .await;

        server.apply(labelled_config_map("d", "web"));
        sidecar.until_file(&case, "out.txt", "a,b,d\na,b,d\n").await;
        assert_eq!(server.list_count("configmaps"), 1, "one LIST for both entries");
        assert_eq!(server.watch_count("configmaps"), 1, "one WATCH for both entries");
        assert_eq!(server.open_watches("configmaps"), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_server_errors_are_survived_and_the_file_converges() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(config_map("c", "1"));
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    inline: |
{CMS_TEMPLATE}render:
  wait: {{min: 10ms, max: 100ms}}
"#
        ));
        let sidecar = case.spawn_against(&server, &[]);
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "1"), ("c", "1")]))
            .await;
        server_until(&server, &sidecar, "the watch", |s| s.open_watches("configmaps") == 1).await;

        // A watch ended by the server: the change made meanwhile arrives on the new one.
        server.drop_watches();
        server.apply(config_map("a", "2"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("c", "1")]))
            .await;
        server_until(&server, &sidecar, "the watch to be back", |s| {
            s.watch_count("configmaps") >= 2 && s.open_watches("configmaps") == 1
        })
        .await;

        // Dropped again, and the next two attempts to watch get 500s.
        server.fail_next(2, 500);
        server.drop_watches();
        server.apply(config_map("a", "3"));
        server.apply(config_map("b", "1"));
        server.delete("v1", "ConfigMap", "default", "c").unwrap();
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "3"), ("b", "1")]))
            .await;
        assert!(
            server.watch_count("configmaps") >= 5,
            "two failed watches, then one that worked"
        );
        assert_eq!(
            server.list_count("configmaps"),
            1,
            "the watch resumed from its resourceVersion instead of listing again"
        );

        server.apply(config_map("d", "1"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "3"), ("b", "1"), ("d", "1")]))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_and_a_failing_check_keep_the_sidecar_running_and_the_previous_file() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "good"));
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    check: ["sh", "-c", "if grep -q BAD '{{file}}'; then touch rejected; exit 1; fi"]
    inline: |
{CMS_TEMPLATE}actions:
  - {{command: ["sh", "-c", "echo reload failed >&2; exit 3"]}}
  - {{command: ["sh", "-c", "cp out.txt installed/$(ls installed | wc -l)"]}}
render:
  wait: {{min: 10ms, max: 100ms}}
"#
        ));
        let mut sidecar = case.spawn_against(&server, &[]);
        let good = listing(&[("a", "good")]);
        sidecar.until_file(&case, "out.txt", &good).await;
        // The second action runs although the first failed, and the process lives on.
        sidecar
            .until("the second action", || {
                (case.recorded("installed").len() == 1).then_some(())
            })
            .await;
        assert!(sidecar.is_running(), "a failing action stopped the sidecar");

        server.apply(config_map("b", "BAD"));
        sidecar
            .until("the check to reject the file", || {
                case.path("rejected").exists().then_some(())
            })
            .await;
        assert_eq!(
            case.read("out.txt").as_deref(),
            Some(good.as_str()),
            "the old file stays"
        );
        assert!(sidecar.is_running(), "a failing check stopped the sidecar");

        server.apply(config_map("b", "fine"));
        let fixed = listing(&[("a", "good"), ("b", "fine")]);
        sidecar.until_file(&case, "out.txt", &fixed).await;
        sidecar
            .until("the action after the fix", || {
                (case.recorded("installed").len() == 2).then_some(())
            })
            .await;
        assert_eq!(
            case.recorded("installed"),
            [good, fixed],
            "a rejected file was installed"
        );
        assert!(sidecar.is_running());
    })
    .await;
}

/// A config whose template lists `cms`, with [`COUNT_ACTION`].
fn counting_config(template: &str) -> String {
    format!(
        r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    inline: |
{template}actions:
  - {COUNT_ACTION}
render:
  wait: {{min: 10ms, max: 100ms}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_renders_after_the_initial_sync_runs_the_actions_and_exits_zero() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(config_map("b", "2"));
        let case = Case::new(&counting_config(CMS_TEMPLATE));
        let mut sidecar = case.spawn_against(&server, &["--once"]);
        let status = sidecar.exit(WAIT).await;
        assert!(status.success(), "{status}\n{}", sidecar.log());
        assert_eq!(case.read("out.txt"), Some(listing(&[("a", "1"), ("b", "2")])));
        assert_eq!(case.action_runs(), ["count=2"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_non_zero_when_the_render_fails_and_writes_nothing() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&counting_config(
            "      {% for o in resources.cms %}{{ o.data.no_such_key }}{% endfor %}\n",
        ));
        let mut sidecar = case.spawn_against(&server, &["--once"]);
        let status = sidecar.exit(WAIT).await;
        assert!(!status.success(), "a failed render exited {status}");
        assert!(
            sidecar.log().contains("undefined"),
            "the error is not reported:\n{}",
            sidecar.log()
        );
        assert!(!case.path("out.txt").exists());
        assert!(case.action_runs().is_empty(), "an action ran after a failed render");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_promptly() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&counting_config(CMS_TEMPLATE));
        let mut sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", &listing(&[("a", "1")])).await;
        server_until(&server, &sidecar, "the watch", |s| s.open_watches("configmaps") == 1).await;

        sidecar.signal("TERM");
        let status = sidecar.exit(Duration::from_secs(3)).await;
        assert!(status.success(), "SIGTERM exited {status}\n{}", sidecar.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_initial_sync_exits_zero_without_rendering() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.set_list_delay("configmaps", Duration::from_secs(60));
        let case = Case::new(&counting_config(CMS_TEMPLATE));
        let mut sidecar = case.spawn_against(&server, &[]);
        server_until(&server, &sidecar, "the initial LIST", |s| {
            s.list_count("configmaps") == 1
        })
        .await;

        sidecar.signal("TERM");
        let status = sidecar.exit(Duration::from_secs(3)).await;
        assert!(status.success(), "SIGTERM exited {status}\n{}", sidecar.log());
        assert!(!case.path("out.txt").exists());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_variable_with_several_files_is_merged_as_kubectl_does() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&counting_config(CMS_TEMPLATE));
        case.write(
            "extra-kubeconfig",
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
        );
        let list = std::env::join_paths([server.kubeconfig_path(), case.path("extra-kubeconfig").as_path()]).unwrap();
        let mut sidecar = case.spawn_with_env(&["--once"], &[("KUBECONFIG", list.as_os_str())]);
        let status = sidecar.exit(WAIT).await;
        assert!(status.success(), "{status}\n{}", sidecar.log());
        assert_eq!(case.read("out.txt"), Some(listing(&[("a", "1")])));
    })
    .await;
}

/// A config whose `check` takes a second over a file containing `SLOW`; it
/// writes its process id to `checking` when it starts.
fn slow_check_config() -> String {
    format!(
        r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    check: ["sh", "-c", "if grep -q SLOW '{{file}}'; then echo $$ > checking; exec sleep 1; fi"]
    inline: |
{CMS_TEMPLATE}actions:
  - {COUNT_ACTION}
render:
  wait: {{min: 10ms, max: 100ms}}
"#
    )
}

/// The process id of the slow check, once it started.
fn slow_check_pid(case: &Case) -> Option<u32> {
    case.read("checking")?.trim().parse().ok()
}

/// Kills the slow check when the test ends: a forced exit leaves it running.
struct KillSlowCheck<'a>(&'a Case);

impl Drop for KillSlowCheck<'_> {
    fn drop(&mut self) {
        if let Some(pid) = slow_check_pid(self.0) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_render_lets_it_finish_then_exits_zero() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&slow_check_config());
        let mut sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", &listing(&[("a", "1")])).await;

        server.apply(config_map("b", "SLOW"));
        sidecar.until("the slow check to start", || slow_check_pid(&case)).await;
        sidecar.signal("TERM");
        let status = sidecar.exit(Duration::from_secs(5)).await;
        assert!(status.success(), "SIGTERM exited {status}\n{}", sidecar.log());
        assert_eq!(
            case.read("out.txt"),
            Some(listing(&[("a", "1"), ("b", "SLOW")])),
            "the render in flight was not finished"
        );
        assert_eq!(case.action_runs(), ["count=1", "count=2"], "its actions did not run");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_even_during_a_render() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&slow_check_config().replace("sleep 1", "sleep 20"));
        let _check = KillSlowCheck(&case);
        let mut sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", &listing(&[("a", "1")])).await;

        server.apply(config_map("b", "SLOW"));
        sidecar.until("the slow check to start", || slow_check_pid(&case)).await;
        sidecar.signal("TERM");
        sidecar
            .until("the first signal to be noticed", || {
                sidecar.log().contains("shutting down").then_some(())
            })
            .await;
        sidecar.signal("TERM");
        let status = sidecar.exit(Duration::from_secs(3)).await;
        assert!(!status.success(), "a forced exit reported success");
        assert_eq!(case.read("out.txt"), Some(listing(&[("a", "1")])), "the old file stays");
    })
    .await;
}

/// Replaces a manifest at once, as editors and `kubectl` tooling do (a hidden
/// temp file renamed over it), so the sidecar never reads half a file.
fn write_manifest(dir: &Path, name: &str, objects: &[Value]) {
    let text: Vec<String> = objects.iter().map(|o| serde_json::to_string(o).unwrap()).collect();
    let temp = dir.join(format!(".{name}.tmp"));
    fs::write(&temp, text.join("\n---\n")).unwrap();
    fs::rename(&temp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_dir_live_mode_follows_edited_added_and_deleted_manifests() {
    within_deadline(async {
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    inline: |
{CMS_TEMPLATE}render:
  wait: {{min: 10ms, max: 100ms}}
"#
        ));
        let manifests = case.path("manifests");
        fs::create_dir(&manifests).unwrap();
        write_manifest(&manifests, "a.yaml", &[config_map("a", "1"), config_map("a2", "1")]);
        write_manifest(&manifests, "b.yaml", &[config_map("b", "1")]);
        let sidecar = case.spawn(&[OsStr::new("--from"), manifests.as_os_str()]);
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "1"), ("a2", "1"), ("b", "1")]))
            .await;

        // Edited: one object modified, one gone from the file.
        write_manifest(&manifests, "a.yaml", &[config_map("a", "2")]);
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("b", "1")]))
            .await;

        // Added, in a new subdirectory.
        fs::create_dir(manifests.join("more")).unwrap();
        write_manifest(&manifests.join("more"), "c.yaml", &[config_map("c", "1")]);
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("b", "1"), ("c", "1")]))
            .await;

        // Deleted.
        fs::remove_file(manifests.join("b.yaml")).unwrap();
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("c", "1")]))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_non_zero_when_a_signal_comes_before_the_initial_sync() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.set_list_delay("configmaps", Duration::from_secs(60));
        let case = Case::new(&counting_config(CMS_TEMPLATE));
        let mut sidecar = case.spawn_against(&server, &["--once"]);
        server_until(&server, &sidecar, "the initial list to be asked for", |s| {
            s.list_count("configmaps") >= 1
        })
        .await;
        sidecar.signal("TERM");
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(1), "{status}\n{}", sidecar.log());
        assert!(sidecar.log().contains("before the first render"), "{}", sidecar.log());
        assert!(!case.path("out.txt").exists());
        assert!(case.action_runs().is_empty(), "an action ran without a render");
    })
    .await;
}

/// Whether the fake server's update count of ConfigMaps stays at `count`
/// for `window` (an idle cluster: nothing may happen).
async fn configmap_updates_stay(server: &FakeApiServer, count: u64, window: Duration) -> bool {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if server.update_count("configmaps") != count {
            return false;
        }
        sleep(POLL).await;
    }
    server.update_count("configmaps") == count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_config_map_watched_by_its_writer_causes_no_further_renders() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        // As a previous run left it.
        let mut status = config_map("kube-template-status", "");
        status["metadata"]["annotations"] = json!({"kube-template/last-render-result": "success"});
        server.apply(status);
        let case = Case::new(
            r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap, namespaces: [default]}
  refs: {api_version: v1, kind: ConfigMap, store: on-demand}
templates:
  out:
    path: out.txt
    inline: "{{ resources.cms | length }} {{ resources.refs | length }}"
render:
  wait: {min: 10ms, max: 50ms}
status: {config_map: kube-template-status, namespace: default}
"#,
        );
        let sidecar = case.spawn_against(&server, &[]);
        sidecar.until_file(&case, "out.txt", "2 2").await;
        server_until(&server, &sidecar, "the first status write", |s| {
            s.update_count("configmaps") >= 1
        })
        .await;
        // Before the fix a write came every few milliseconds.
        assert!(
            configmap_updates_stay(&server, 1, Duration::from_secs(2)).await,
            "{} status writes on an idle cluster\n{}",
            server.update_count("configmaps"),
            sidecar.log()
        );

        // Real changes, to the status ConfigMap's data too, still render.
        server.apply(config_map("b", "2"));
        sidecar.until_file(&case, "out.txt", "3 3").await;
        server_until(&server, &sidecar, "the second status write", |s| {
            s.update_count("configmaps") >= 2
        })
        .await;
        let mut changed = server
            .get_object("v1", "ConfigMap", "default", "kube-template-status")
            .unwrap();
        changed["data"]["v"] = json!("edited");
        server.apply(changed);
        server_until(&server, &sidecar, "a status write for the edit", |s| {
            s.update_count("configmaps") >= 3
        })
        .await;
        assert!(
            configmap_updates_stay(&server, 3, Duration::from_secs(1)).await,
            "{} status writes",
            server.update_count("configmaps")
        );
    })
    .await;
}
