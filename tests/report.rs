//! The reporters against the fake API server: Events on the pod for failed and
//! recovered renders, rate-limited; the status ConfigMap written once per
//! render with optimistic concurrency; and, end to end with the real binary,
//! nothing but names, times, errors and checksums sent to the API.
//!
//! Outcomes are published by hand on a `Telemetry`, as the pipeline does.
//! Every test has a deadline and waits on conditions (the fake's counters and
//! Events); `Reporters::stop` is a sync point too, since it reports every
//! outcome already published before it returns.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use kube_template::report::{self, Environment, EventLimits, Options, Plan, Reporters, WriteRetry};
use kube_template::telemetry::{RenderOutcome, Telemetry};
use serde_json::{Value, json};
use sha2::Digest;
use support::fake_api::{CONCURRENT_WRITES, FakeApiServer, Fault, Verb};
use support::sidecar::{POLL, Sidecar, WAIT};
use tokio::time::{Instant, sleep, timeout};

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(40);

const STATUS: &str = "kube-template-status";

async fn within_deadline(test: impl Future<Output = ()>) {
    timeout(TEST_DEADLINE, test)
        .await
        .expect("test did not finish before its deadline");
}

/// Waits until `condition` holds at the server, failing the test after [`WAIT`].
async fn until(server: &FakeApiServer, what: &str, condition: impl Fn(&FakeApiServer) -> bool) {
    if timeout(WAIT, server.wait_for(condition)).await.is_err() {
        panic!("timed out waiting for {what}; events: {:#?}", server.events());
    }
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "sidecar", "image": "kube-template"}]}})
}

fn status_config_map() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": STATUS, "namespace": "default", "annotations": {"team": "ops"}},
           "data": {"owner": "someone else"}})
}

fn secret(value: &str) -> Value {
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "db", "namespace": "default"}, "data": {"password": encoded}})
}

fn failure(error: &str) -> RenderOutcome {
    RenderOutcome {
        at: SystemTime::now(),
        duration: Duration::from_millis(3),
        group: "default".into(),
        error: Some(error.to_owned()),
        changed: false,
        outputs: vec![("/out/a.cfg".into(), "aa".repeat(32))],
    }
}

fn success(outputs: &[(&str, &str)]) -> RenderOutcome {
    RenderOutcome {
        at: SystemTime::now(),
        duration: Duration::from_millis(3),
        group: "default".into(),
        error: None,
        changed: true,
        outputs: outputs.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect(),
    }
}

/// In pod `web-0` of `default`, with or without the status section.
fn plan(events: bool, status: bool) -> Plan {
    let env = Environment {
        pod_name: events.then(|| "web-0".to_owned()),
        pod_namespace: Some("default".to_owned()),
        pod_uid: None,
    };
    let settings = kube_template::config::StatusSettings {
        config_map: STATUS.to_owned(),
        namespace: None,
    };
    Plan::new(status.then_some(&settings), &env).expect("a valid plan")
}

async fn start(server: &FakeApiServer, plan: Plan, options: Options) -> (Arc<Telemetry>, Reporters) {
    let telemetry = Arc::new(Telemetry::default());
    let reporters = report::start(plan, server.client().await, &telemetry, options);
    (telemetry, reporters)
}

fn field<'a>(event: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .fold(event, |v, key| &v[key])
        .as_str()
        .unwrap_or_default()
}

fn reasons(server: &FakeApiServer) -> Vec<String> {
    server.events().iter().map(|e| field(e, "reason").to_owned()).collect()
}

