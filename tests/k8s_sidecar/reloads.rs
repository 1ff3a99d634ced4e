//! Watching and reloading: the Grafana chart's environment, health, `SCRIPT`, `REQ_URL` over https, `METHOD=SLEEP`, batches and `REQ_SKIP_INIT`.

use super::*;

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
