//! Events and the status ConfigMap through the real server's validation and optimistic concurrency (tests 6 and 7).

use super::*;

// --- Test 6: Events pass the real server's validation ---

#[tokio::test]
async fn events_on_the_pod_pass_validation_even_with_a_note_over_the_limit() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("events").await;
        let client = api.client(Who::Admin).await;
        let uid = pod(&client, &ns, "web-0").await;
        apply_a(&client, &ns).await;
        // The check fails with a 2000-byte first line until the file `ok` exists.
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{ns}], label_selector: \"app=web\"}}\n\
             templates:\n  t:\n    inline: \"{{{{ resources.cms | length }}}}\"\n    path: out.txt\n    \
             check: [\"sh\", \"-c\", \"test -f ok || {{ head -c 2000 /dev/zero | tr '\\\\0' x; echo; exit 1; }}\"]\n"
        ));
        let env = [("POD_NAME", "web-0"), ("POD_NAMESPACE", ns.as_str()), ("POD_UID", uid.as_str())];
        let sidecar = case.spawn(api, Who::Admin, &[], &env);
        let failed = until(
            "a RenderFailed Event",
            || sidecar.log(),
            async || events(&client, &ns).await.into_iter().find(|e| e["reason"] == "RenderFailed"),
        )
        .await;
        assert_eq!(failed["type"], "Warning");
        let note = failed["note"].as_str().unwrap();
        assert!(note.contains("xxxxxxxx"), "the note carries the check's output: {note}");
        assert!(note.len() <= 1024, "the note is cut to the API's limit: {} bytes", note.len());
        assert_eq!(failed["regarding"]["name"], "web-0");
        assert_eq!(failed["regarding"]["uid"], uid.as_str());
        assert_eq!(failed["regarding"]["kind"], "Pod");

        fs::write(case.path("ok"), "").unwrap();
        let recovered = until(
            "a RenderRecovered Event",
            || sidecar.log(),
            async || events(&client, &ns).await.into_iter().find(|e| e["reason"] == "RenderRecovered"),
        )
        .await;
        assert_eq!(recovered["type"], "Normal");
        assert_eq!(recovered["regarding"]["uid"], uid.as_str());
        assert!(sidecar.log_lines("ERROR").iter().all(|l| !l.contains("event")), "{}", sidecar.log());
    })
    .await;
}

// --- Test 7: the status ConfigMap under a concurrent writer ---

#[tokio::test]
async fn the_status_config_map_loses_no_write_under_a_concurrent_writer() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("status-writers").await;
        let client = api.client(Who::Admin).await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("status", json!({}), json!({"counter": "0"})),
        )
        .await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("a", json!({"app": "web"}), json!({"v": "0"})),
        )
        .await;
        let config = format!(
            "{}status: {{config_map: status, namespace: {ns}}}\n",
            config_maps_config(&ns)
        );
        let case = Case::new(&config);
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until(
            "the first render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("a=0\n")).then_some(()),
        )
        .await;

        // Another client rewrites the data (read, change, replace with the
        // version read; again on a conflict) while renders change the annotations.
        let api_cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &config_maps());
        let mut conflicts = 0;
        const WRITES: usize = 300;
        for i in 1..=WRITES {
            loop {
                let mut status = api_cms.get("status").await.unwrap();
                status.data["data"]["counter"] = json!(i.to_string());
                match api_cms.replace("status", &PostParams::default(), &status).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                    Err(e) => panic!("replace: {e}"),
                }
            }
            if i % 10 == 0 {
                apply(
                    &client,
                    &ns,
                    &config_maps(),
                    config_map("a", json!({"app": "web"}), json!({"v": i.to_string()})),
                )
                .await;
            }
        }
        let last = format!("a={WRITES}\n");
        until(
            "the last render",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some(last.as_str())).then_some(()),
        )
        .await;
        let sum = {
            use sha2::Digest as _;
            sha2::Sha256::digest(last.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        until(
            "the status ConfigMap to show the last render",
            || sidecar.log(),
            async || {
                let annotations = annotations(&client, &ns, "status").await;
                annotations["kube-template/checksums"]
                    .as_str()
                    .is_some_and(|c| c.contains(&sum))
                    .then_some(())
            },
        )
        .await;
        let status = api_cms.get("status").await.unwrap();
        assert_eq!(
            status.data["data"]["counter"],
            WRITES.to_string(),
            "the other writer's last write is kept"
        );
        eprintln!("the other writer met {conflicts} conflicts");
    })
    .await;
}