fn annotations(server: &FakeApiServer) -> serde_json::Map<String, Value> {
    let object = server
        .get_object("v1", "ConfigMap", "default", STATUS)
        .expect("the status config map exists");
    object["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn successful_puts(server: &FakeApiServer) -> u64 {
    server.successful(Verb::Update, "configmaps")
}

// ---------------------------------------------------------------------------
// Events

#[tokio::test]
async fn a_failed_render_is_a_warning_on_the_pod_and_the_next_success_a_recovery() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let uid = server.apply(pod("web-0"))["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        let (telemetry, reporters) = start(&server, plan(true, false), Options::default()).await;

        let error = "template `haproxy`: line 3: unknown filter `nope`";
        telemetry.publish(failure(error));
        until(&server, "the warning", |s| s.events().len() == 1).await;
        let warning = &server.events()[0];
        for (path, expected) in [
            ("apiVersion", "events.k8s.io/v1"),
            ("metadata.namespace", "default"),
            ("type", "Warning"),
            ("reason", "RenderFailed"),
            ("action", "Render"),
            ("note", error),
            ("reportingController", "kube-template"),
            ("reportingInstance", "web-0"),
            ("regarding.apiVersion", "v1"),
            ("regarding.kind", "Pod"),
            ("regarding.name", "web-0"),
            ("regarding.namespace", "default"),
            ("regarding.uid", &uid),
        ] {
            assert_eq!(field(warning, path), expected, "{path} of {warning:#}");
        }
        assert!(field(warning, "metadata.name").starts_with("web-0."), "{warning:#}");

        telemetry.publish(failure(error));
        telemetry.publish(success(&[]));
        until(&server, "the recovery", |s| s.events().len() == 2).await;
        let recovery = &server.events()[1];
        assert_eq!(field(recovery, "type"), "Normal");
        assert_eq!(field(recovery, "reason"), "RenderRecovered");
        assert_eq!(field(recovery, "note"), "rendered successfully after 2 failed renders");

        // A success after a success is no news; a new failure is.
        telemetry.publish(success(&[]));
        telemetry.publish(failure("template `haproxy`: line 4: boom"));
        reporters.stop().await;
        assert_eq!(reasons(&server), ["RenderFailed", "RenderRecovered", "RenderFailed"]);
        // The pod's uid was read once, metadata only; no core v1 Events.
        assert_eq!(server.get_count("pods"), 1);
        assert_eq!(server.metadata_request_count("pods"), 1);
        assert_eq!(server.create_count("events"), 3);
        assert!(
            server
                .events()
                .iter()
                .all(|e| field(e, "apiVersion") == "events.k8s.io/v1")
        );
    })
    .await;
}

#[tokio::test]
async fn a_long_error_is_cut_to_the_events_api_limit() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let (telemetry, reporters) = start(&server, plan(true, false), Options::default()).await;
        telemetry.publish(failure(&"é".repeat(3000)));
        reporters.stop().await;
        // The fake refuses notes over 1024 bytes, as the real server does.
        let events = server.events();
        assert_eq!(events.len(), 1, "{:?}", server.received_writes());
        let note = field(&events[0], "note");
        assert!(note.len() <= 1024 && note.ends_with('…'), "{} bytes", note.len());
        // Without `get` on the pod (here: no such pod), Events carry no uid.
        assert_eq!(field(&events[0], "regarding.uid"), "");
    })
    .await;
}

#[tokio::test]
async fn a_lasting_failure_posts_no_more_than_the_rate_limit() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let limits = EventLimits {
            repeat_interval: Duration::from_secs(3600),
            burst: 3,
            refill: Duration::from_secs(3600),
        };
        let options = Options {
            events: limits,
            ..Options::default()
        };
        let (telemetry, reporters) = start(&server, plan(true, false), options).await;

        // The same error, ten times: one Event. (Batches stay below the outcome
        // channel's 16, so that none is skipped.)
        for _ in 0..10 {
            telemetry.publish(failure("boom"));
        }
        // A different error is posted at once, after every `boom` was seen.
        telemetry.publish(failure("bang"));
        until(&server, "two warnings", |s| s.events().len() == 2).await;
        // Nine more errors, all different: one token is left.
        for i in 0..9 {
            telemetry.publish(failure(&format!("error {i}")));
        }
        telemetry.publish(success(&[]));
        reporters.stop().await;

        assert_eq!(
            reasons(&server),
            ["RenderFailed", "RenderFailed", "RenderFailed", "RenderRecovered"]
        );
        let notes: Vec<String> = server.events().iter().map(|e| field(e, "note").to_owned()).collect();
        assert_eq!(notes[..3], ["boom", "bang", "error 0"]);
        assert_eq!(notes[3], "rendered successfully after 20 failed renders");
        assert_eq!(server.create_count("events"), 4);
    })
    .await;
}

#[tokio::test]
async fn with_default_limits_a_burst_of_errors_posts_ten_warnings() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let (telemetry, reporters) = start(&server, plan(true, false), Options::default()).await;
        for i in 0..15 {
            telemetry.publish(failure(&format!("error {i}")));
        }
        reporters.stop().await;
        assert_eq!(server.events().len(), 10);
    })
    .await;
}

