//! `kube-template k8s-sidecar`: kiwigrid/k8s-sidecar's environment, its files
//! and its calls. Fixture cases in `tests/k8s-sidecar-fixtures/` go from an
//! environment and manifests to a rendered tree; live tests run against the
//! fake API server.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_api::FakeApiServer;
use support::files::tree;
use support::http::http_get;
use support::sidecar::Sidecar;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_kube-template");

/// `kube-template k8s-sidecar ARGS` with exactly `env` (and PATH), logging to
/// `dir/sidecar.log`.
fn spawn<K: AsRef<std::ffi::OsStr>>(dir: &Path, env: &[(K, String)], args: &[&str]) -> Sidecar {
    let log = dir.join("sidecar.log");
    let child = Command::new(BIN)
        .arg("k8s-sidecar")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("the binary starts");
    Sidecar { child, log }
}

/// The admin address the sidecar logged (text logs).
async fn admin_address(sidecar: &Sidecar) -> String {
    sidecar
        .until("the health server", || {
            let log = sidecar.log();
            let line = log.lines().find(|l| l.contains("admin server listening"))?;
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(str::to_owned)
        })
        .await
}

#[tokio::test]
async fn fixtures_render_the_files_k8s_sidecar_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s-sidecar-fixtures");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert!(cases.len() >= 4, "fixtures are missing");
    let mut failures = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("out");
        let manifests = dir.path().join("manifests");
        fs::create_dir(&manifests).unwrap();
        for entry in fs::read_dir(case.join("manifests")).unwrap() {
            let entry = entry.unwrap();
            let text = fs::read_to_string(entry.path()).unwrap();
            let text = text.replace("${FOLDER}", &folder.display().to_string());
            fs::write(manifests.join(entry.file_name()), text).unwrap();
        }
        let mut env: Vec<(String, String)> = fs::read_to_string(case.join("env"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect();
        env.extend([
            ("FOLDER".into(), folder.display().to_string()),
            ("METHOD".into(), "LIST".into()),
            ("LOG_FORMAT".into(), "LOGFMT".into()),
        ]);
        let mut sidecar = spawn(dir.path(), &env, &["--from", "manifests"]);
        let status = sidecar.exit(Duration::from_secs(15)).await;
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if !status.success() {
            failures.push(format!("{name}: exit {status}\n{}", sidecar.log()));
            continue;
        }
        let got = tree(&folder);
        let expected = tree(&case.join("expected"));
        if got != expected {
            let show = |t: &BTreeMap<String, Vec<u8>>| format!("{:?}", t.keys().collect::<Vec<_>>());
            failures.push(format!("{name}: got {} expected {}", show(&got), show(&expected)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn bad_variables_exit_64_naming_each_and_touch_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("out");
    fs::create_dir(&folder).unwrap();
    fs::write(folder.join("kept.json"), "{}").unwrap();
    let env = [
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", folder.display().to_string()),
        ("METHOD", "POLL".into()),
        ("REQ_URL", "http://localhost:3000/reload".into()),
        ("REQ_RETRY_TOTL", "3".into()),
    ];
    let mut sidecar = spawn(dir.path(), &env, &["--from", "manifests"]);
    let status = sidecar.exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(64), "{}", sidecar.log());
    let log = sidecar.log();
    assert!(log.contains("METHOD=\"POLL\""), "{log}");
    assert!(
        log.contains("REQ_RETRY_TOTL is not a k8s-sidecar variable (did you mean REQ_RETRY_TOTAL?)"),
        "{log}"
    );
    assert_eq!(tree(&folder).keys().collect::<Vec<_>>(), ["kept.json"]);
}

fn dashboard(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "default", "name": name, "labels": {"grafana_dashboard": "1"}},
        "data": data,
    })
}

