//! Hardening: the real `kube-template run` binary against the fake API server
//! where an edge used to give way — an action that stalls, and Secret data
//! quoted by a failing check or action.
//!
//! Every test has an overall deadline and waits on conditions with deadlines,
//! never by sleeping a fixed time.

mod support;

use std::ffi::OsStr;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::case::{CMS_TEMPLATE, Case, config_map, listing, within};
use support::fake_api::FakeApiServer;
use support::http::http_get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(90);

async fn within_deadline(test: impl Future<Output = ()>) {
    within(TEST_DEADLINE, test).await
}

/// A reload endpoint that answers every request with `500` headers and
/// `Content-Length: 100`, sends part of the body, then stalls with the
/// connection open. Returns its URL and when each request came.
async fn stalling_reload_endpoint() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/reload", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            seen.lock().unwrap().push(Instant::now());
            let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100\r\n\r\nthe first bytes";
            let _ = socket.write_all(head.as_bytes()).await;
            open.push(socket);
        }
    });
    (url, requests)
}

/// The value of one series in the metrics text, if present.
fn metric(admin: &str, series: &str) -> Option<f64> {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http_action_stops_neither_watches_nor_healthz_nor_shutdown() {
    within_deadline(async {
        const TIMEOUT: Duration = Duration::from_secs(6);
        let (url, requests) = stalling_reload_endpoint().await;
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    inline: |
{CMS_TEMPLATE}actions:
  - http: {{url: "{url}", method: POST, timeout: 6s, retries: 0}}
render:
  wait: {{min: 10ms, max: 100ms}}
"#
        ));
        let mut sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        sidecar.until_file(&case, "out.txt", &listing(&[("a", "1")])).await;
        sidecar
            .until_holds("the first reload request", || requests.lock().unwrap().len() == 1)
            .await;

        // While the reload stalls, events are still taken in and the probes answer.
        server.apply(config_map("b", "2"));
        sidecar
            .until_holds("the new object in the store", || {
                metric(&admin, "kube_template_store_objects{store=\"cms\"}") == Some(2.0)
            })
            .await;
        assert_eq!(http_get(&admin, "/healthz").0, 200, "{}", sidecar.log());

        // The timeout ends the stalled exchange; then the change is rendered
        // and the next reload starts: never while the first one ran.
        let line = sidecar.until_log("action attempt failed").await;
        assert!(line.contains("no complete answer within 6s"), "{line}");
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "1"), ("b", "2")]))
            .await;
        let second = sidecar
            .until("the second reload request", || requests.lock().unwrap().get(1).copied())
            .await;
        let first = requests.lock().unwrap()[0];
        assert!(
            second.duration_since(first) >= TIMEOUT - Duration::from_millis(100),
            "the second reload started {:?} after the first, within its timeout",
            second.duration_since(first)
        );

        // A signal while the reload stalls: the sidecar lets it run to its
        // timeout (a reload is not cut short), then exits.
        let signalled = Instant::now();
        sidecar.signal("TERM");
        let status = sidecar.exit(TIMEOUT + Duration::from_secs(10)).await;
        assert!(status.success(), "{status}\n{}", sidecar.log());
        let waited = signalled.elapsed();
        assert!(
            waited < TIMEOUT + Duration::from_secs(2),
            "shutdown took {waited:?}\n{}",
            sidecar.log()
        );
        assert_eq!(requests.lock().unwrap().len(), 2, "no reload after the signal");
    })
    .await;
}

const STATUS: &str = "kube-template-status";

fn secret(name: &str, app: &str, key: &str, value: &str) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
           "data": {key: encoded}})
}

/// A value and its base64 form, both of which must stay out of every sink.
fn forms(value: &str) -> [String; 2] {
    [
        value.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(value),
    ]
}

