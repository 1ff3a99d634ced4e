//! The probes of `kube-template run` against the fake API server (DESIGN
//! section 7): `/readyz` holds through a failing render and an API outage
//! while `?verbose` names the problem, `/healthz` holds through an outage
//! longer than the watch timeout and fails for a hung watch and for a
//! pipeline loop that stopped turning; `admin.readiness: strict` keeps the
//! stricter meaning.
//!
//! Every test has an overall deadline and waits on conditions with deadlines.

mod support;

use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_api::{FakeApiServer, Fault, Verb};
use support::sidecar::{POLL, Sidecar};
use tokio::time::{Instant, sleep, timeout};

use support::http::http_get;

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

async fn within_deadline(test: impl Future<Output = ()>) {
    timeout(TEST_DEADLINE, test)
        .await
        .expect("test did not finish before its deadline");
}

fn config_map(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data,
    })
}

/// Watches ConfigMaps as `cms` and writes `name=v` lines to `out.txt`; a
/// ConfigMap without `v` makes the render fail. `admin` is added to the
/// admin section.
fn config(admin: &str, template_extra: &str) -> String {
    format!(
        r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
{template_extra}    inline: |
      {{% for o in resources.cms -%}}
      {{{{ o.metadata.name }}}}={{{{ o.data.v }}}}
      {{% endfor -%}}
render:
  wait: {{min: 10ms, max: 100ms}}
admin: {{listen: "127.0.0.1:0"{admin}}}
"#
    )
}

/// A scratch directory with a config; the sidecar runs in it.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::write(dir.path().join("config.yaml"), config).unwrap();
        Case { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    /// Starts `kube-template run` against `server` and waits for its admin
    /// server; returns the sidecar and the admin address.
    async fn spawn_against(&self, server: &FakeApiServer, extra: &[&str]) -> (Sidecar, String) {
        let log = self.path("sidecar.log");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-template"))
            .args(["--log-level", "kube_template=debug,info", "run", "-c"])
            .arg(self.path("config.yaml"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .args(extra)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let sidecar = Sidecar { child, log };
        let admin = sidecar
            .until("the admin server", || {
                let log = sidecar.log();
                let line = log.lines().find(|l| l.contains("admin server listening"))?;
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_owned)
            })
            .await;
        (sidecar, admin)
    }
}

/// Waits until `path` answers `code`; returns the body.
async fn until_status(sidecar: &Sidecar, admin: &str, path: &str, code: u16) -> String {
    sidecar
        .until(&format!("{path} to answer {code}"), || {
            let (status, body) = http_get(admin, path);
            (status == code).then_some(body)
        })
        .await
}

/// Waits until `/readyz?verbose` has a line containing `needle`; returns the
/// status code and the body.
async fn until_verbose(sidecar: &Sidecar, admin: &str, needle: &str) -> (u16, String) {
    sidecar
        .until(&format!("/readyz?verbose naming {needle:?}"), || {
            let (code, body) = http_get(admin, "/readyz?verbose");
            body.contains(needle).then_some((code, body))
        })
        .await
}

/// Asserts that `path` answers `code` at every poll for `period`: a probe
/// that must not flip while something lasts.
async fn holds_for(sidecar: &Sidecar, admin: &str, path: &str, code: u16, period: Duration) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        let (status, body) = http_get(admin, path);
        assert_eq!(status, code, "{path}: {body}\n--- sidecar log ---\n{}", sidecar.log());
        sleep(POLL * 5).await;
    }
}

