//! Undefined values name the expression everywhere, and kube's own log lines (defects d and e).

use super::*;

// --- Defect d: undefined values name the expression everywhere ---

#[tokio::test]
async fn undefined_value_errors_name_the_template_line_and_expression_everywhere() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("undefined").await;
        let client = api.client(Who::Admin).await;
        apply_a(&client, &ns).await;
        apply(&client, &ns, &config_maps(), config_map("status", json!({}), json!({}))).await;
        let uid = pod(&client, &ns, "web-0").await;
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{ns}], label_selector: \"app=web\"}}\n\
             templates:\n  t:\n    inline: |\n      header\n      {{% for c in resources.cms %}}{{{{ c.data.port }}}}{{% endfor %}}\n    \
             path: out.txt\nstatus: {{config_map: status}}\n"
        ));
        let env = [("POD_NAME", "web-0"), ("POD_NAMESPACE", ns.as_str()), ("POD_UID", uid.as_str())];
        let sidecar = case.spawn(api, Who::Admin, &[], &env);
        let admin = sidecar.admin().await;
        let expected = ["`t`", "line 2", "`c.data.port` is undefined"];
        let names_it = |text: &str| expected.iter().all(|part| text.contains(part));
        let line = sidecar.until_log("render failed").await;
        let logged = line.replace("template=t ", "template `t` ");
        assert!(names_it(&logged), "the log names template, line and expression: {line}");
        let (_, body) = get(&admin, "/readyz?verbose");
        assert!(names_it(&body), "/readyz names template, line and expression: {body}");
        let note = until(
            "a RenderFailed Event",
            || sidecar.log(),
            async || {
                events(&client, &ns)
                    .await
                    .into_iter()
                    .find(|e| e["reason"] == "RenderFailed")
                    .map(|e| e["note"].as_str().unwrap_or_default().to_string())
            },
        )
        .await;
        assert!(names_it(&note), "the Event names template, line and expression: {note}");
        let error = until(
            "the status ConfigMap's error",
            || sidecar.log(),
            async || {
                annotations(&client, &ns, "status").await["kube-template/last-render-error"]
                    .as_str()
                    .map(str::to_owned)
            },
        )
        .await;
        assert!(names_it(&error), "the status ConfigMap names template, line and expression: {error}");
    })
    .await;
}

// --- Defect e: kube's own log lines ---

#[tokio::test]
async fn log_lines_name_the_watch_and_say_each_thing_once() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        // Forbidden for the user: the watch fails again and again.
        let ns = api.namespace("log-lines").await;
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, namespaces: [{ns}]}}\n  \
             secrets: {{api_version: v1, kind: Secret, namespaces: [{ns}]}}\n\
             templates:\n  t: {{inline: \"x\", path: out.txt}}\n"
        ));
        let sidecar = case.spawn(api, Who::User, &[], &[]);
        let admin = sidecar.admin().await;
        until(
            "three restarts of each watch",
            || sidecar.log(),
            async || {
                let restarts = watch_restarts(&admin);
                (restarts.len() == 2 && restarts.iter().all(|n| *n >= 3.0)).then_some(())
            },
        )
        .await;
        let log = sidecar.log();
        for theirs in [
            "Server cert bypassed",
            "watch list error",
            "failed with error",
            "eof in poll",
        ] {
            assert!(
                !log.contains(theirs),
                "kube's own line {theirs:?} is in the log:\n{log}"
            );
        }
        let insecure = sidecar.log_lines("insecure-skip-tls-verify");
        assert_eq!(insecure.len(), 1, "said once:\n{log}");
        assert!(insecure[0].contains("WARN"), "{}", insecure[0]);
        for kind in ["ConfigMap", "Secret"] {
            let failed: Vec<String> = sidecar
                .log_lines("watch failed")
                .into_iter()
                .filter(|l| l.contains(&format!("watch=\"v1/{kind}")))
                .collect();
            assert_eq!(failed.len(), 1, "a lasting failure is said once per watch:\n{log}");
            assert!(
                failed[0].contains("forbidden") && failed[0].contains(&ns),
                "{}",
                failed[0]
            );
        }
    })
    .await;
}