#[tokio::test]
async fn list_writes_the_files_once_and_exits() {
    let server = FakeApiServer::start().await;
    server.create(dashboard("a", json!({"a.json": "A"}))).unwrap();
    server
        .create(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"namespace": "default", "name": "s", "labels": {"grafana_dashboard": "1"}},
            "data": {"s.yaml": "Uw=="},
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dash");
    let env = [
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", folder.display().to_string()),
        ("METHOD", "LIST".into()),
        ("RESOURCE", "both".into()),
        ("LOG_FORMAT", "LOGFMT".into()),
    ];
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let mut sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    let status = sidecar.exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", sidecar.log());
    let files = tree(&folder);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["a.json", "s.yaml"]);
    assert_eq!(files["s.yaml"], b"S");
}

/// One HTTP request as the reload server saw it.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    headers: String,
    body: String,
}

/// A local HTTP server answering 200 to everything and keeping what it got;
/// with `tls`, an HTTPS one with the self-signed certificate of
/// `tests/support/tls/`.
async fn reload_server_with(tls: bool) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls { "https" } else { "http" };
    let url = format!(
        "{scheme}://{}/api/admin/provisioning/dashboards/reload",
        listener.local_addr().unwrap()
    );
    let acceptor = tls.then(tls_acceptor);
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let keep = Arc::clone(&keep);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    // A client that refuses the certificate ends the handshake.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            answer(stream, keep).await;
                        }
                    }
                    None => answer(stream, keep).await,
                }
            });
        }
    });
    (url, received)
}

async fn reload_server() -> (String, Arc<Mutex<Vec<Received>>>) {
    reload_server_with(false).await
}

/// Reads one request from `stream`, keeps it, and answers 200.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, keep: Arc<Mutex<Vec<Received>>>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                break (head.to_string(), body.to_string());
            }
        }
    };
    let (request_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    keep.lock().unwrap().push(Received {
        request_line: request_line.to_string(),
        headers: headers.to_ascii_lowercase(),
        body,
    });
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    let _ = stream.shutdown().await;
}

/// The DER blocks of a PEM file.
fn pem_blocks(path: &Path) -> Vec<Vec<u8>> {
    use base64::Engine;
    let text = fs::read_to_string(path).unwrap();
    text.split("-----BEGIN ")
        .skip(1)
        .map(|block| {
            let body: String = block
                .lines()
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            base64::engine::general_purpose::STANDARD.decode(body).unwrap()
        })
        .collect()
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls");
    let certs = pem_blocks(&dir.join("cert.pem"))
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(pem_blocks(&dir.join("key.pem")).remove(0));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key.into())
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// The Grafana chart's dashboard sidecar environment as the chart sets it by
/// default; only the addresses and the folder point at this test's.
fn grafana_chart_env(folder: &Path, reload_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("METHOD", "WATCH".into()),
        ("LABEL", "grafana_dashboard".into()),
        ("FOLDER", folder.display().to_string()),
        ("RESOURCE", "both".into()),
        ("REQ_USERNAME", "admin".into()),
        ("REQ_PASSWORD", "prom-operator".into()),
        ("REQ_URL", reload_url.into()),
        ("REQ_METHOD", "POST".into()),
        // Not set by the chart (default 8080): a free port keeps tests apart.
        ("HEALTH_PORT", "0".into()),
    ]
}