#[tokio::test]
async fn the_same_error_is_posted_again_after_the_repeat_interval() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let interval = Duration::from_millis(300);
        let options = Options {
            events: EventLimits {
                repeat_interval: interval,
                ..EventLimits::default()
            },
            ..Options::default()
        };
        let (telemetry, reporters) = start(&server, plan(true, false), options).await;
        // Before the publication, so that no more than the interval can have passed.
        let first = Instant::now();
        telemetry.publish(failure("boom"));
        until(&server, "the first warning", |s| s.events().len() == 1).await;
        // The error lasts: renders keep failing with it until it is posted again.
        let deadline = first + WAIT;
        while server.events().len() < 2 {
            assert!(Instant::now() < deadline, "boom was not posted again");
            telemetry.publish(failure("boom"));
            sleep(POLL).await;
        }
        assert!(first.elapsed() >= interval, "posted again after {:?}", first.elapsed());
        reporters.stop().await;
        assert_eq!(reasons(&server), ["RenderFailed", "RenderFailed"]);
    })
    .await;
}

#[tokio::test]
async fn a_refused_event_is_logged_and_the_next_one_posted() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.inject_fault(Fault::new(500).verb(Verb::Create).path_contains("/events").times(1));
        let (telemetry, reporters) = start(&server, plan(true, false), Options::default()).await;
        telemetry.publish(failure("first"));
        telemetry.publish(failure("second"));
        reporters.stop().await;
        assert_eq!(server.create_count("events"), 2);
        let notes: Vec<String> = server.events().iter().map(|e| field(e, "note").to_owned()).collect();
        assert_eq!(notes, ["second"]);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Status ConfigMap

#[tokio::test]
async fn each_render_sets_the_status_annotations_once() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(status_config_map());
        let (telemetry, reporters) = start(&server, plan(false, true), Options::default()).await;

        let sum_a = "a".repeat(64);
        let sum_b = "b".repeat(64);
        telemetry.publish(success(&[("/out/b.cfg", &sum_b), ("/out/a.cfg", &sum_a)]));
        until(&server, "the first write", |s| successful_puts(s) == 1).await;
        let first = annotations(&server);
        assert_eq!(first["kube-template/last-render-result"], "success");
        assert!(!first.contains_key("kube-template/last-render-error"));
        let checksums: Value = serde_json::from_str(first["kube-template/checksums"].as_str().unwrap()).unwrap();
        assert_eq!(checksums, json!({"/out/a.cfg": sum_a, "/out/b.cfg": sum_b}));
        let time = first["kube-template/last-render-time"].as_str().unwrap();
        assert!(time.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{time}");

        telemetry.publish(failure("template `a`: line 1: boom"));
        until(&server, "the second write", |s| successful_puts(s) == 2).await;
        let second = annotations(&server);
        assert_eq!(second["kube-template/last-render-result"], "failure");
        assert_eq!(second["kube-template/last-render-error"], "template `a`: line 1: boom");

        telemetry.publish(success(&[]));
        // Stopping reports what was published first.
        reporters.stop().await;
        assert_eq!(successful_puts(&server), 3);
        let third = annotations(&server);
        assert_eq!(third["kube-template/last-render-result"], "success");
        assert!(!third.contains_key("kube-template/last-render-error"));
        assert_eq!(third["kube-template/checksums"], "{}");

        // One GET and one PUT per render; the rest of the object untouched.
        assert_eq!(
            (server.get_count("configmaps"), server.update_count("configmaps")),
            (3, 3)
        );
        let object = server.get_object("v1", "ConfigMap", "default", STATUS).unwrap();
        assert_eq!(object["data"], json!({"owner": "someone else"}));
        assert_eq!(third["team"], "ops");
        assert_eq!(server.create_count("events"), 0, "not in a pod: no events");
    })
    .await;
}

