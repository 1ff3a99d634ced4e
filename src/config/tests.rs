use std::path::Path;
use std::time::Duration;

use super::*;
use crate::action::{Action, HttpAction};
use crate::output::{Owner, ValidateFormat};
use crate::render::Syntax;

fn parse(text: &str) -> std::result::Result<Config, Vec<Issue>> {
    Config::parse(text, Path::new("config.yaml"), Path::new("/cfg"))
}

const MINIMAL: &str = "watched_resources:\n  ings:\n    api_version: networking.k8s.io/v1\n    kind: Ingress\ntemplates:\n  t:\n    inline: x\n    path: out/t.cfg\n";

#[test]
fn defaults_follow_the_design() {
    let config = parse(MINIMAL).unwrap();
    let ings = &config.watched_resources["ings"];
    assert_eq!(ings.spec.index_by, ["metadata.namespace", "metadata.name"]);
    assert_eq!(ings.spec.ignore_fields, ["metadata.managedFields"]);
    assert_eq!(ings.spec.store, StoreKind::Full);
    assert_eq!(ings.spec.on_missing_key, OnMissingKey::Empty);
    assert_eq!(config.render.wait.min, Duration::from_millis(200));
    assert_eq!(config.render.wait.max, Duration::from_secs(2));
    assert_eq!(config.render.max_output_bytes, ByteSize(64 << 20));
    assert_eq!(config.admin.listen, "0.0.0.0:9090");
    let t = &config.templates["t"];
    assert_eq!(t.mode, 0o644);
    assert_eq!(t.output.path(), Path::new("/cfg/out/t.cfg"));
}

#[test]
fn humane_values_are_understood() {
    let text = format!(
        "{MINIMAL}render:\n  wait: {{min: 500ms, max: 1m}}\n  max_output_bytes: 2MiB\nactions:\n  - command: [\"true\"]\n    timeout: 2s\n  - http: {{url: \"http://127.0.0.1:1/reload\", retries: 3}}\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.render.wait.min, Duration::from_millis(500));
    assert_eq!(config.render.wait.max, Duration::from_secs(60));
    assert_eq!(config.render.max_output_bytes, ByteSize(2 << 20));
    assert_eq!(
        config.actions,
        [
            Action::Command {
                argv: vec!["true".into()],
                timeout: Duration::from_secs(2)
            },
            Action::Http(HttpAction {
                url: "http://127.0.0.1:1/reload".into(),
                method: "POST".into(),
                timeout: Duration::from_secs(30),
                retries: 3,
                headers: Default::default(),
                body: None,
                insecure_skip_tls_verify: false,
            })
        ]
    );
}

#[test]
fn invalid_yaml_is_one_issue_with_a_position() {
    let issues = parse("templates:\n  t: [unclosed\n").unwrap_err();
    assert_eq!(issues.len(), 1);
    assert!(issues[0].message.starts_with("not valid YAML"), "{}", issues[0]);
    assert!(issues[0].position.is_some_and(|p| p.line >= 2));
}

#[test]
fn an_empty_config_says_what_is_missing() {
    let issues = parse("").unwrap_err();
    assert!(issues[0].message.contains("`templates` is required"));
}

#[test]
fn overlapping_outputs_are_rejected() {
    let text = "templates:\n  a:\n    inline: x\n    directory: out\n  b:\n    inline: y\n    path: out/b.txt\n";
    let issues = parse(text).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert!(
        issues[0].message.contains("overlaps the output of template `a`"),
        "{}",
        issues[0]
    );
}

#[test]
fn out_reroots_absolute_and_relative_paths() {
    let text = "templates:\n  a:\n    inline: x\n    path: /etc/haproxy/haproxy.cfg\n  b:\n    inline: y\n    directory: out/certs\n";
    let config = parse(text).unwrap();
    let root = Path::new("/scratch");
    assert_eq!(
        config.templates["a"].output.rerooted(root).path(),
        Path::new("/scratch/etc/haproxy/haproxy.cfg")
    );
    assert_eq!(
        config.templates["b"].output.rerooted(root).path(),
        Path::new("/scratch/out/certs")
    );
}

#[test]
fn out_keeps_outputs_that_climb_with_dotdot_below_the_root() {
    let text = "templates:
  a:
    inline: x
    path: ../../escape.txt
  b:
    inline: y
    path: ../up/x/../y.txt
";
    let config = parse(text).unwrap();
    let root = Path::new("/scratch");
    assert_eq!(
        config.templates["a"].output.rerooted(root).path(),
        Path::new("/scratch/escape.txt")
    );
    assert_eq!(
        config.templates["b"].output.rerooted(root).path(),
        Path::new("/scratch/up/y.txt")
    );
}

/// Every config we ship loads, and its templates compile.
#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("config.example.yaml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let candidate = entry.unwrap().path().join("config.yaml");
        if candidate.is_file() {
            configs.push(candidate);
        }
    }
    assert!(configs.len() >= 3);
    for path in configs {
        if let Err(e) = crate::pipeline::prepare(&path) {
            panic!("{e}");
        }
    }
}

