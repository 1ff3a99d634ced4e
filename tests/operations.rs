//! Operations: the admin endpoints of `kube-template run` against the fake API
//! server — readiness, health under a stalled watch, metrics, and a status
//! page that never shows Secret data.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::fake_api::FakeApiServer;

#[path = "support/http.rs"]
mod http;
use http::http_get;

const DEADLINE: Duration = Duration::from_secs(30);

/// A running `kube-template run`, killed on drop.
struct Sidecar {
    child: Child,
    dir: tempfile::TempDir,
    admin: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// Starts `run` with `config` (an admin section on a free port is added)
    /// and waits for the admin server to listen.
    fn start(server: &FakeApiServer, config: &str, extra: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("{config}\nadmin: {{listen: \"127.0.0.1:0\"}}\n");
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kube-template"))
            .args(["--log-level", "kube_template=debug,info", "run", "-c"])
            .arg(dir.path().join("config.yaml"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sidecar = Sidecar {
            child,
            dir,
            admin: String::new(),
        };
        let line = sidecar.wait_for_log("admin server listening");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("the log names the address");
        sidecar.admin = addr.to_string();
        sidecar
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str) -> String {
        wait_until(&format!("log line {needle:?}"), || {
            self.log().lines().find(|l| l.contains(needle)).map(str::to_string)
        })
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.txt")
    }

    /// GET `path` of the admin server: status code and body.
    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    /// Waits until `path` answers `code`; returns the body.
    fn wait_for_status(&self, path: &str, code: u16) -> String {
        wait_until(&format!("{path} answering {code}"), || {
            let (status, body) = self.get(path);
            (status == code).then_some(body)
        })
    }
}

fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
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

#[test]
fn readiness_is_false_before_the_initial_sync_and_true_after() {
    let server = block_on(FakeApiServer::start());
    server.apply(config_map("a"));
    server.set_list_delay("configmaps", Duration::from_secs(2));
    let sidecar = Sidecar::start(&server, CONFIG, &[]);
    let (code, body) = sidecar.get("/readyz");
    assert_eq!(code, 503, "{body}");
    wait_until("/readyz naming the pending list", || {
        let (code, body) = sidecar.get("/readyz");
        assert_eq!(code, 503, "ready before the slow list finished: {body}");
        body.contains("watch v1/ConfigMap: initial list not done").then_some(())
    });
    assert!(!sidecar.out().exists(), "no render before the initial list");
    sidecar.wait_for_status("/readyz", 200);
    assert_eq!(std::fs::read_to_string(sidecar.out()).unwrap(), "1\n");
    assert_eq!(sidecar.get("/healthz").0, 200);
}

#[test]
fn readiness_reports_a_failed_render_with_its_template_and_line() {
    let server = block_on(FakeApiServer::start());
    let config = CONFIG.replace("{{ resources.cms | length }}", "{{ resources.cms[0].data.missing }}");
    server.apply(config_map("a"));
    let sidecar = Sidecar::start(&server, &config, &[]);
    let body = wait_until("a failed render on /readyz", || {
        let (code, body) = sidecar.get("/readyz");
        (code == 503 && body.contains("last render failed")).then_some(body)
    });
    assert!(body.contains("template `out`") && body.contains("line 1"), "{body}");
}

#[test]
fn healthz_fails_while_a_watch_is_stalled_and_recovers_after() {
    let server = block_on(FakeApiServer::start());
    server.set_bookmark_interval(Duration::from_millis(200));
    let sidecar = Sidecar::start(&server, CONFIG, &["--watch-timeout", "1s"]);
    sidecar.wait_for_status("/readyz", 200);
    assert_eq!(sidecar.get("/healthz").0, 200, "a quiet watch with bookmarks is alive");
    server.stall_watches(true);
    let body = sidecar.wait_for_status("/healthz", 503);
    assert!(body.contains("silent for"), "{body}");
    server.stall_watches(false);
    sidecar.wait_for_status("/healthz", 200);
    // And the watch works again.
    server.apply(config_map("after"));
    wait_until("the render after recovery", || {
        (std::fs::read_to_string(sidecar.out()).ok()? == "1\n").then_some(())
    });
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

#[test]
fn metrics_parse_and_counters_move_with_events_renders_and_actions() {
    let server = block_on(FakeApiServer::start());
    server.apply(config_map("a"));
    let config = format!("{CONFIG}actions:\n  - command: [\"true\"]\n");
    let sidecar = Sidecar::start(&server, &config, &[]);
    sidecar.wait_for_status("/readyz", 200);
    // The render is counted when it is done, its action when that is done.
    let action = "kube_template_actions_total{action=\"command [\\\"true\\\"]\",result=\"success\"}";
    let renders = "kube_template_renders_total{result=\"success\"}";
    let after_runs = |n: f64| {
        wait_until(&format!("{n} renders and action runs in the metrics"), || {
            let series = parse_metrics(&sidecar.get("/metrics").1);
            (metric(&series, renders) == n && metric(&series, action) == n).then_some(series)
        })
    };
    let before = after_runs(1.0);
    assert_eq!(metric(&before, "kube_template_store_objects{store=\"cms\"}"), 1.0);
    let listed = "kube_template_watch_events_total{store=\"cms\",type=\"listed\"}";
    assert_eq!(metric(&before, listed), 1.0);
    assert!(metric(&before, "kube_template_last_successful_render_timestamp_seconds") > 1.6e9);

    server.apply(config_map("b"));
    let after = after_runs(2.0);
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
}

#[test]
fn the_status_page_shows_store_counts_and_never_secret_data() {
    const MARKER: &str = "MARKER-s3cr3t-7f1d";
    let encoded = base64::engine::general_purpose::STANDARD.encode(MARKER);
    let server = block_on(FakeApiServer::start());
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
    let sidecar = Sidecar::start(&server, config, &[]);
    sidecar.wait_for_status("/readyz", 200);
    assert_eq!(std::fs::read_to_string(sidecar.out()).unwrap(), format!("{MARKER}\n"));
    let (code, page) = sidecar.get("/");
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
    for text in [page.as_str(), &sidecar.get("/metrics").1, &sidecar.log()] {
        assert!(
            !text.contains(MARKER) && !text.contains(&encoded),
            "secret data leaked:\n{text}"
        );
    }
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    RUNTIME.block_on(future)
}

/// The fake server runs on this runtime for the whole test binary; tests drive
/// the sidecar process from their own threads.
static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});
