//! On-demand stores: GETs per Secret, counted by the server (test 8).

use super::*;

// --- Test 8: on-demand stores: GETs per Secret, counted by the server ---

#[tokio::test]
async fn on_demand_secrets_are_fetched_once_per_version_however_often_templates_read_them() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("on-demand").await;
        let client = api.client(Who::Admin).await;
        for (name, value) in [("s1", "one"), ("s2", "two"), ("s3", "three")] {
            apply(&client, &ns, &secrets(), secret(name, value)).await;
        }
        // Two templates read every Secret twice each, rendered at the same time.
        let read = "{% for s in resources.secrets %}{{ s.metadata.name }}={{ s.data.k | b64decode }} {{ resources.secrets.get_one(s.metadata.name).data.k | b64decode }}\\n{% endfor %}";
        let case = Case::new(&format!(
            "watched_resources:\n  secrets: {{api_version: v1, kind: Secret, namespaces: [{ns}], store: on-demand, index_by: [metadata.name]}}\n\
             templates:\n  a: {{inline: \"{read}\", path: out/a.txt}}\n  b: {{inline: \"{read}\", path: out/b.txt}}\n\
             render: {{wait: {{min: 0s, max: 1s}}}}\n"
        ));
        let sidecar = case.spawn(api, Who::Admin, &[], &[]);
        until("the first render", || sidecar.log(), async || case.read("out/b.txt").filter(|t| t.contains("s3=three"))).await;
        apply(&client, &ns, &secrets(), secret("s1", "uno")).await;
        until("the render of the update", || sidecar.log(), async || case.read("out/b.txt").filter(|t| t.contains("s1=uno uno"))).await;
        assert!(case.read("out/a.txt").unwrap().contains("s1=uno uno"));

        // DESIGN section 3: one GET per Secret and resourceVersion, however many reads.
        let gets = || {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for entry in api.audit() {
                if entry["verb"] == "get"
                    && entry["objectRef"]["resource"] == "secrets"
                    && entry["objectRef"]["namespace"] == ns.as_str()
                    && entry["stage"] == "ResponseComplete"
                {
                    *counts.entry(entry["objectRef"]["name"].as_str().unwrap().to_string()).or_default() += 1;
                }
            }
            counts
        };
        let expected = std::collections::BTreeMap::from([("s1".to_string(), 2), ("s2".to_string(), 1), ("s3".to_string(), 1)]);
        until("the audit log to count the GETs", || format!("{:?}", gets()), async || (gets() == expected).then_some(())).await;

    })
    .await;
}
