//! The deployment example under `examples/deploy/`: the kube-template config
//! its ConfigMap carries passes `check` and renders the HAProxy example; the
//! RBAC grants reads on exactly the watched kinds and writes only on Events and
//! the status ConfigMap; the pod is hardened and wired to what the config says.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploy")
}

/// Every YAML document of every `.yaml` file under `examples/deploy/`.
fn documents() -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let parsed = serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        docs.extend(parsed.into_iter().filter(|doc| !doc.is_null()));
    }
    docs
}

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    docs.iter().filter(move |doc| doc["kind"] == kind)
}

fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|doc| doc["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().map(|item| item.as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// The ConfigMap that holds kube-template's `config.yaml`.
fn config_map(docs: &[Value]) -> &Value {
    let found: Vec<_> = of_kind(docs, "ConfigMap")
        .filter(|cm| cm["data"].get("config.yaml").is_some())
        .collect();
    assert_eq!(found.len(), 1, "expected one ConfigMap with a config.yaml key");
    found[0]
}

/// The kube-template config the ConfigMap carries, parsed.
fn embedded_config(docs: &[Value]) -> Value {
    let text = config_map(docs)["data"]["config.yaml"].as_str().unwrap();
    serde_saphyr::from_str::<Value>(text).unwrap()
}

/// The ConfigMap's keys as files in a directory, as the pod mounts them.
fn mount_config_map(docs: &[Value]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in config_map(docs)["data"].as_object().unwrap() {
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
            "`{key}` is not a valid ConfigMap key"
        );
        fs::write(dir.path().join(key), value.as_str().unwrap()).unwrap();
    }
    dir
}

