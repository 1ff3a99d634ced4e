//! Keys ending in `.url`: fetched once per version of their object, failures, `ENABLE_5XX`.

use super::*;

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
