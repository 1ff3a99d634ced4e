//! Streaming lists on a server without WatchList, and `--once` against lasting errors (defects a and b).

use super::*;

// --- Defect a: streaming lists against a server without WatchList ---

#[tokio::test]
async fn streaming_lists_fall_back_to_paged_lists_when_the_server_lacks_watchlist() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("streaming-fallback").await;
        let client = api.client(Who::Admin).await;
        apply_a(&client, &ns).await;
        let case = Case::new(&config_maps_config(&ns));
        let mut sidecar = case.spawn(api, Who::Admin, &["--once", "--streaming-lists"], &[]);
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "run --once failed\n{}", sidecar.log());
        assert_eq!(case.read("out.txt").as_deref(), Some("a=1\n"));
        // One warning about the fallback, and no other but the one about TLS.
        let warnings: Vec<String> = sidecar
            .log_lines("WARN")
            .into_iter()
            .filter(|l| !l.contains("insecure-skip-tls-verify"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning, about the fallback:\n{}", sidecar.log());
        assert!(
            warnings[0].contains("streaming lists") && warnings[0].contains("paged lists"),
            "{}",
            warnings[0]
        );
    })
    .await;
}

/// The same against the fake API server made to answer like 1.20, so that the
/// fallback is covered where the real server is not at hand.
#[tokio::test]
async fn streaming_lists_fall_back_on_a_fake_server_without_watchlist() {
    within_deadline(async {
        let server = support::fake_api::FakeApiServer::start().await;
        server.without_watch_list();
        server
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": "default", "labels": {"app": "web"}}, "data": {"v": "1"}}))
            .unwrap();
        let case = Case::new(&config_maps_config("default"));
        let log = case.path("sidecar.log");
        let child = Command::new(binary())
            .args(["run", "--once", "--streaming-lists", "-c"])
            .arg(case.path("config.yaml"))
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .current_dir(case.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut sidecar = Sidecar { child, log };
        let status = sidecar.exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{}", sidecar.log());
        assert_eq!(case.read("out.txt").as_deref(), Some("a=1\n"));
        assert_eq!(sidecar.log_lines("using paged lists").len(), 1, "{}", sidecar.log());
    })
    .await;
}

// --- Defect b: `--once` and lasting permanent errors ---

#[tokio::test]
async fn once_gives_up_after_the_sync_timeout_on_a_lasting_forbidden_list() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        // The user has no permissions at all: listing ConfigMaps is forbidden.
        let ns = api.namespace("once-denied").await;
        let case = Case::new(&config_maps_config(&ns));
        let started = Instant::now();
        let mut sidecar = case.spawn(api, Who::User, &["--once", "--sync-timeout", "3s"], &[]);
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "gave up before the timeout"
        );
        let errors = sidecar.log_lines("error:");
        assert_eq!(errors.len(), 1, "one error line:\n{}", sidecar.log());
        for part in ["configmaps", "list", "forbidden", &ns] {
            assert!(errors[0].contains(part), "the error names {part:?}: {}", errors[0]);
        }
        assert!(case.read("out.txt").is_none(), "nothing is rendered");
    })
    .await;
}

/// Transient errors get the same timeout: here, nothing listens at the
/// server's address (no real server needed).
#[tokio::test]
async fn once_gives_up_after_the_sync_timeout_when_the_api_server_cannot_be_reached() {
    within_deadline(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let case = Case::new(&config_maps_config("web"));
        let kubeconfig = case.path("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
            ),
        )
        .unwrap();
        let log = case.path("sidecar.log");
        let child = Command::new(binary())
            .args(["run", "--once", "--sync-timeout", "2s", "-c"])
            .arg(case.path("config.yaml"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut sidecar = Sidecar { child, log };
        let status = sidecar.exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        let errors = sidecar.log_lines("error:");
        assert_eq!(errors.len(), 1, "{}", sidecar.log());
        assert!(
            errors[0].contains("cannot reach the API server") && errors[0].contains(&format!("127.0.0.1:{port}")),
            "{}",
            errors[0]
        );
        assert_eq!(sidecar.log_lines("WARN").len(), 1, "said once:\n{}", sidecar.log());
    })
    .await;
}

#[tokio::test]
async fn live_run_keeps_retrying_a_forbidden_list_and_readyz_names_the_cause() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("live-denied").await;
        let case = Case::new(&config_maps_config(&ns));
        let mut sidecar = case.spawn(api, Who::User, &[], &[]);
        let admin = sidecar.admin().await;
        let body = until(
            "/readyz to name the forbidden list",
            || sidecar.log(),
            async || {
                let (code, body) = get(&admin, "/readyz");
                (code == 503 && body.contains("forbidden")).then_some(body)
            },
        )
        .await;
        assert!(body.contains("configmaps") && body.contains("list"), "{body}");
        // A live run has no sync timeout: it goes on retrying.
        until(
            "three restarts of the watch",
            || sidecar.log(),
            async || (watch_restarts(&admin).iter().all(|n| *n >= 3.0)).then_some(()),
        )
        .await;
        assert!(sidecar.is_running(), "a live run keeps running\n{}", sidecar.log());
    })
    .await;
}
