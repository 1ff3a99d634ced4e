//! A kill -9 of the API server, and compaction with a restart (tests 3 and 4).

use super::*;

// --- Test 3: kill -9 of the API server ---

/// What `/readyz` answers during an API outage after a good render. DESIGN
/// section 7: readiness stays 200 through API outages (the daemon keeps
/// serving its last good config); flip this if that changes.
const READYZ_DURING_OUTAGE: u16 = 200;

#[tokio::test]
async fn the_sidecar_recovers_by_itself_from_a_kill_9_of_the_api_server() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.exclusive().await;
    within_deadline(async {
        let ns = api.namespace("restart").await;
        let client = api.client(Who::Admin).await;
        apply_a(&client, &ns).await;
        let case = Case::new(&config_maps_config(&ns));
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        let admin = sidecar.admin().await;
        until(
            "the first render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=1\n")).then_some(()),
        )
        .await;
        until(
            "ready",
            || sidecar.log(),
            async || (get(&admin, "/readyz").0 == 200).then_some(()),
        )
        .await;

        api.kill();
        until(
            "the sidecar to notice the outage",
            || sidecar.log(),
            async || sidecar.log_lines("cannot reach the API server").first().cloned(),
        )
        .await;
        let (health, body) = get(&admin, "/healthz");
        assert_eq!(health, 200, "/healthz during the outage: {body}");
        let (ready, body) = get(&admin, "/readyz");
        assert_eq!(ready, READYZ_DURING_OUTAGE, "/readyz during the outage: {body}");

        api.start_again().await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("b", json!({"app": "web"}), json!({"v": "2"})),
        )
        .await;
        until(
            "convergence after the restart",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=1\nb=2\n")).then_some(()),
        )
        .await;
        assert_eq!(get(&admin, "/healthz").0, 200);
        assert_eq!(get(&admin, "/readyz").0, 200);
        let log = sidecar.log();
        for theirs in ["eof in poll", "failed with error", "Server cert bypassed"] {
            assert!(
                !log.contains(theirs),
                "kube's own line {theirs:?} is in the log:\n{log}"
            );
        }
    })
    .await;
}

// --- Test 4: compaction and a restart give real 410s; stores re-listed ---

/// A `check` that keeps a copy of every staged file in `versions/`, numbered in order.
const CAPTURE_VERSIONS: &str = r#"["sh", "-c", "n=$(ls versions | wc -l); cp '{file}' versions/$(printf %06d $n)"]"#;

#[tokio::test]
async fn after_compaction_and_a_restart_old_versions_are_gone_and_stores_are_listed_again() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.exclusive().await;
    within_deadline(async {
        let ns = api.namespace("compaction").await;
        let client = api.client(Who::Admin).await;
        let cm = |name: &str, v: &str| config_map(name, json!({"app": "web"}), json!({"v": v}));
        apply(&client, &ns, &config_maps(), cm("a", "1")).await;
        apply(&client, &ns, &config_maps(), cm("b", "1")).await;
        let config = config_maps_config(&ns).replace(
            "path: out.txt",
            &format!("path: out.txt\n    check: {CAPTURE_VERSIONS}"),
        );
        let case = Case::new(&config);
        fs::create_dir(case.path("versions")).unwrap();
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until(
            "the first render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=1\nb=1\n")).then_some(()),
        )
        .await;

        // The sidecar misses everything from here to the restart.
        sidecar.signal("STOP");
        let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &config_maps());
        let old = cms
            .list(&Default::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        delete(&client, &ns, &config_maps(), "b").await;
        apply(&client, &ns, &config_maps(), cm("c", "1")).await;
        apply(&client, &ns, &config_maps(), cm("a", "2")).await;
        api.compact();
        api.kill();
        api.start_again().await;

        // The old resourceVersion is gone for real: a watch from it gets 410.
        let client = api.client(Who::Admin).await;
        let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &config_maps());
        let expired = match cms.watch(&Default::default(), &old).await {
            Err(kube::Error::Api(status)) => status.code,
            Ok(stream) => {
                use futures::StreamExt as _;
                let mut stream = Box::pin(stream);
                match stream.next().await {
                    Some(Ok(kube::api::WatchEvent::Error(status))) => status.code,
                    other => panic!("a watch from a compacted version gave {other:?}"),
                }
            }
            Err(other) => panic!("a watch from a compacted version failed with {other}"),
        };
        assert_eq!(expired, 410);

        sidecar.signal("CONT");
        until(
            "the final state, listed again",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=2\nc=1\n")).then_some(()),
        )
        .await;
        // Every render showed a state the server had, in the server's order:
        // events already on their way before the kill may be read before the
        // connection breaks, so the states between the old and the new may
        // show too; a mix (say `b` still there beside `c`, or `a=1` after
        // `a=2`) may not.
        const STATES: [&str; 4] = ["a=1\nb=1\n", "a=1\n", "a=1\nc=1\n", "a=2\nc=1\n"];
        let mut names: Vec<PathBuf> = fs::read_dir(case.path("versions"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let mut at = 0;
        for name in names {
            let version = fs::read_to_string(&name).unwrap();
            let state = STATES.iter().position(|s| *s == version);
            assert!(
                state.is_some_and(|state| state >= at),
                "a render of no state the server had, or an older one: {version:?}"
            );
            at = state.unwrap();
        }
    })
    .await;
}