/// The value of the first metrics series starting with `series`.
fn metric(admin: &str, series: &str) -> Option<f64> {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_stays_200_through_a_failing_render_and_verbose_names_it() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"v": "1"})));
        let case = Case::new(&config("", ""));
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
        assert_eq!(case.read("out.txt").as_deref(), Some("a=1\n"));

        server.apply(config_map("bad", json!({"other": "x"})));
        let (code, body) = until_verbose(&sidecar, &admin, "last render failed").await;
        assert_eq!(code, 200, "a failing render leaves the pod ready: {body}");
        assert!(
            body.contains("template `out`"),
            "the problem names the template: {body}"
        );
        assert_eq!(http_get(&admin, "/readyz"), (200, "ok\n".to_owned()));
        assert_eq!(
            case.read("out.txt").as_deref(),
            Some("a=1\n"),
            "the last good file stays"
        );
        let since = sidecar
            .until("the seconds since the last good render to grow", || {
                metric(&admin, "kube_template_seconds_since_last_successful_render").filter(|s| *s >= 1.0)
            })
            .await;
        assert!(since < 60.0, "{since}");

        server.apply(config_map("bad", json!({"v": "2"})));
        sidecar
            .until_holds("the fixed render", || {
                case.read("out.txt").as_deref() == Some("a=1\nbad=2\n")
            })
            .await;
        assert_eq!(until_status(&sidecar, &admin, "/readyz?verbose", 200).await, "ok\n");
        assert!(metric(&admin, "kube_template_seconds_since_last_successful_render").unwrap() < 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_readiness_fails_while_the_render_fails() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"v": "1"})));
        let case = Case::new(&config(", readiness: strict", ""));
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
        server.apply(config_map("bad", json!({"other": "x"})));
        let body = until_status(&sidecar, &admin, "/readyz", 503).await;
        assert!(
            body.contains("last render failed") && body.contains("template `out`"),
            "{body}"
        );
        server.apply(config_map("bad", json!({"v": "2"})));
        until_status(&sidecar, &admin, "/readyz", 200).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_render_that_fails_is_not_ready_unless_a_good_render_is_on_disk() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("bad", json!({"other": "x"})));
        let case = Case::new(&config("", ""));
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        let (code, body) = until_verbose(&sidecar, &admin, "last render failed").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no good render on disk yet"), "{body}");
        drop(sidecar);

        // As an init container leaves it: the outputs are on disk already.
        fs::write(case.path("out.txt"), "from the init container\n").unwrap();
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        let (code, body) = until_verbose(&sidecar, &admin, "last render failed").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(case.read("out.txt").as_deref(), Some("from the init container\n"));
        drop(sidecar);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_api_outage_longer_than_the_watch_timeout_both_probes_stay_200() {
    within_deadline(async {
        let mut server = FakeApiServer::start().await;
        server.set_bookmark_interval(Duration::from_millis(200));
        server.apply(config_map("a", json!({"v": "1"})));
        // The loop's own limit is short too: an idle loop beats it by its tick.
        let case = Case::new(&config(", stall_timeout: 1s", ""));
        let (sidecar, admin) = case.spawn_against(&server, &["--watch-timeout", "1s"]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
        let connected = "kube_template_watch_connected{";
        assert_eq!(metric(&admin, connected), Some(1.0));

        server.go_down().await;
        let (code, body) = until_verbose(&sidecar, &admin, "not connected since").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("watch v1/ConfigMap"),
            "the problem names the watch: {body}"
        );
        assert_eq!(metric(&admin, connected), Some(0.0));
        // Longer than the watch's silence limit (1s + 5s).
        holds_for(&sidecar, &admin, "/healthz", 200, Duration::from_secs(8)).await;
        assert_eq!(http_get(&admin, "/readyz").0, 200);

        server.come_back().await;
        sidecar
            .until_holds("every problem to clear", || {
                http_get(&admin, "/readyz?verbose").1 == "ok\n"
            })
            .await;
        assert_eq!(metric(&admin, connected), Some(1.0));
        server.apply(config_map("b", json!({"v": "2"})));
        sidecar
            .until_holds("a render after the outage", || {
                case.read("out.txt").as_deref() == Some("a=1\nb=2\n")
            })
            .await;
        assert_eq!(http_get(&admin, "/healthz").0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_stays_200_when_the_api_server_answered_errors_for_longer_than_the_watch_timeout() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        // Bookmarks come, though not at once after a watch opens.
        server.set_bookmark_interval(Duration::from_secs(2));
        server.apply(config_map("a", json!({"v": "1"})));
        let case = Case::new(&config("", ""));
        let (sidecar, admin) = case.spawn_against(&server, &["--watch-timeout", "1s"]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;

        // Every watch request answered with an error, for longer than the
        // silence limit (1s + 5s); the watch resumes without listing again.
        server.inject_fault(Fault::new(500).verb(Verb::Watch));
        server.drop_watches();
        let (code, body) = until_verbose(&sidecar, &admin, "not connected since").await;
        assert_eq!(code, 200, "{body}");
        holds_for(&sidecar, &admin, "/healthz", 200, Duration::from_secs(7)).await;
        server.clear_faults();
        sidecar
            .until_holds("the watch to connect again", || {
                metric(&admin, "kube_template_watch_connected{") == Some(1.0)
            })
            .await;
        // Its silence counts from the outage's end, not from before it.
        holds_for(&sidecar, &admin, "/healthz", 200, Duration::from_secs(3)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_readiness_fails_while_a_watch_is_disconnected() {
    within_deadline(async {
        let mut server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"v": "1"})));
        let case = Case::new(&config(", readiness: strict", ""));
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
        server.go_down().await;
        let body = until_status(&sidecar, &admin, "/readyz", 503).await;
        assert!(body.contains("watch v1/ConfigMap: not connected since"), "{body}");
        assert_eq!(http_get(&admin, "/healthz").0, 200);
        server.come_back().await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_for_a_watch_open_but_silent_past_its_timeout() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.set_bookmark_interval(Duration::from_millis(200));
        server.apply(config_map("a", json!({"v": "1"})));
        let case = Case::new(&config("", ""));
        let (sidecar, admin) = case.spawn_against(&server, &["--watch-timeout", "1s"]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
        server.stall_watches(true);
        let body = until_status(&sidecar, &admin, "/healthz", 503).await;
        assert!(
            body.contains("watch v1/ConfigMap: connection open but silent for"),
            "{body}"
        );
        assert_eq!(
            http_get(&admin, "/readyz").0,
            200,
            "a hung watch is no readiness matter"
        );
        server.stall_watches(false);
        until_status(&sidecar, &admin, "/healthz", 200).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_when_the_pipeline_loop_stops_turning() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", json!({"v": "1"})));
        // A runaway template, with fuel for hours of it, holds the render and
        // so the loop for longer than the loop may go without turning.
        let case = Case::new(
            r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap}
templates:
  out:
    path: out.txt
    inline: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
render:
  wait: {min: 10ms, max: 100ms}
  fuel: 100000000000000
admin: {listen: "127.0.0.1:0", stall_timeout: 1s}
"#,
        );
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        let line = sidecar
            .until("the render to start", || {
                sidecar
                    .log()
                    .lines()
                    .find(|l| l.contains("render started"))
                    .map(str::to_owned)
            })
            .await;
        assert!(line.contains("versions"), "{line}");
        let body = until_status(&sidecar, &admin, "/healthz", 503).await;
        assert!(body.contains("pipeline loop has not turned for"), "{body}");
        assert_eq!(case.read("out.txt"), None, "the render is still held");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_demand_copies_are_listed_while_renders_use_them() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let secret = |value: &str| {
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"namespace": "default", "name": "s"}, "data": {"v": value}})
        };
        server.apply(secret("b25l")); // "one"
        let case = Case::new(
            r#"
watched_resources:
  secrets: {api_version: v1, kind: Secret, store: on-demand}
  cms: {api_version: v1, kind: ConfigMap}
templates:
  out:
    path: out.txt
    inline: "cms={{ resources.cms | length }} {{ resources.secrets.get_one('default', 's').data.v | b64decode }}\n"
render:
  wait: {min: 10ms, max: 100ms}
admin: {listen: "127.0.0.1:0"}
"#,
        );
        let (sidecar, admin) = case.spawn_against(&server, &[]).await;
        until_status(&sidecar, &admin, "/readyz", 200).await;
        assert_eq!(case.read("out.txt").as_deref(), Some("cms=0 one\n"));

        server.inject_fault(Fault::new(500).verb(Verb::Get));
        server.apply(secret("dHdv")); // "two"
        server.apply(config_map("trigger", json!({})));
        let (code, body) = until_verbose(&sidecar, &admin, "stale on-demand copies in use").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(case.read("out.txt").as_deref(), Some("cms=1 one\n"), "the cached copy");

        server.clear_faults();
        sidecar
            .until_holds("the render with the fetched copy", || {
                case.read("out.txt").as_deref() == Some("cms=1 two\n")
            })
            .await;
        sidecar
            .until_holds("the problem to clear", || {
                http_get(&admin, "/readyz?verbose").1 == "ok\n"
            })
            .await;
    })
    .await;
}
