//! CRDs installed before and after the start (test 9 and defect c).

use super::*;

// --- Test 9 and defect c: CRDs installed before and after the start ---

fn crds() -> ApiResource {
    gvk_resource(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    )
}

/// Installs a namespaced kind `kind` in `group` (version v1, any fields) and
/// waits until objects of it can be created.
async fn install_crd(client: &kube::Client, group: &str, kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    });
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &crds());
    api.create(&PostParams::default(), &serde_json::from_value(crd).unwrap())
        .await
        .unwrap_or_else(|e| panic!("create CRD {plural}.{group}: {e}"));
    gvk_resource(group, "v1", kind, &plural)
}

/// Creates `name` of a custom kind, retrying while the new CRD is not
/// established yet.
async fn create_custom(client: &kube::Client, namespace: &str, ar: &ApiResource, name: &str) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name}, "spec": {"size": 1},
    }))
    .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    until(&format!("{} {name} to be created", ar.kind), String::new, async || {
        api.create(&PostParams::default(), &object).await.ok()
    })
    .await;
}

#[tokio::test]
async fn crds_installed_before_and_after_the_start_are_both_watched() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("crds").await;
        let group = format!("{ns}.example.com");
        let client = api.client(Who::Admin).await;
        let widgets = install_crd(&client, &group, "Widget").await;
        create_custom(&client, &ns, &widgets, "w1").await;
        let case = Case::new(&format!(
            "watched_resources:\n  widgets: {{api_version: {group}/v1, kind: Widget, namespaces: [{ns}]}}\n  \
             gadgets: {{api_version: {group}/v1, kind: Gadget, namespaces: [{ns}]}}\ntemplates:\n  t:\n    \
             inline: \"widgets={{{{ resources.widgets | length }}}} gadgets={{{{ resources.gadgets | length }}}}\\n\"\n    \
             path: out.txt\nrender: {{wait: {{min: 0s, max: 1s}}}}\n"
        ));
        let mut sidecar = case.spawn(api, Who::Admin, &[], &[]);
        let admin = sidecar.admin().await;
        // Not served yet: running, not ready, and both the log and /readyz say which kind.
        let body = until(
            "/readyz to name the kind not served",
            || sidecar.log(),
            async || {
                let (code, body) = get(&admin, "/readyz");
                (code == 503 && body.contains("Gadget")).then_some(body)
            },
        )
        .await;
        assert!(body.contains(&format!("{group}/v1")), "{body}");
        let warned = sidecar.until_log("kind not served").await;
        assert!(warned.contains("Gadget"), "{warned}");
        assert!(sidecar.is_running(), "{}", sidecar.log());
        assert!(case.read("out.txt").is_none(), "no render before every watch listed");

        let gadgets = install_crd(&client, &group, "Gadget").await;
        create_custom(&client, &ns, &gadgets, "g1").await;
        until(
            "the render of both kinds",
            || sidecar.log(),
            async || (case.read("out.txt").as_deref() == Some("widgets=1 gadgets=1\n")).then_some(()),
        )
        .await;
        until(
            "/readyz 200",
            || sidecar.log(),
            async || (get(&admin, "/readyz").0 == 200).then_some(()),
        )
        .await;
    })
    .await;
}