#[tokio::test]
async fn a_concurrent_change_is_read_again_and_kept() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(status_config_map());
        let (telemetry, reporters) = start(&server, plan(false, true), Options::default()).await;

        server.conflict_next_updates("configmaps", 2);
        telemetry.publish(failure("boom"));
        until(&server, "a successful write", |s| successful_puts(s) == 1).await;
        // Two PUTs refused with 409, each followed by a fresh GET, then one success.
        assert_eq!(server.update_count("configmaps"), 3);
        assert_eq!(server.get_count("configmaps"), 3);
        let written = annotations(&server);
        assert_eq!(written[CONCURRENT_WRITES], "2", "the concurrent change is kept");
        assert_eq!(written["kube-template/last-render-result"], "failure");
        assert_eq!(written["kube-template/last-render-error"], "boom");

        telemetry.publish(success(&[]));
        reporters.stop().await;
        assert_eq!(successful_puts(&server), 2, "exactly one successful write per render");
        assert_eq!(server.update_count("configmaps"), 4);
        // Every PUT named the resourceVersion it had read: never a blind overwrite.
        for write in server.received_writes() {
            let body: Value = serde_json::from_str(&write.body).unwrap();
            assert_eq!(write.verb, Verb::Update);
            assert!(body["metadata"]["resourceVersion"].is_string(), "{}", write.body);
        }
    })
    .await;
}

/// Retries after 10 ms, then 20 ms; a warning after the third attempt.
fn quick_retries() -> Options {
    Options {
        retry: WriteRetry {
            attempts: 3,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
        ..Options::default()
    }
}

#[tokio::test]
async fn a_status_write_that_keeps_conflicting_is_retried_until_it_lands() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(status_config_map());
        let (telemetry, reporters) = start(&server, plan(false, true), quick_retries()).await;

        server.conflict_next_updates("configmaps", 5);
        telemetry.publish(failure("boom"));
        // No newer render comes: the outcome is still written.
        until(&server, "the write after five conflicts", |s| successful_puts(s) == 1).await;
        assert_eq!(server.update_count("configmaps"), 6);
        let written = annotations(&server);
        assert_eq!(written["kube-template/last-render-result"], "failure");
        assert_eq!(written["kube-template/last-render-error"], "boom");
        reporters.stop().await;
        assert_eq!(successful_puts(&server), 1);
    })
    .await;
}

#[tokio::test]
async fn a_newer_outcome_takes_the_place_of_one_still_being_retried() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(status_config_map());
        let (telemetry, reporters) = start(&server, plan(false, true), quick_retries()).await;

        server.conflict_next_updates("configmaps", 8);
        telemetry.publish(failure("boom"));
        until(&server, "three attempts", |s| s.update_count("configmaps") >= 3).await;
        telemetry.publish(success(&[]));
        until(&server, "a successful write", |s| successful_puts(s) == 1).await;
        reporters.stop().await;
        assert_eq!(
            successful_puts(&server),
            1,
            "the older outcome is not written after the newer"
        );
        assert_eq!(server.update_count("configmaps"), 9);
        assert_eq!(annotations(&server)["kube-template/last-render-result"], "success");
    })
    .await;
}

#[tokio::test]
async fn a_missing_status_config_map_is_not_created() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let (telemetry, reporters) = start(&server, plan(false, true), Options::default()).await;
        telemetry.publish(success(&[]));
        telemetry.publish(failure("boom"));
        reporters.stop().await;
        // Read (404) once per outcome at most (the second may be taken as the
        // newest of both), not retried, never written or created.
        assert!((1..=2).contains(&server.get_count("configmaps")));
        assert_eq!(server.successful(Verb::Get, "configmaps"), 0);
        assert_eq!(server.update_count("configmaps"), 0);
        assert_eq!(server.create_count("configmaps"), 0);
        assert!(server.get_object("v1", "ConfigMap", "default", STATUS).is_none());
    })
    .await;
}

#[test]
fn status_without_a_namespace_outside_a_pod_is_an_error() {
    let settings = kube_template::config::StatusSettings {
        config_map: STATUS.to_owned(),
        namespace: None,
    };
    let error = Plan::new(Some(&settings), &Environment::default()).unwrap_err();
    assert!(error.to_string().contains("POD_NAMESPACE"), "{error}");
}

// ---------------------------------------------------------------------------
// End to end

const MARKER: &str = "s3cr3t-marker";

/// The binary in a pod with `status:`: a template writes a Secret's value to a
/// file, its check fails while `fail` exists. Events and status follow the
/// renders, and no request body ever holds the Secret's value.
#[tokio::test]
async fn run_reports_to_the_cluster_and_never_sends_secret_data() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(status_config_map());
        server.apply(pod("web-0"));
        server.apply(secret(&format!("{MARKER}-1")));
        let dir = tempfile::tempdir().unwrap();
        let config = r#"
