//! The files k8s-sidecar writes: fixture cases, bad variables, `METHOD=LIST`.

use super::*;

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
