//! Live renders equal the offline render of a dump (tests 1 and 2).

use super::*;

// --- Tests 1 and 2: live renders equal the offline render of a dump ---

/// ConfigMaps selected by `app=web`, indexed by their `tier` label, whole
/// objects as JSON in one file and one file each in a directory; Secrets in
/// an on-demand store.
fn mirror_config(namespace: &str) -> String {
    format!(
        r#"watched_resources:
  cms:
    api_version: v1
    kind: ConfigMap
    namespaces: [{namespace}]
    label_selector: "app=web"
    index_by: ["metadata.labels.tier", "metadata.name"]
  secrets:
    api_version: v1
    kind: Secret
    namespaces: [{namespace}]
    store: on-demand
templates:
  all:
    inline: "{{% for c in resources.cms %}}{{{{ c | tojson }}}}\n{{% endfor %}}{{% for s in resources.secrets %}}{{{{ s.metadata.name }}}}={{{{ s.data.k | b64decode }}}}\n{{% endfor %}}"
    path: out/all.txt
  each:
    inline: "{{% for k in resources.cms.keys() %}}{{{{ file(k[0] ~ '-' ~ k[1], resources.cms.get_one(k[0], k[1]).data | tojson) }}}}{{% endfor %}}"
    directory: out/each
render: {{wait: {{min: 0s, max: 1s}}}}
"#
    )
}

fn kinds() -> [ApiResource; 2] {
    [config_maps(), secrets()]
}

#[tokio::test]
async fn initial_sync_renders_what_render_from_renders_of_the_dumped_objects() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("initial-sync").await;
        let client = api.client(Who::Admin).await;
        for (name, tier, app) in [
            ("c1", "a", "web"),
            ("c2", "b", "web"),
            ("c3", "a", "web"),
            ("other", "a", "db"),
        ] {
            let object = config_map(name, json!({"app": app, "tier": tier}), json!({"v": name, "n": "1"}));
            apply(&client, &ns, &config_maps(), object).await;
        }
        for (name, value) in [("s1", "one"), ("s2", "two")] {
            apply(&client, &ns, &secrets(), secret(name, value)).await;
        }
        let case = Case::new(&mirror_config(&ns));
        let mut sidecar = case.spawn(api, Who::Admin, &["--once"], &[]);
        let status = sidecar.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", sidecar.log());
        let live = files::tree(&case.path("out"));
        let offline = case.render_offline(&api.dump(&ns, &kinds()).await);
        assert_eq!(
            live.len(),
            4,
            "all.txt and one file per selected ConfigMap: {:?}",
            live.keys()
        );
        assert_eq!(as_text(&live), as_text(&offline));
    })
    .await;
}

fn as_text(files: &std::collections::BTreeMap<String, Vec<u8>>) -> std::collections::BTreeMap<String, String> {
    files
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

#[tokio::test]
async fn live_churn_converges_to_the_offline_render_of_the_final_state() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("churn").await;
        let client = api.client(Who::Admin).await;
        let cm = |name: &str, app: &str, tier: &str, v: &str| {
            config_map(name, json!({"app": app, "tier": tier}), json!({"v": v}))
        };
        apply(&client, &ns, &config_maps(), cm("c1", "web", "a", "1")).await;
        apply(&client, &ns, &config_maps(), cm("c2", "web", "a", "1")).await;
        apply(&client, &ns, &config_maps(), cm("c4", "db", "a", "1")).await;
        apply(&client, &ns, &secrets(), secret("s1", "one")).await;
        apply(&client, &ns, &secrets(), secret("s2", "two")).await;
        let case = Case::new(&mirror_config(&ns));
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until(
            "the first render",
            || sidecar.log(),
            async || case.read("out/all.txt").filter(|t| t.contains("s2=two")),
        )
        .await;

        // Creates, an update that moves c1 to another key, objects leaving
        // (c2) and entering (c4) the selector, deletes, Secret updates.
        apply(&client, &ns, &config_maps(), cm("c3", "web", "b", "1")).await;
        apply(&client, &ns, &config_maps(), cm("c1", "web", "z", "2")).await;
        apply(&client, &ns, &config_maps(), cm("c2", "db", "a", "2")).await;
        apply(&client, &ns, &config_maps(), cm("c4", "web", "c", "2")).await;
        apply(&client, &ns, &config_maps(), cm("c5", "web", "a", "1")).await;
        delete(&client, &ns, &config_maps(), "c5").await;
        apply(&client, &ns, &config_maps(), cm("c3", "web", "b", "3")).await;
        apply(&client, &ns, &secrets(), secret("s1", "uno")).await;
        apply(&client, &ns, &secrets(), secret("s3", "three")).await;
        delete(&client, &ns, &secrets(), "s2").await;
        apply(&client, &ns, &secrets(), secret("s1", "eins")).await;

        let offline = as_text(&case.render_offline(&api.dump(&ns, &kinds()).await));
        assert!(offline["all.txt"].contains("s1=eins") && !offline["all.txt"].contains("s2="));
        until(
            "the live outputs to equal the offline render",
            || {
                format!(
                    "offline: {offline:#?}\nlive: {:#?}\n{}",
                    as_text(&files::tree(&case.path("out"))),
                    sidecar.log()
                )
            },
            async || (as_text(&files::tree(&case.path("out"))) == offline).then_some(()),
        )
        .await;
    })
    .await;
}