fn kube_template(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn embedded_config_passes_check() {
    let docs = documents();
    let dir = mount_config_map(&docs);
    let config = dir.path().join("config.yaml");
    assert_success(&kube_template(&["check".as_ref(), "-c".as_ref(), config.as_ref()]));
}

#[test]
fn embedded_config_renders_the_haproxy_example() {
    let docs = documents();
    let dir = mount_config_map(&docs);
    let config = dir.path().join("config.yaml");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/haproxy/manifests");
    let out = tempfile::tempdir().unwrap();
    assert_success(&kube_template(&[
        "render".as_ref(),
        "-c".as_ref(),
        config.as_ref(),
        "--from".as_ref(),
        manifests.as_ref(),
        "--out".as_ref(),
        out.path().as_ref(),
    ]));

    let templates = &embedded_config(&docs)["templates"];
    let cfg_path = templates["haproxy"]["path"].as_str().unwrap();
    let cfg = fs::read_to_string(out.path().join(cfg_path.trim_start_matches('/'))).unwrap();
    assert!(cfg.contains("frontend www\n    bind :8080\n"), "{cfg}");
    assert!(
        cfg.contains("    bind :8443 ssl crt /usr/local/etc/haproxy/certs/ "),
        "{cfg}"
    );
    assert!(cfg.contains("server web-5d9c7-abcde 10.0.1.12:8080 check"), "{cfg}");
    let certs = templates["certs"]["directory"].as_str().unwrap();
    let bundle = out.path().join(certs.trim_start_matches('/')).join("shop_shop-tls.pem");
    assert!(bundle.is_file(), "{} was not written", bundle.display());
}

/// Only haproxy.cfg.j2 is adapted to the pod; the other templates are the
/// HAProxy example's, byte for byte.
#[test]
fn embedded_templates_other_than_haproxy_cfg_are_the_examples() {
    let docs = documents();
    let data = &config_map(&docs)["data"];
    let originals = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/haproxy/templates");
    for name in ["macros.j2", "certs.j2"] {
        let original = fs::read_to_string(originals.join(name)).unwrap();
        assert_eq!(data[name].as_str(), Some(original.as_str()), "{name}");
    }
}

/// `(apiGroup, resource)` of every kind the config watches. The plural is the
/// regular one (Ingress → ingresses, Secret → secrets); a kind with another
/// would need a table here.
fn watched_kinds(config: &Value) -> BTreeSet<(String, String)> {
    let mut kinds = BTreeSet::new();
    for resource in config["watched_resources"].as_object().unwrap().values() {
        let api_version = resource["api_version"].as_str().unwrap();
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let kind = resource["kind"].as_str().unwrap().to_lowercase();
        let plural = if kind.ends_with('s') {
            format!("{kind}es")
        } else {
            format!("{kind}s")
        };
        kinds.insert((group.to_owned(), plural));
    }
    kinds
}

#[test]
fn rbac_reads_only_the_watched_kinds_and_writes_only_events_and_status() {
    const READ: &[&str] = &["get", "list", "watch"];
    let docs = documents();
    let config = embedded_config(&docs);
    let watched = watched_kinds(&config);
    assert!(!watched.is_empty());
    // The one ConfigMap kube-template may write, shipped because it may not create it.
    let status = config["status"]["config_map"].as_str();
    if let Some(status) = status {
        assert!(
            of_kind(&docs, "ConfigMap").any(|cm| name(cm) == status),
            "no ConfigMap `{status}`"
        );
    }
    // Cluster-wide reads: the config watches every namespace.
    let mut cluster_reads: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();

    for role in of_kind(&docs, "ClusterRole").chain(of_kind(&docs, "Role")) {
        let role_name = format!("{} {}", role["kind"].as_str().unwrap(), name(role));
        for rule in role["rules"].as_array().unwrap() {
            assert!(rule.get("nonResourceURLs").is_none(), "{role_name}: {rule}");
            let (groups, resources, verbs) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
            );
            let names = strings(&rule["resourceNames"]);
            for wildcard in [&groups, &resources, &verbs] {
                assert!(!wildcard.contains(&"*"), "{role_name}: wildcard in {rule}");
            }
            for group in &groups {
                for resource in &resources {
                    let allowed: &[&str] = match (*group, *resource) {
                        ("events.k8s.io", "events") => &["create"],
                        ("", "configmaps") if !names.is_empty() && names.iter().all(|n| Some(*n) == status) => {
                            &["get", "update"]
                        }
                        _ => {
                            let kind = ((*group).to_owned(), (*resource).to_owned());
                            assert!(
                                watched.contains(&kind),
                                "{role_name} grants `{group}/{resource}` {names:?}: not a watched kind, not the status ConfigMap"
                            );
                            if role["kind"] == "ClusterRole" {
                                cluster_reads
                                    .entry(kind)
                                    .or_default()
                                    .extend(verbs.iter().map(|v| v.to_string()));
                            }
                            READ
                        }
                    };
                    for verb in &verbs {
                        assert!(
                            allowed.contains(verb),
                            "{role_name} grants `{verb}` on `{group}/{resource}`; allowed: {allowed:?}"
                        );
                    }
                }
            }
        }
    }

    for kind in &watched {
        let verbs = cluster_reads.get(kind).cloned().unwrap_or_default();
        assert!(
            READ.iter().all(|verb| verbs.contains(*verb)),
            "watched `{}/{}` lacks cluster-wide get/list/watch: {verbs:?}",
            kind.0,
            kind.1
        );
    }

    // The roles reach the pod's ServiceAccount.
    let account = one_of_kind(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    assert_eq!(name(one_of_kind(&docs, "ServiceAccount")), account);
    for (binding_kind, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let binding = one_of_kind(&docs, binding_kind);
        assert_eq!(binding["roleRef"]["kind"], role_kind);
        assert_eq!(
            binding["roleRef"]["name"].as_str(),
            Some(name(one_of_kind(&docs, role_kind)))
        );
        let subjects = binding["subjects"].as_array().unwrap();
        assert!(
            subjects
                .iter()
                .all(|s| s["kind"] == "ServiceAccount" && s["name"].as_str() == Some(account)),
            "{binding_kind}: {subjects:?}"
        );
    }
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container `{name}`"))
}

/// Where `container` mounts `volume`.
fn mount_path<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
        .map(|m| m["mountPath"].as_str().unwrap())
}

/// The pod volume whose source (`configMap`, `emptyDir`, …) satisfies `test`.
fn volume_named(pod: &Value, test: impl Fn(&Value) -> bool) -> &str {
    let found: Vec<_> = pod["volumes"].as_array().unwrap().iter().filter(|v| test(v)).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0]["name"].as_str().unwrap()
}

