//! The example RBAC, and namespace_selector with least RBAC (test 5).

use super::*;

// --- Test 5: RBAC of examples/deploy ---

/// The documents of a multi-document YAML file of the repository.
fn yaml_documents(rel: &str) -> Vec<Value> {
    let text = fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
    text.split("\n---")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The example deployment's config and templates, run locally against 1.20:
/// outputs under `out/`, EndpointSlices in `discovery.k8s.io/v1beta1` (1.20
/// has no v1), the admin server on a free port.
fn example_case() -> Case {
    let documents = yaml_documents("examples/deploy/configmap.yaml");
    let data = documents
        .iter()
        .find(|d| d["metadata"]["name"] == "kube-template-config")
        .map(|d| d["data"].as_object().unwrap().clone())
        .expect("the config ConfigMap");
    let config = data["config.yaml"]
        .as_str()
        .unwrap()
        .replace("/var/run/haproxy-config/", "out/")
        .replace(
            "api_version: discovery.k8s.io/v1\n",
            "api_version: discovery.k8s.io/v1beta1\n",
        )
        .replace("listen: \"0.0.0.0:9090\"", "listen: \"127.0.0.1:0\"");
    assert!(config.contains("v1beta1") && config.contains("127.0.0.1:0"), "{config}");
    let dir = tempfile::tempdir().expect("temporary directory");
    fs::write(dir.path().join("config.yaml"), config).unwrap();
    for (name, text) in &data {
        if name != "config.yaml" {
            fs::write(dir.path().join(name), text.as_str().unwrap()).unwrap();
        }
    }
    Case { dir }
}

/// Creates a role of `examples/deploy/rbac.yaml` (`kind`: ClusterRole or Role,
/// renamed to `name`) and binds it to `user`; `edit` may change its rules first.
async fn grant(client: &kube::Client, namespace: &str, kind: &str, name: &str, user: &str, edit: impl Fn(&mut Value)) {
    let mut role = yaml_documents("examples/deploy/rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("a {kind} in rbac.yaml"));
    role["metadata"] = json!({"name": name});
    edit(&mut role);
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": format!("{kind}Binding"),
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    let plural = |k: &str| format!("{}s", k.to_lowercase());
    for object in [role, binding] {
        let kind = object["kind"].as_str().unwrap().to_string();
        let ar = gvk_resource("rbac.authorization.k8s.io", "v1", &kind, &plural(&kind));
        let api: Api<DynamicObject> = if kind.starts_with("Cluster") {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), namespace, &ar)
        };
        let patch = PatchParams::apply("tests").force();
        api.patch(name, &patch, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

#[tokio::test]
async fn the_example_rbac_is_enough_and_a_missing_permission_is_named() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let ns = api.namespace("rbac").await;
        let client = api.client(Who::Admin).await;
        let uid = pod(&client, &ns, "haproxy-0").await;
        apply(
            &client,
            &ns,
            &config_maps(),
            config_map("kube-template-status", json!({}), json!({})),
        )
        .await;
        let user = real::RBAC_USER;
        // A cluster role of its own per run: the server outlives a test.
        let cluster_role = format!("{ns}-reader");
        grant(&client, &ns, "ClusterRole", &cluster_role, user, |_| {}).await;
        grant(&client, &ns, "Role", "kube-template", user, |_| {}).await;
        let env = [
            ("POD_NAME", "haproxy-0"),
            ("POD_NAMESPACE", ns.as_str()),
            ("POD_UID", uid.as_str()),
        ];

        // Everything the example does: watches, the status ConfigMap, and an
        // Event (the render fails while the rendered file cannot be written).
        let case = example_case();
        fs::write(case.path("out"), "a file where the output directory goes").unwrap();
        let sidecar = case.spawn(api, Who::Rbac, &[], &env);
        let failed = until(
            "a RenderFailed Event posted by the example's user",
            || sidecar.log(),
            async || {
                events(&client, &ns)
                    .await
                    .into_iter()
                    .find(|e| e["reason"] == "RenderFailed")
            },
        )
        .await;
        assert_eq!(failed["regarding"]["name"], "haproxy-0");
        fs::remove_file(case.path("out")).unwrap();
        until(
            "the status ConfigMap to say success",
            || sidecar.log(),
            async || {
                (annotations(&client, &ns, "kube-template-status").await["kube-template/last-render-result"]
                    == "success")
                    .then_some(())
            },
        )
        .await;
        assert!(case.read("out/haproxy.cfg").is_some(), "{}", sidecar.log());
        let log = sidecar.log();
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "no permission is missing:\n{log}"
        );
        drop(sidecar);

        // Without `list` on Secrets, the error names the resource and the verb.
        grant(&client, &ns, "ClusterRole", &cluster_role, user, |role| {
            for rule in role["rules"].as_array_mut().unwrap() {
                if rule["resources"].as_array().unwrap().iter().any(|r| r == "secrets") {
                    rule["resources"] = json!(["services"]);
                }
            }
        })
        .await;
        let case = example_case();
        let mut sidecar = case.spawn(api, Who::Rbac, &["--once", "--sync-timeout", "5s"], &env);
        let status = sidecar.exit(Duration::from_secs(40)).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        let errors = sidecar.log_lines("error:");
        assert_eq!(errors.len(), 1, "{}", sidecar.log());
        for part in ["secrets", "list", "forbidden", user] {
            assert!(errors[0].contains(part), "the error names {part:?}: {}", errors[0]);
        }
    })
    .await;
}