/// A full store and an on-demand store of Secrets feed one line of a file;
/// its check prints the file and fails on a bad password, and the action
/// prints it and fails. Every sink but the debug log shows the failures with
/// the Secrets' values replaced by `<redacted>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_quoted_by_a_failing_check_or_action_reach_no_sink_but_the_debug_log() {
    const PASSWORD: &str = "s3cr3t-password-2";
    const TOKEN: &str = "s3cr3t-token-value";
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": STATUS, "namespace": "default"}}));
        server.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"containers": [{"name": "sidecar", "image": "kube-template"}]}}));
        server.apply(secret("db", "db", "password", "good-password-ok"));
        server.apply(secret("token", "token", "token", TOKEN));
        let case = Case::new(&format!(
            r#"
watched_resources:
  db: {{api_version: v1, kind: Secret, label_selector: app=db}}
  tokens: {{api_version: v1, kind: Secret, label_selector: app=token, store: on-demand}}
templates:
  creds:
    path: creds.txt
    inline: "{{% for s in resources.db %}}password={{{{ s.data.password | b64decode }}}}{{% endfor %}} {{% for t in resources.tokens %}}token={{{{ t.data.token | b64decode }}}}{{% endfor %}}\n"
    check: ["sh", "-c", "grep -q -- -ok '{{file}}' || {{ cat '{{file}}'; exit 1; }}"]
actions:
  - command: ["sh", "-c", "cat creds.txt >&2; exit 3"]
render:
  wait: {{min: 10ms, max: 100ms}}
status:
  config_map: {STATUS}
"#
        ));
        let pod_env = [("POD_NAME", OsStr::new("web-0")), ("POD_NAMESPACE", OsStr::new("default"))];
        let kubeconfig = server.kubeconfig_path();
        let args = [OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        let mut sidecar = case.spawn_with_env(&args, &pod_env);
        let admin = sidecar.admin().await;
        sidecar
            .until_file(&case, "creds.txt", &format!("password=good-password-ok token={TOKEN}\n"))
            .await;
        let action_failed = sidecar.until_log("action failed").await;

        server.apply(secret("db", "db", "password", PASSWORD));
        let readyz = sidecar
            .until("the failed check on /readyz?verbose", || {
                // Ready all along (a good render is on disk); the problem is listed.
                let (code, body) = http_get(&admin, "/readyz?verbose");
                (code == 200 && body.contains("rejected")).then_some(body)
            })
            .await;
        let annotation = sidecar
            .until("the failure in the status config map", || {
                let object = server.get_object("v1", "ConfigMap", "default", STATUS)?;
                let error = object["metadata"]["annotations"]["kube-template/last-render-error"].as_str()?;
                error.contains("rejected").then(|| error.to_owned())
            })
            .await;
        let event = sidecar
            .until("the RenderFailed event", || {
                let events = server.events();
                let failed = events.iter().find(|e| e["reason"] == "RenderFailed")?;
                failed["note"].as_str().map(str::to_owned)
            })
            .await;
        let (_, page) = http_get(&admin, "/");

        // The first line of what failed, redacted, is what the sinks show.
        let shown = "password=<redacted> token=<redacted>";
        assert!(action_failed.contains(&format!("(exit status: 3): {shown}")), "{action_failed}");
        for (sink, text) in [("/readyz", &readyz), ("annotation", &annotation), ("event", &event)] {
            assert!(text.contains(shown), "{sink} does not show the redacted line:\n{text}");
        }
        let escaped = shown.replace('<', "&lt;").replace('>', "&gt;");
        assert!(page.contains(&escaped), "the status page does not show the redacted line:\n{page}");

        sidecar.signal("TERM");
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{status}\n{}", sidecar.log());
        let log = sidecar.log();
        let (debug, rest): (Vec<&str>, Vec<&str>) = log.lines().partition(|l| l.contains(" DEBUG "));
        let writes = server.received_writes();
        let bodies: Vec<&str> = writes.iter().map(|w| w.body.as_str()).collect();
        let sinks = [
            ("log below debug", rest.join("\n")),
            ("/readyz", readyz),
            ("status page", page),
            ("writes to the API (events, status)", bodies.join("\n")),
        ];
        for value in [PASSWORD, TOKEN] {
            for form in forms(value) {
                for (sink, text) in &sinks {
                    assert!(!text.contains(&form), "{sink} holds {form:?}:\n{text}");
                }
            }
            assert!(
                debug.iter().any(|l| l.contains(value)),
                "the debug log shows the full output"
            );
        }
    })
    .await;
}