#[tokio::test]
async fn the_grafana_chart_environment_watches_writes_and_reloads_once_per_batch() {
    let server = FakeApiServer::start().await;
    server.create(dashboard("a", json!({"a.json": "A1"}))).unwrap();
    let (url, received) = reload_server().await;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dashboards");
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let sidecar = spawn(
        dir.path(),
        &grafana_chart_env(&folder, &url),
        &["--kubeconfig", &kubeconfig],
    );
    let file = |name: &str| fs::read_to_string(folder.join(name)).ok();
    sidecar
        .until_holds("the first file", || file("a.json").as_deref() == Some("A1"))
        .await;
    sidecar
        .until_holds("the reload after the first sync", || {
            received.lock().unwrap().len() == 1
        })
        .await;
    let first = received.lock().unwrap()[0].clone();
    assert_eq!(
        first.request_line,
        "POST /api/admin/provisioning/dashboards/reload HTTP/1.1"
    );
    // admin:prom-operator, as k8s-sidecar sends it.
    assert!(
        first
            .headers
            .contains("authorization: basic ywrtaw46chjvbs1vcgvyyxrvcg=="),
        "{}",
        first.headers
    );
    assert_eq!(first.body, "");

    // The JSON log is k8s-sidecar's default; /healthz answers as its does.
    let log = sidecar.log();
    let addr = log
        .lines()
        .find(|l| l.contains("admin server listening"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["addr"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no JSON line with the address:\n{log}"));
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/healthz"),
        (200, "OK".to_string())
    );

    // A burst of changes: one more reload.
    server
        .update(dashboard("a", json!({"a.json": "A2", "extra.json": "E"})))
        .unwrap();
    server.create(dashboard("b", json!({"b.json": "B"}))).unwrap();
    sidecar
        .until_holds("the changed files", || {
            file("a.json").as_deref() == Some("A2") && file("extra.json").is_some() && file("b.json").is_some()
        })
        .await;
    sidecar
        .until_holds("the second reload", || received.lock().unwrap().len() >= 2)
        .await;
    // A removed key and a deleted ConfigMap take their files with them.
    server.update(dashboard("a", json!({"a.json": "A2"}))).unwrap();
    server.delete("v1", "ConfigMap", "default", "b");
    sidecar
        .until_holds("the removed files", || {
            file("extra.json").is_none() && file("b.json").is_none()
        })
        .await;
    sidecar
        .until_holds("the third reload", || received.lock().unwrap().len() >= 3)
        .await;
    assert!(received.lock().unwrap().len() <= 4, "{:?}", received.lock().unwrap());
}

#[tokio::test]
async fn healthz_is_not_ready_until_the_first_sync() {
    let server = FakeApiServer::start().await;
    server.set_list_delay("configmaps", Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", dir.path().join("out").display().to_string()),
        ("HEALTH_HOST", "127.0.0.1".into()),
        ("HEALTH_PORT", "0".into()),
        ("LOG_FORMAT", "LOGFMT".into()),
    ];
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    let addr = admin_address(&sidecar).await;
    assert_eq!(http_get(&addr, "/healthz"), (503, "NOT READY".to_string()));
    sidecar
        .until_holds("ready", || http_get(&addr, "/healthz") == (200, "OK".to_string()))
        .await;
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("kube_template_"), "{metrics}");
}

#[tokio::test]
async fn script_runs_after_each_batch_and_req_payload_is_posted_as_json() {
    let server = FakeApiServer::start().await;
    server.create(dashboard("a", json!({"a.json": "1"}))).unwrap();
    let (url, received) = reload_server().await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Not executable: run by sh, as k8s-sidecar does.
    let script = dir.path().join("reload.sh");
    fs::write(&script, format!("echo ran >> {}\n", runs.display())).unwrap();
    let env = [
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", dir.path().join("out").display().to_string()),
        ("SCRIPT", script.display().to_string()),
        ("REQ_URL", url),
        ("REQ_METHOD", "POST".into()),
        ("REQ_PAYLOAD", r#"{"reload": true}"#.into()),
        ("HEALTH_PORT", "0".into()),
        ("LOG_FORMAT", "LOGFMT".into()),
    ];
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    let count = || fs::read_to_string(&runs).map(|t| t.lines().count()).unwrap_or(0);
    sidecar
        .until_holds("the script after the first sync", || count() == 1)
        .await;
    sidecar
        .until_holds("the request", || received.lock().unwrap().len() == 1)
        .await;
    let first = received.lock().unwrap()[0].clone();
    assert_eq!(first.body, r#"{"reload":true}"#);
    assert!(
        first.headers.contains("content-type: application/json"),
        "{}",
        first.headers
    );
    server.update(dashboard("a", json!({"a.json": "2"}))).unwrap();
    sidecar
        .until_holds("the script after the change", || count() == 2)
        .await;
}

#[tokio::test]
async fn an_https_req_url_is_called_and_its_certificate_checked_unless_req_skip_tls_verify() {
    let server = FakeApiServer::start().await;
    server.create(dashboard("a", json!({"a.json": "1"}))).unwrap();
    let kubeconfig = server.kubeconfig_path().display().to_string();
    for skip in [true, false] {
        let (url, received) = reload_server_with(true).await;
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("LABEL", "grafana_dashboard".to_string()),
            ("FOLDER", dir.path().join("out").display().to_string()),
            ("REQ_URL", url),
            ("REQ_RETRY_TOTAL", "0".into()),
            ("HEALTH_PORT", "0".into()),
            ("LOG_FORMAT", "LOGFMT".into()),
        ];
        if skip {
            env.push(("REQ_SKIP_TLS_VERIFY", "true".into()));
        }
        let sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
        if skip {
            sidecar
                .until_holds("the request", || received.lock().unwrap().len() == 1)
                .await;
        } else {
            // The self-signed certificate is refused: no request arrives.
            sidecar
                .until_holds("the refused certificate", || {
                    sidecar
                        .log()
                        .lines()
                        .any(|l| l.contains("action failed") && l.contains("certificate"))
                })
                .await;
            assert!(received.lock().unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn a_health_port_in_use_leaves_the_sidecar_running_without_it() {
    // Charts run a dashboards and a datasources sidecar in one pod, both on
    // the default HEALTH_PORT; k8s-sidecar goes on without its health server.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let server = FakeApiServer::start().await;
    server.create(dashboard("a", json!({"a.json": "1"}))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("out");
    let env = [
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", folder.display().to_string()),
        ("HEALTH_HOST", "127.0.0.1".into()),
        ("HEALTH_PORT", port),
        ("LOG_FORMAT", "LOGFMT".into()),
    ];
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let mut sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    sidecar
        .until_holds("the warning", || {
            sidecar.log().contains("running without the health server")
        })
        .await;
    sidecar.until_holds("the file", || folder.join("a.json").exists()).await;
    server.update(dashboard("a", json!({"a.json": "2"}))).unwrap();
    sidecar
        .until_holds("the change", || {
            fs::read_to_string(folder.join("a.json")).ok().as_deref() == Some("2")
        })
        .await;
    assert!(sidecar.is_running());
}

#[tokio::test]
async fn method_sleep_follows_changes_without_waiting_sleep_time() {
    let server = FakeApiServer::start().await;
    server.create(dashboard("a", json!({"a.json": "1"}))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("out");
    let env = [
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", folder.display().to_string()),
        ("METHOD", "SLEEP".into()),
        ("SLEEP_TIME", "3600".into()),
        ("HEALTH_PORT", "0".into()),
        ("LOG_FORMAT", "LOGFMT".into()),
    ];
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    let file = || fs::read_to_string(folder.join("a.json")).ok();
    sidecar
        .until_holds("the first file", || file().as_deref() == Some("1"))
        .await;
    assert!(
        sidecar.log().contains("METHOD=SLEEP watches instead of polling"),
        "{}",
        sidecar.log()
    );
    // Well within the test's deadline, far from an hour's sleep.
    server.update(dashboard("a", json!({"a.json": "2"}))).unwrap();
    sidecar
        .until_holds("the change", || file().as_deref() == Some("2"))
        .await;
}

/// The Grafana chart's dashboard environment (text logs) against a fake API
/// server holding one dashboard, `first`, with `extra` variables, and the
/// reload calls it makes. Keep the returned parts alive for the test.
async fn grafana_dashboards(
    extra: &[(&'static str, &str)],
) -> (
    FakeApiServer,
    Arc<Mutex<Vec<Received>>>,
    tempfile::TempDir,
    std::path::PathBuf,
    Sidecar,
) {
    let server = FakeApiServer::start().await;
    server.create(dashboard("first", json!({"first.json": "1"}))).unwrap();
    let (url, received) = reload_server().await;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dashboards");
    let mut env = grafana_chart_env(&folder, &url);
    env.push(("LOG_FORMAT", "LOGFMT".into()));
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    (server, received, dir, folder, sidecar)
}

#[tokio::test]
async fn a_burst_of_changes_makes_one_reload_call() {
    // k8s-sidecar calls REQ_URL once per event: a Helm release with 20
    // dashboards makes 20 calls. Here the burst is one render, one call.
    let (server, received, _dir, folder, sidecar) = grafana_dashboards(&[]).await;
    let actions_done = || sidecar.log().matches("\"action done\"").count();
    sidecar.until_holds("the first reload", || actions_done() == 1).await;
    for i in 0..20 {
        server
            .create(dashboard(&format!("d{i}"), json!({format!("d{i}.json"): "x"})))
            .unwrap();
    }
    sidecar
        .until_holds("the burst's files", || {
            (0..20).all(|i| folder.join(format!("d{i}.json")).exists())
        })
        .await;
    sidecar.until_holds("the burst's reload", || actions_done() == 2).await;
    let renders = sidecar.log().matches("render done; outputs changed").count();
    assert_eq!(renders, 2, "{}", sidecar.log());
    assert_eq!(received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn req_skip_init_skips_the_reload_after_the_first_sync_only() {
    // Grafana's chart sets REQ_SKIP_INIT for datasources: Grafana reads the
    // files at its own start, so a reload then would be wasted.
    let (server, received, _dir, folder, sidecar) = grafana_dashboards(&[("REQ_SKIP_INIT", "true")]).await;
    sidecar
        .until_holds("the first sync's file", || folder.join("first.json").exists())
        .await;
    sidecar
        .until_holds("the first render's actions skipped", || {
            sidecar.log().contains("actions skipped (actions_on_start: skip)")
        })
        .await;
    server.create(dashboard("second", json!({"second.json": "2"}))).unwrap();
    let actions_done = || sidecar.log().matches("\"action done\"").count();
    sidecar
        .until_holds("the reload after the change", || actions_done() == 1)
        .await;
    assert!(folder.join("second.json").exists());
    assert_eq!(received.lock().unwrap().len(), 1, "{}", sidecar.log());
    let renders = sidecar.log().matches("render done; outputs changed").count();
    assert_eq!(renders, 2, "{}", sidecar.log());
}

/// What a content server answers on one path: a status and a body.
type Routes = Arc<Mutex<BTreeMap<String, (u16, String)>>>;

/// A local HTTP server answering each path from `routes` (404 when absent)
/// and keeping the paths it was asked for, in order.
async fn content_server(routes: Routes) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&asked);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (routes, keep) = (Arc::clone(&routes), Arc::clone(&keep));
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&data).contains("\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&data).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                keep.lock().unwrap().push(path.clone());
                let (status, body) = routes.lock().unwrap().get(&path).cloned().unwrap_or((404, "no".into()));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (base, asked)
}

/// The sidecar watching the fake API server with `extra` variables, and the
/// folder it writes. Keep the returned parts alive for the test.
fn url_sidecar(server: &FakeApiServer, extra: &[(&'static str, &str)]) -> (tempfile::TempDir, PathBuf, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dashboards");
    let mut env = vec![
        ("LABEL", "grafana_dashboard".to_string()),
        ("FOLDER", folder.display().to_string()),
        ("RESOURCE", "both".into()),
        ("NAMESPACE", "ALL".into()),
        ("LOG_FORMAT", "LOGFMT".into()),
        ("HEALTH_PORT", "0".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let kubeconfig = server.kubeconfig_path().display().to_string();
    let sidecar = spawn(dir.path(), &env, &["--kubeconfig", &kubeconfig]);
    (dir, folder, sidecar)
}

fn count(asked: &Mutex<Vec<String>>, path: &str) -> usize {
    asked.lock().unwrap().iter().filter(|p| *p == path).count()
}

#[tokio::test]
async fn url_keys_are_fetched_once_per_version_of_their_object_and_written_without_the_suffix() {
    let routes: Routes = Arc::default();
    routes.lock().unwrap().insert("/a".into(), (200, "dashboard A".into()));
    routes.lock().unwrap().insert("/s".into(), (200, "secret S".into()));
    let (base, asked) = content_server(Arc::clone(&routes)).await;
    let server = FakeApiServer::start().await;
    server
        .create(dashboard(
            "a",
            json!({"a.json.url": format!("{base}/a"), "plain.json": "{}"}),
        ))
        .unwrap();
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{base}/s"));
    server
        .create(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"namespace": "default", "name": "s", "labels": {"grafana_dashboard": "1"}},
            "data": {"s.json.url": encoded},
        }))
        .unwrap();
    let (_dir, folder, sidecar) = url_sidecar(&server, &[]);
    sidecar
        .until_holds("the fetched files", || {
            folder.join("a.json").exists() && folder.join("s.json").exists()
        })
        .await;
    let files = tree(&folder);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["a.json", "plain.json", "s.json"]);
    assert_eq!(files["a.json"], b"dashboard A");
    assert_eq!(files["s.json"], b"secret S");

    // A render caused by another object fetches nothing.
    server.create(dashboard("b", json!({"b.json": "B"}))).unwrap();
    sidecar.until_holds("b.json", || folder.join("b.json").exists()).await;
    assert_eq!((count(&asked, "/a"), count(&asked, "/s")), (1, 1), "{}", sidecar.log());

    // A changed object is fetched again.
    routes.lock().unwrap().insert("/a".into(), (200, "dashboard A2".into()));
    server
        .update(dashboard(
            "a",
            json!({"a.json.url": format!("{base}/a"), "plain.json": "{\"v\": 2}"}),
        ))
        .unwrap();
    sidecar
        .until_holds("the refetched a.json", || {
            fs::read(folder.join("a.json")).is_ok_and(|b| b == b"dashboard A2")
        })
        .await;
    assert_eq!((count(&asked, "/a"), count(&asked, "/s")), (2, 1), "{}", sidecar.log());
}

#[tokio::test]
async fn a_url_that_fails_writes_no_file_keeps_the_last_content_and_the_others_are_written() {
    let routes: Routes = Arc::default();
    routes.lock().unwrap().insert("/a".into(), (200, "dashboard A".into()));
    let (base, asked) = content_server(Arc::clone(&routes)).await;
    let server = FakeApiServer::start().await;
    server
        .create(dashboard("a", json!({"a.json.url": format!("{base}/a")})))
        .unwrap();
    server
        .create(dashboard(
            "m",
            json!({"missing.json.url": format!("{base}/gone"), "m.json": "M"}),
        ))
        .unwrap();
    let (_dir, folder, sidecar) = url_sidecar(&server, &[("REQ_RETRY_TOTAL", "1")]);
    sidecar
        .until_holds("the other files", || {
            folder.join("a.json").exists() && folder.join("m.json").exists()
        })
        .await;
    assert!(!folder.join("missing.json").exists());
    let log = sidecar.log();
    assert!(
        log.contains("fetch failed") && log.contains(&format!("{base}/gone")),
        "{log}"
    );
    assert!(log.contains("ConfigMap default/m"), "{log}");

    // The URL of a changed object fails: its file keeps what it held.
    routes.lock().unwrap().insert("/a".into(), (503, "down".into()));
    server
        .update(dashboard(
            "a",
            json!({"a.json.url": format!("{base}/a"), "x.json": "X"}),
        ))
        .unwrap();
    sidecar.until_holds("x.json", || folder.join("x.json").exists()).await;
    assert_eq!(fs::read(folder.join("a.json")).unwrap(), b"dashboard A");
    assert_eq!(count(&asked, "/a"), 3, "a 503 is retried REQ_RETRY_TOTAL times");
}

#[tokio::test]
async fn enable_5xx_writes_a_server_errors_body() {
    let routes: Routes = Arc::default();
    routes
        .lock()
        .unwrap()
        .insert("/down".into(), (500, "maintenance page".into()));
    let (base, asked) = content_server(Arc::clone(&routes)).await;
    let server = FakeApiServer::start().await;
    server
        .create(dashboard("a", json!({"a.json.url": format!("{base}/down")})))
        .unwrap();
    let (_dir, folder, sidecar) = url_sidecar(&server, &[("ENABLE_5XX", "true")]);
    sidecar.until_holds("a.json", || folder.join("a.json").exists()).await;
    assert_eq!(fs::read(folder.join("a.json")).unwrap(), b"maintenance page");
    assert_eq!(count(&asked, "/down"), 1, "not retried");
}