#[test]
fn pod_is_hardened_and_wired_to_its_config() {
    let docs = documents();
    let config = embedded_config(&docs);
    let pod = &one_of_kind(&docs, "Deployment")["spec"]["template"]["spec"];

    // Hardening: non-root, read-only root, no privilege, RuntimeDefault seccomp.
    assert_eq!(pod["shareProcessNamespace"], true, "the action signals HAProxy");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|uid| uid > 0));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let all: Vec<&Value> = [&pod["initContainers"], &pod["containers"]]
        .into_iter()
        .flat_map(|list| list.as_array().unwrap())
        .collect();
    assert_eq!(all.len(), 3);
    for c in &all {
        let (name, sc) = (c["name"].as_str().unwrap(), &c["securityContext"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        assert!(
            sc.get("runAsUser").is_none(),
            "{name}: one UID for the pod, see deployment.yaml"
        );
        for bound in ["requests", "limits"] {
            assert!(c["resources"][bound]["memory"].is_string(), "{name}: {bound}");
        }
    }

    // The sidecar and the init container run the mounted config.
    let sidecar = container(&pod["containers"], "kube-template");
    let init = &pod["initContainers"].as_array().unwrap()[0];
    assert_eq!(
        strings(&sidecar["args"]),
        ["run", "-c", "/etc/kube-template/config.yaml"]
    );
    assert_eq!(
        strings(&init["args"]),
        ["run", "-c", "/etc/kube-template/config.yaml", "--once"]
    );
    let config_volume = volume_named(pod, |v| {
        v["configMap"]["name"].as_str() == Some(name(config_map(&docs)))
    });
    let token_volume = volume_named(pod, |v| {
        v["projected"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
    });
    for c in [sidecar, init] {
        assert_eq!(mount_path(c, config_volume), Some("/etc/kube-template"));
        assert_eq!(
            mount_path(c, token_volume),
            Some("/var/run/secrets/kubernetes.io/serviceaccount")
        );
        let env: BTreeMap<&str, &str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
                (e["name"].as_str().unwrap(), field)
            })
            .collect();
        assert_eq!(
            env,
            BTreeMap::from([
                ("POD_NAME", "metadata.name"),
                ("POD_NAMESPACE", "metadata.namespace"),
                ("POD_UID", "metadata.uid")
            ])
        );
    }

    // Only they get the API token.
    assert_eq!(pod["automountServiceAccountToken"], false);
    let haproxy = container(&pod["containers"], "haproxy");
    assert_eq!(mount_path(haproxy, token_volume), None, "haproxy needs no API token");

    // The reload: SIGUSR2 to the pid HAProxy writes into a volume both see;
    // no `command`, so the image needs no shell.
    let actions = config["actions"].as_array().unwrap();
    assert!(
        actions.iter().all(|a| a.get("command").is_none()),
        "the image has no shell: {actions:?}"
    );
    let [signal] = &actions[..] else {
        panic!("one action expected: {actions:?}")
    };
    assert_eq!(signal["signal"], "USR2");
    let pid_file = signal["pid_file"].as_str().expect("the signal goes to a pid_file");
    let pid_dir = Path::new(pid_file).parent().unwrap().to_str().unwrap();
    let run_volume = volume_named(pod, |v| {
        v.get("emptyDir").is_some() && mount_path(sidecar, v["name"].as_str().unwrap()) == Some(pid_dir)
    });
    assert_eq!(mount_path(haproxy, run_volume), Some(pid_dir));

    // Outputs land in the volume HAProxy reads, at the paths it is told.
    let shared = volume_named(pod, |v| v.get("emptyDir").is_some() && v["name"] != run_volume);
    let written = mount_path(sidecar, shared).unwrap();
    assert_eq!(mount_path(init, shared), Some(written));
    let read = mount_path(haproxy, shared).unwrap();
    let haproxy_view = |output: &Value| {
        let path = output.as_str().unwrap();
        let relative = path
            .strip_prefix(written)
            .unwrap_or_else(|| panic!("{path} is not under {written}"));
        format!("{read}{relative}")
    };
    let command = strings(&haproxy["command"]);
    assert_eq!(command[..3], ["haproxy", "-W", "-db"]);
    assert_eq!(
        command[3..],
        [
            "-p",
            pid_file,
            "-f",
            haproxy_view(&config["templates"]["haproxy"]["path"]).as_str()
        ]
    );
    let template = config_map(&docs)["data"]["haproxy.cfg.j2"].as_str().unwrap();
    let crt = format!(" crt {}/ ", haproxy_view(&config["templates"]["certs"]["directory"]));
    assert!(template.contains(&crt), "haproxy.cfg.j2 lacks `{crt}`");

    // Probes hit the admin server where the config puts it.
    let admin_port: u64 = config["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    // The startup probe waits for the initial sync of a large cluster.
    let startup = &sidecar["startupProbe"];
    let budget = startup["periodSeconds"].as_u64().unwrap_or(10) * startup["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        budget >= 300,
        "startupProbe allows only {budget} s for the initial sync"
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path);
        let port = sidecar["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == get["port"] || p["containerPort"] == get["port"])
            .unwrap_or_else(|| panic!("{probe}: no port {}", get["port"]));
        assert_eq!(port["containerPort"].as_u64(), Some(admin_port), "{probe}");
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let docs = documents();
    let listed: BTreeSet<&str> = strings(&one_of_kind(&docs, "Kustomization")["resources"])
        .into_iter()
        .collect();
    let files: BTreeSet<String> = fs::read_dir(deploy_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|file| file.ends_with(".yaml") && file != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files.iter().map(String::as_str).collect());
}
