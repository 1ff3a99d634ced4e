//! Operations: the admin endpoints of `kube-template run` against the fake API
//! server — readiness, health under a stalled watch, metrics, and a status
//! page that never shows Secret data.

mod support;

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::case::{Case, within};
use support::fake_api::FakeApiServer;
use support::http::http_get;
use support::sidecar::Sidecar;

const DEADLINE: Duration = Duration::from_secs(30);

async fn within_deadline(test: impl Future<Output = ()>) {
    within(DEADLINE, test).await
}

/// Starts `run` in `case` against `server` and waits for the admin server to
/// listen; returns the sidecar and the admin address.
async fn start(case: &Case, server: &FakeApiServer, extra: &[&str]) -> (Sidecar, String) {
    let sidecar = case.spawn_against(server, extra);
    let admin = sidecar.admin().await;
    (sidecar, admin)
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "default", "name": name}, "data": {"k": name}})
}

const CONFIG: &str = r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap}
templates:
  out:
    inline: "{{ resources.cms | length }}\n"
    path: out.txt
render:
  wait: {min: 10ms, max: 100ms}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_before_the_initial_sync_and_true_after() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a"));
        server.set_list_delay("configmaps", Duration::from_secs(2));
        let case = Case::new(CONFIG);
        let (sidecar, admin) = start(&case, &server, &[]).await;
        let (code, body) = http_get(&admin, "/readyz");
        assert_eq!(code, 503, "{body}");
        sidecar
            .until_holds("/readyz naming the pending list", || {
                let (code, body) = http_get(&admin, "/readyz");
                assert_eq!(code, 503, "ready before the slow list finished: {body}");
                body.contains("watch v1/ConfigMap: initial list not done")
            })
            .await;
        assert!(case.read("out.txt").is_none(), "no render before the initial list");
        sidecar.until_status(&admin, "/readyz", 200).await;
        assert_eq!(case.read("out.txt").as_deref(), Some("1\n"));
        assert_eq!(http_get(&admin, "/healthz").0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_failed_render_with_its_template_and_line() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let config = CONFIG.replace("{{ resources.cms | length }}", "{{ resources.cms[0].data.missing }}");
        server.apply(config_map("a"));
        let case = Case::new(&config);
        let (sidecar, admin) = start(&case, &server, &[]).await;
        let body = sidecar
            .until("a failed render on /readyz", || {
                let (code, body) = http_get(&admin, "/readyz");
                (code == 503 && body.contains("last render failed")).then_some(body)
            })
            .await;
        assert!(body.contains("template `out`") && body.contains("line 1"), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_a_watch_is_stalled_and_recovers_after() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.set_bookmark_interval(Duration::from_millis(200));
        let case = Case::new(CONFIG);
        let (sidecar, admin) = start(&case, &server, &["--watch-timeout", "1s"]).await;
        sidecar.until_status(&admin, "/readyz", 200).await;
        assert_eq!(
            http_get(&admin, "/healthz").0,
            200,
            "a quiet watch with bookmarks is alive"
        );
        server.stall_watches(true);
        let body = sidecar.until_status(&admin, "/healthz", 503).await;
        assert!(body.contains("silent for"), "{body}");
        server.stall_watches(false);
        sidecar.until_status(&admin, "/healthz", 200).await;
        // And the watch works again.
        server.apply(config_map("after"));
        sidecar.until_file(&case, "out.txt", "1\n").await;
    })
    .await;
}

/// `name{labels} value` lines of the metrics text, by series.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let name_ok = series.split('{').next().is_some_and(|n| {
                n.starts_with("kube_template_") && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            assert!(name_ok, "bad series {series:?}");
            (series.to_string(), value)
        })
        .collect()
}

fn metric(series: &[(String, f64)], name: &str) -> f64 {
    series.iter().find(|(s, _)| s == name).map_or(0.0, |(_, v)| *v)
}

/// Waits until the metrics count `n` successful renders and `n` runs of the
/// action `true`; returns the series.
async fn runs_in_metrics(sidecar: &Sidecar, admin: &str, n: f64) -> Vec<(String, f64)> {
    let action = "kube_template_actions_total{action=\"command [\\\"true\\\"]\",result=\"success\"}";
    let renders = "kube_template_renders_total{group=\"default\",result=\"success\"}";
    sidecar
        .until(&format!("{n} renders and action runs in the metrics"), || {
            let series = parse_metrics(&http_get(admin, "/metrics").1);
            (metric(&series, renders) == n && metric(&series, action) == n).then_some(series)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_counters_move_with_events_renders_and_actions() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a"));
        let config = format!("{CONFIG}actions:\n  - command: [\"true\"]\n");
        let case = Case::new(&config);
        let (sidecar, admin) = start(&case, &server, &[]).await;
        sidecar.until_status(&admin, "/readyz", 200).await;
        // The render is counted when it is done, its action when that is done.
        let after_runs = |n: f64| runs_in_metrics(&sidecar, &admin, n);
        let before = after_runs(1.0).await;
        assert_eq!(metric(&before, "kube_template_store_objects{store=\"cms\"}"), 1.0);
        let listed = "kube_template_watch_events_total{store=\"cms\",type=\"listed\"}";
        assert_eq!(metric(&before, listed), 1.0);
        assert!(metric(&before, "kube_template_last_successful_render_timestamp_seconds") > 1.6e9);

        server.apply(config_map("b"));
        let after = after_runs(2.0).await;
        assert_eq!(metric(&after, "kube_template_store_objects{store=\"cms\"}"), 2.0);
        assert_eq!(
            metric(
                &after,
                "kube_template_watch_events_total{store=\"cms\",type=\"applied\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(&after, "kube_template_files_written_total{template=\"out\"}"),
            2.0
        );
        assert_eq!(metric(&after, "kube_template_render_duration_seconds_count"), 2.0);
        assert_eq!(
            metric(
                &after,
                "kube_template_action_duration_seconds_count{action=\"command [\\\"true\\\"]\"}"
            ),
            2.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_store_counts_and_never_secret_data() {
    const MARKER: &str = "MARKER-s3cr3t-7f1d";
    within_deadline(async {
        let encoded = base64::engine::general_purpose::STANDARD.encode(MARKER);
        let server = FakeApiServer::start().await;
        server.apply(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"namespace": "default", "name": "token"}, "data": {"token": encoded}}));
        server.apply(config_map("a"));
        server.apply(config_map("b"));
        let config = r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap}
  secrets: {api_version: v1, kind: Secret}
templates:
  out:
    inline: "{% for s in resources.secrets %}{{ s.data.token | b64decode }}{% endfor %}\n"
    path: out.txt
"#;
        let case = Case::new(config);
        let (sidecar, admin) = start(&case, &server, &[]).await;
        sidecar.until_status(&admin, "/readyz", 200).await;
        assert_eq!(case.read("out.txt"), Some(format!("{MARKER}\n")));
        let (code, page) = http_get(&admin, "/");
        assert_eq!(code, 200);
        assert!(
            page.contains("<td>cms</td><td>v1/ConfigMap (full)</td><td>2</td>"),
            "{page}"
        );
        assert!(
            page.contains("<td>secrets</td><td>v1/Secret (full)</td><td>1</td>"),
            "{page}"
        );
        assert!(page.contains("out.txt"), "outputs are listed: {page}");
        for text in [page.as_str(), &http_get(&admin, "/metrics").1, &sidecar.log()] {
            assert!(
                !text.contains(MARKER) && !text.contains(&encoded),
                "secret data leaked:\n{text}"
            );
        }
    })
    .await;
}