watched_resources:
  secrets: {api_version: v1, kind: Secret}
templates:
  creds:
    path: out/creds.txt
    inline: "{% for s in resources.secrets %}{{ s.data.password | b64decode }}{% endfor %}"
    check: ["sh", "-c", "test ! -e fail"]
render:
  wait: {min: 10ms, max: 100ms}
admin: {listen: "127.0.0.1:0"}
status:
  config_map: kube-template-status
"#;
        fs::write(dir.path().join("config.yaml"), config).unwrap();
        let log = dir.path().join("sidecar.log");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-template"))
            .args([OsStr::new("run"), OsStr::new("-c")])
            .arg(dir.path().join("config.yaml"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .current_dir(dir.path())
            .env("RUST_LOG", "info,kube_template=debug")
            .env("NO_COLOR", "1")
            .env("POD_NAME", "web-0")
            .env("POD_NAMESPACE", "default")
            .env_remove("POD_UID")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut sidecar = Sidecar { child, log };
        let result = |server: &FakeApiServer| {
            let object = server.get_object("v1", "ConfigMap", "default", STATUS).unwrap();
            object["metadata"]["annotations"]["kube-template/last-render-result"]
                .as_str()
                .map(str::to_owned)
        };

        let out = dir.path().join("out/creds.txt");
        let sum = format!("{:x}", sha2::Sha256::digest(format!("{MARKER}-1")));
        sidecar
            .until_holds("the first status", || {
                annotations(&server)
                    .get("kube-template/checksums")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.contains(&sum))
            })
            .await;
        assert_eq!(result(&server).as_deref(), Some("success"));
        let checksums: Value =
            serde_json::from_str(annotations(&server)["kube-template/checksums"].as_str().unwrap()).unwrap();
        assert_eq!(checksums, json!({out.to_str().unwrap(): sum}));

        fs::write(dir.path().join("fail"), "").unwrap();
        server.apply(secret(&format!("{MARKER}-2")));
        sidecar
            .until_holds("the failure reported", || {
                reasons(&server) == ["RenderFailed"] && result(&server).as_deref() == Some("failure")
            })
            .await;
        let error = annotations(&server)["kube-template/last-render-error"].clone();
        assert!(error.as_str().unwrap().contains("template `creds`: check"), "{error}");
        // The pipeline retries the failed render (after 1 s): its status is
        // written, but the same failure (with a new staged file) is no new Event.
        let writes_so_far = successful_puts(&server);
        sidecar
            .until_holds("a retried render", || successful_puts(&server) > writes_so_far)
            .await;
        assert_eq!(reasons(&server), ["RenderFailed"]);

        fs::remove_file(dir.path().join("fail")).unwrap();
        server.apply(secret(&format!("{MARKER}-3")));
        // (A retry may recover before the new value is rendered: wait for both.)
        let sum = format!("{:x}", sha2::Sha256::digest(format!("{MARKER}-3")));
        sidecar
            .until_holds("the recovery reported", || {
                let checksums = annotations(&server)
                    .get("kube-template/checksums")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.contains(&sum));
                checksums && result(&server).as_deref() == Some("success")
            })
            .await;
        assert_eq!(reasons(&server), ["RenderFailed", "RenderRecovered"]);
        assert_eq!(fs::read_to_string(&out).unwrap(), format!("{MARKER}-3"));

        let status = Command::new("kill")
            .arg("-TERM")
            .arg(sidecar.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = sidecar.exit(WAIT).await;
        assert!(exit.success(), "{exit}\n{}", sidecar.log());

        // A status write per render, two Events, and no Secret data in any.
        assert!(successful_puts(&server) >= 4);
        assert_eq!(successful_puts(&server), server.update_count("configmaps"));
        let writes = server.received_writes();
        assert_eq!(writes.len() as u64, successful_puts(&server) + 2, "{writes:#?}");
        for n in 1..=3 {
            let value = format!("{MARKER}-{n}");
            let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
            for write in &writes {
                assert!(
                    !write.body.contains(MARKER) && !write.body.contains(&encoded),
                    "{write:?}"
                );
            }
        }
        assert!(!sidecar.log().contains(MARKER));
    })
    .await;
}