#[test]
fn on_demand_stores_index_by_metadata_only() {
    let text = "watched_resources:\n  s:\n    api_version: v1\n    kind: Secret\n    store: on-demand\n    index_by: [\"metadata.namespace\", \"type\"]\n    cache: {ttl: 30s, max_entries: 10}\ntemplates:\n  t: {inline: x, path: t}\n";
    let issues = parse(text).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].path, "watched_resources.s.index_by[1]");
    assert!(issues[0].message.contains("metadata only"), "{}", issues[0]);
    let ok = parse(&text.replace("\"type\"", "\"metadata.labels['tier']\"")).unwrap();
    assert_eq!(ok.watched_resources["s"].cache.max_entries, 10);
    assert_eq!(ok.watched_resources["s"].cache.ttl, Duration::from_secs(30));
}

#[test]
fn every_problem_of_one_entry_is_listed_without_knock_on_ones() {
    let text = "watched_resources:\n  s:\n    api_version: [v1]\n    kind: 3\n    store: partial\ntemplates:\n  t: {inline: x, path: t}\n";
    let issues = parse(text).unwrap_err();
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    // Not also "missing field `api_version`" once it was set aside.
    assert_eq!(
        paths,
        [
            "watched_resources.s.api_version",
            "watched_resources.s.kind",
            "watched_resources.s.store"
        ],
        "{issues:?}"
    );
}

#[test]
fn one_file_written_by_two_templates_is_found_however_it_is_spelled() {
    let text = "templates:\n  a:\n    inline: x\n    path: out/t\n  b:\n    inline: y\n    path: ./out/t\n  c:\n    inline: z\n    path: out/x/../t\n";
    let issues = Config::parse(text, Path::new("config.yaml"), Path::new("")).unwrap_err();
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        ["templates.b.path", "templates.c.path", "templates.c.path"],
        "{issues:?}"
    );
}

#[test]
fn a_list_is_not_taken_for_a_mapping() {
    let text =
        "watched_resources:\n  s: [v1, Secret]\ntemplates:\n  t: {inline: x, path: t}\nadmin: [\"127.0.0.1:1\"]\n";
    let issues = parse(text).unwrap_err();
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(
        issues.iter().all(|i| i.message == "expected a mapping, found a list"),
        "{issues:?}"
    );
}