// --- namespace_selector: namespaces followed by label, with least RBAC ---

/// Applies a role of `kind` (ClusterRole, or Role in `namespace`) with
/// `rules`, named `name`, bound to `user`.
async fn grant_rules(client: &kube::Client, namespace: &str, kind: &str, name: &str, user: &str, rules: Value) {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "rules": rules,
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": format!("{kind}Binding"),
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    for object in [role, binding] {
        let kind = object["kind"].as_str().unwrap().to_string();
        let ar = gvk_resource(
            "rbac.authorization.k8s.io",
            "v1",
            &kind,
            &format!("{}s", kind.to_lowercase()),
        );
        let api: Api<DynamicObject> = if kind.starts_with("Cluster") {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), namespace, &ar)
        };
        api.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

/// Sets the label `kube-template.test/team` of the namespace `name`.
async fn label_namespace(client: &kube::Client, name: &str, team: &str) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &gvk_resource("", "v1", "Namespace", "namespaces"));
    let patch = json!({"metadata": {"labels": {"kube-template.test/team": team}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("label namespace {name}: {e}"));
}

#[tokio::test]
async fn a_namespace_selector_follows_relabelled_namespaces_with_only_namespaced_rbac_on_the_kind() {
    let Some(api) = RealApi::get().await else { return };
    let _turn = api.shared().await;
    within_deadline(async {
        let client = api.client(Who::Admin).await;
        let a = api.namespace("nssel-a").await;
        let b = api.namespace("nssel-b").await;
        let c = api.namespace("nssel-c").await;
        // A team name of this run only: the server outlives a test.
        let team = a.clone();
        label_namespace(&client, &a, &team).await;
        label_namespace(&client, &c, "other").await;
        for (ns, name) in [(&a, "one"), (&b, "two"), (&c, "three")] {
            apply(&client, ns, &config_maps(), config_map(name, json!({"app": "web"}), json!({}))).await;
        }
        // Namespaces cluster-wide; ConfigMaps only where the team is.
        let user = real::RBAC_USER;
        let read = json!(["get", "list", "watch"]);
        grant_rules(&client, &a, "ClusterRole", &format!("{a}-namespaces"), user,
            json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}])).await;
        for ns in [&a, &b] {
            grant_rules(&client, ns, "Role", "configmaps", user,
                json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": read}])).await;
        }
        let case = Case::new(&format!(
            "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap, label_selector: \"app=web\", \
             namespace_selector: \"kube-template.test/team={team}\"}}\ntemplates:\n  t:\n    inline: \"\
             {{% for c in resources.cms %}}{{{{ c.metadata.namespace }}}}/{{{{ c.metadata.name }}}}\\n{{% endfor %}}\"\n    \
             path: out.txt\nrender: {{wait: {{min: 0s, max: 1s}}}}\n"
        ));
        let sidecar = case.spawn(api, Who::Rbac, &[], &[]);
        let file = |expected: String| {
            let case = &case;
            let sidecar = &sidecar;
            async move {
                until(&format!("out.txt to be {expected:?}"), || sidecar.log(), async || {
                    (case.read("out.txt").as_deref() == Some(expected.as_str())).then_some(())
                })
                .await
            }
        };
        file(format!("{a}/one\n")).await;
        label_namespace(&client, &b, &team).await;
        file(format!("{a}/one\n{b}/two\n")).await;
        label_namespace(&client, &a, "gone").await;
        file(format!("{b}/two\n")).await;
        apply(&client, &b, &config_maps(), config_map("four", json!({"app": "web"}), json!({}))).await;
        file(format!("{b}/four\n{b}/two\n")).await;
        let log = sidecar.log();
        assert!(!log.to_lowercase().contains("forbidden"), "no permission is missing:\n{log}");
    })
    .await;
}