#[test]
fn admin_readiness_and_stall_timeout_are_read_and_checked() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.admin.readiness, Readiness::Serving);
    assert_eq!(config.admin.stall_timeout, Duration::from_secs(300));
    let strict = parse(&format!("{MINIMAL}admin:\n  readiness: strict\n  stall_timeout: 90s\n")).unwrap();
    assert_eq!(strict.admin.readiness, Readiness::Strict);
    assert_eq!(strict.admin.stall_timeout, Duration::from_secs(90));

    let issues = parse(&format!("{MINIMAL}admin:\n  readiness: lax\n")).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "admin.readiness", "{issues:?}");
    assert_eq!(
        issues[0].message,
        "unknown variant `lax`, expected `serving` or `strict`"
    );

    let issues = parse(&format!("{MINIMAL}admin:\n  stall_timeout: 0s\n")).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "admin.stall_timeout", "{issues:?}");

    // A render waits on its checks and actions: the loop may take that long.
    let waits = "    check: [\"true\"]\n    check_timeout: 2m\nactions:\n  - {http: {url: \"http://127.0.0.1:1/\", timeout: 1m, retries: 2}}\n";
    let text = format!("{MINIMAL}{waits}admin:\n  stall_timeout: 3m\n");
    let issues = parse(&text).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "admin.stall_timeout", "{issues:?}");
    assert_eq!(
        issues[0].message,
        "3m is not longer than actions.0.timeout × 3 attempts (3m): a render waiting on it would count as a stopped pipeline loop"
    );
    assert!(parse(&format!("{MINIMAL}{waits}admin:\n  stall_timeout: 181s\n")).is_ok());
}

#[test]
fn an_absurd_wait_is_a_config_error_naming_it() {
    // Long enough to overflow the clock when added to it, short enough for
    // the duration parser.
    let issues = parse(&format!("{MINIMAL}render:\n  wait: {{min: 1s, max: 300000000000y}}\n")).unwrap_err();
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert_eq!(issues.len(), 1, "{text:?}");
    assert_eq!(issues[0].path, "render.wait.max");
    assert!(
        text[0].contains("`300000000000y` is too long: a render waits at most 1day"),
        "{text:?}"
    );
    let issues = parse(&format!("{MINIMAL}render:\n  wait: {{min: 584942417355y}}\n")).unwrap_err();
    assert!(issues[0].message.contains("`584942417355y`"), "{}", issues[0]);
    assert!(parse(&format!("{MINIMAL}render:\n  wait: {{min: 1s, max: 1day}}\n")).is_ok());
}

#[test]
fn signal_names_are_read_with_or_without_sig_in_any_case() {
    use nix::sys::signal::Signal;
    assert_eq!(parse_signal("HUP"), Some(Signal::SIGHUP));
    assert_eq!(parse_signal("sigusr2"), Some(Signal::SIGUSR2));
    assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
    assert_eq!(parse_signal("RELOAD"), None);
    assert_eq!(parse_signal("STOP"), None);
}

#[test]
fn only_numeric_uid_gid_pairs_are_owners() {
    assert_eq!(Owner::parse("99:100"), Some(Owner { uid: 99, gid: 100 }));
    assert_eq!(Owner::parse("0:0").map(|o| o.to_string()).as_deref(), Some("0:0"));
    for bad in [
        "haproxy:haproxy",
        "99",
        "99:",
        ":99",
        "-1:5",
        "+1:5",
        "1:2:3",
        " 1:2",
        "99999999999:1",
    ] {
        assert_eq!(Owner::parse(bad), None, "{bad}");
    }
}

#[test]
fn validate_formats_are_named_in_lowercase() {
    for name in ValidateFormat::NAMES {
        assert_eq!(ValidateFormat::parse(name).unwrap().name(), *name);
    }
    assert_eq!(ValidateFormat::parse("xml"), None);
    assert_eq!(ValidateFormat::parse("JSON"), None);
}

#[test]
fn colliding_and_empty_delimiters_are_named() {
    let pair = |s: &str, e: &str| Some((s.to_string(), e.to_string()));
    let distinct = Syntax {
        variable: pair("[[", "]]"),
        block: pair("[%", "%]"),
        comment: None,
    };
    assert!(distinct.problems().is_empty());
    let same = Syntax {
        variable: pair("{%", "%}"),
        ..Syntax::default()
    };
    assert_eq!(
        same.problems(),
        ["`block` starts with `{%` and `variable` with `{%`: they collide; give each its own start"]
    );
    let prefix = Syntax {
        variable: pair("[", "]"),
        block: pair("[%", "%]"),
        ..Syntax::default()
    };
    assert_eq!(prefix.problems().len(), 1, "{:?}", prefix.problems());
    let empty = Syntax {
        comment: pair("", "#]"),
        ..Syntax::default()
    };
    assert_eq!(empty.problems(), ["`comment` delimiters must not be empty or blank"]);
}
