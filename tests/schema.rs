//! `kube-template schema`: the printed JSON Schema is the checked-in
//! `schema/config.schema.json`, every good config of the repository passes
//! it, and every bad one of `tests/corpus/config/` whose problem a schema can
//! see fails it. The validator is `boon`, independent of schemars, which
//! writes the schema.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kube_template::config::yaml::Node;
use serde_json::Value;

/// Where the schema is checked in, relative to the repository.
const SCHEMA_FILE: &str = "schema/config.schema.json";

/// What editors read: `# yaml-language-server: $schema=<path>`.
const MODELINE: &str = "# yaml-language-server: $schema=";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The output of `kube-template schema`.
fn printed_schema() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .arg("schema")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the schema is UTF-8")
}

/// The printed schema, compiled by boon.
struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Validator {
    fn new() -> Validator {
        let schema: Value = serde_json::from_str(&printed_schema()).expect("the schema is JSON");
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        let url = "urn:kube-template:config";
        compiler.add_resource(url, schema).expect("the schema is added");
        let index = compiler
            .compile(url, &mut schemas)
            .unwrap_or_else(|e| panic!("the schema does not compile: {e:#}"));
        Validator { schemas, index }
    }

    /// The schema's verdict on a YAML config: `Err` with boon's explanation.
    fn check(&self, path: &Path) -> Result<(), String> {
        let text = fs::read_to_string(path).unwrap();
        self.check_text(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn check_text(&self, text: &str) -> Result<(), String> {
        let config = Node::parse(text).map_err(|e| format!("not YAML: {e}"))?.to_json();
        self.schemas.validate(&config, self.index).map_err(|e| format!("{e:#}"))
    }
}

#[test]
fn printed_schema_is_the_checked_in_file() {
    let printed = printed_schema();
    let checked_in = fs::read_to_string(repo().join(SCHEMA_FILE)).unwrap_or_default();
    assert!(
        printed == checked_in,
        "{SCHEMA_FILE} differs from `kube-template schema`; regenerate it with\n  \
         cargo run -- schema > {SCHEMA_FILE}"
    );
    let schema: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

/// Values at the edges of what `check` accepts, and sections left empty.
const EDGE_CASES: &[&str] = &[
    r#"
watched_resources:
  cms:
    api_version: v1
    kind: ConfigMap
    namespaces: [default, kube-system]
    store: on-demand
    index_by: [metadata.name]
    on_missing_key: skip
    cache: {ttl: 1m30s, max_entries: 1}
  ings: {api_version: networking.k8s.io/v1, kind: Ingress, label_selector: "app in (a,b)"}
templates:
  t:
    inline: "{{ 1 }}"
    path: out/t.txt
    mode: "0o600"
    owner: "101:101"
    check: [sh, -c, ""]
    check_timeout: 1h 30m
    validate: none
    syntax: {block: ["<%", "%>"], variable: ["<<", ">>"]}
    guard: {max_shrink: 0%, hold: 10m}
  u: {inline: "", directory: out/u, group: g, validate: json, fsync: true, mode: "600"}
actions:
  - {signal: sighup, process: haproxy}
  - {signal: SIGUSR2, pid_file: run/haproxy.pid}
  - {command: [sh, -c, ""], timeout: 1.5s}
  - {http: {url: "https://127.0.0.1:9/reload", method: PUT, retries: 2, headers: {A: b}}}
actions_on_start: skip
groups:
  g: {wait: {min: 0s, max: 1day}, actions_on_start: run, actions: [{command: ["true"]}]}
exec: {reload_signal: usr1, kill_signal: Term, kill_timeout: 10s}
render: {max_output_bytes: 10 KB, fuel: 1, wait: {min: 200ms}, fetch: {timeout: 5s, max_entries: 1, headers: {A: b}}}
admin: {listen: "[::]:9090", readiness: strict, stall_timeout: 2h}
status: {config_map: kube-template.status, namespace: default}
"#,
    "watched_resources:\nactions:\ngroups:\nexec:\nrender:\nadmin:\nstatus:\ntemplates:\n  t: {source: t.j2, path: t.txt}\n",
    "templates:\n  t: {inline: x, path: t.txt}\nrender: {max_output_bytes: 4096}\n",
];

#[test]
fn what_check_accepts_the_schema_accepts() {
    let validator = Validator::new();
    for text in EDGE_CASES {
        let parsed = kube_template::config::Config::parse(text, Path::new("config.yaml"), Path::new(""));
        assert!(parsed.is_ok(), "check refuses it: {:?}\n{text}", parsed.err());
        if let Err(e) = validator.check_text(text) {
            panic!("the schema refuses what check accepts:\n{e}\n{text}");
        }
    }
}

/// `config.example.yaml` and the `config.yaml` of each example.
fn example_configs() -> Vec<PathBuf> {
    let mut configs = vec![repo().join("config.example.yaml")];
    for entry in fs::read_dir(repo().join("examples")).unwrap() {
        let config = entry.unwrap().path().join("config.yaml");
        if config.is_file() {
            configs.push(config);
        }
    }
    assert!(configs.len() >= 4, "{configs:?}");
    configs
}

#[test]
fn every_example_config_points_editors_at_the_schema() {
    let schema = fs::canonicalize(repo().join(SCHEMA_FILE)).unwrap();
    for config in example_configs() {
        let text = fs::read_to_string(&config).unwrap();
        let target = text
            .lines()
            .find_map(|line| line.strip_prefix(MODELINE))
            .unwrap_or_else(|| panic!("{}: no `{MODELINE}…` line", config.display()));
        let resolved = config.parent().unwrap().join(target.trim());
        assert_eq!(
            fs::canonicalize(&resolved).ok().as_ref(),
            Some(&schema),
            "{}: `{target}` is not {SCHEMA_FILE}",
            config.display()
        );
    }
}

#[test]
fn every_good_config_of_the_repository_passes_the_schema() {
    let validator = Validator::new();
    let mut checked = 0;
    for config in example_configs() {
        if let Err(e) = validator.check(&config) {
            panic!("{}: refused by the schema:\n{e}", config.display());
        }
        checked += 1;
    }
    // A fixture that expects a config error is a bad config, judged below.
    for entry in fs::read_dir(repo().join("tests/fixtures")).unwrap() {
        let dir = entry.unwrap().path();
        let config = dir.join("config.yaml");
        if !config.is_file() || expected_config_error(&dir).is_some() {
            continue;
        }
        if let Err(e) = validator.check(&config) {
            panic!("{}: refused by the schema:\n{e}", config.display());
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} configs checked");
}

/// The `error.txt` of a fixture whose config does not load (exit 64).
fn expected_config_error(fixture: &Path) -> Option<String> {
    let text = fs::read_to_string(fixture.join("error.txt")).ok()?;
    text.starts_with("exit: 64").then_some(text)
}

/// Problems a schema sees, each by a part of the message the parser gives
/// for it, with what in the schema catches it.
const SCHEMA_LEVEL: &[(&str, &str)] = &[
    ("unknown field", "additionalProperties: false"),
    ("unknown key", "additionalProperties: false at the top"),
    ("invalid type", "type"),
    ("expected a mapping", "type: object"),
    ("expected a list", "type: array"),
    ("expected `run` or `skip`", "the enum of actions_on_start"),
    ("unknown variant", "enum"),
    ("invalid value", "minimum: 0 of whole numbers"),
    ("missing field", "required"),
    ("the config is empty", "type: object, required: templates"),
    ("at least one template is required", "minProperties of templates"),
    ("must be at least 1", "minimum: 1"),
    ("needs at least one expression", "minItems of index_by"),
    ("bad duration", "the Duration pattern"),
    ("bad size", "the ByteSize pattern"),
    ("a size cannot be negative", "minimum: 0 of ByteSize"),
    ("bad file mode", "the FileMode pattern"),
    ("is not a signal", "the Signal enum and pattern"),
    ("unknown format", "the ValidateFormat enum"),
    ("is not a numeric \"UID:GID\"", "the owner pattern"),
    ("has both", "oneOf of required fields"),
    ("needs `", "oneOf of required fields, dependentSchemas of signal"),
    ("only goes with `signal`", "dependentRequired"),
    ("must not be empty", "a pattern or minLength"),
    ("the command is empty", "prefixItems of command and check"),
    ("names a directory", "the path pattern"),
    ("is not an apiVersion", "the api_version pattern"),
    ("is not a kind", "the kind pattern"),
    ("is not a namespace name", "the DNS label pattern"),
    ("is not a ConfigMap name", "the DNS subdomain pattern"),
    ("is not an address to listen on", "the listen pattern"),
    ("is not an http:// or https:// URL", "the url pattern"),
    ("has no host", "the url pattern"),
    ("is not an HTTP method", "the method pattern"),
    ("expected a pair", "minItems and maxItems of syntax"),
    ("is not a percentage", "the max_shrink pattern"),
    ("is the group of the templates without", "propertyNames of groups"),
];

/// Problems only `check` sees, each with why a schema cannot.
const SEMANTIC: &[(&str, &str)] = &[
    ("is given twice", "JSON keeps one of duplicate keys"),
    ("overlaps the output", "compares templates with each other"),
    ("would replace", "compares outputs with the input files"),
    ("which it would remove", "compares outputs with the input files"),
    ("holds template `", "compares outputs with the input files"),
    ("template not found", "reads the disk"),
    ("is outside the config directory", "reads the disk"),
    ("syntax error", "compiles the template"),
    ("unknown group", "compares templates with groups"),
    ("no template has `group:", "compares groups with templates"),
    ("is longer than `max`", "compares two fields"),
    ("is too long", "a pattern cannot bound a duration's length"),
    ("must be longer than 0s", "a pattern cannot tell a zero duration"),
    ("bad selector", "the selector grammar is beyond a pattern"),
    ("bad expression", "the index expression grammar is beyond a pattern"),
    ("indexes by metadata only", "compares store with index_by"),
    ("applies only to `store: on-demand`", "compares cache with store"),
    ("share one watch", "compares entries with each other"),
    ("they collide", "compares delimiters with each other"),
];

/// How a bad config's problems divide: whether any is one a schema sees.
#[derive(Debug, PartialEq)]
enum Verdict {
    SchemaLevel,
    Semantic,
    NotYaml,
}

/// Sorts the problems of an expected error (`<file>:LINE:COL: PATH: MESSAGE`
/// lines, each maybe followed by lines of the message) by [`SCHEMA_LEVEL`]
/// and [`SEMANTIC`]; a problem in neither is an error to fix here.
fn verdict(file_name: &str, expected: &str) -> Result<Verdict, String> {
    let mut problems: Vec<String> = Vec::new();
    for line in expected.lines().skip(1) {
        match line.strip_prefix(file_name).and_then(|rest| rest.strip_prefix(':')) {
            Some(rest) => problems.push(rest.to_string()),
            None => {
                if let Some(problem) = problems.last_mut() {
                    problem.push_str(&format!(" {line}"));
                }
            }
        }
    }
    if problems.is_empty() {
        return Err(format!("no `{file_name}:` line"));
    }
    let mut verdict = Verdict::Semantic;
    for problem in &problems {
        if problem.contains("not valid YAML") {
            return Ok(Verdict::NotYaml);
        }
        let known = |list: &[(&str, &str)]| list.iter().any(|(marker, _)| problem.contains(marker));
        match (known(SCHEMA_LEVEL), known(SEMANTIC)) {
            (true, _) => verdict = Verdict::SchemaLevel,
            (false, true) => {}
            (false, false) => {
                return Err(format!(
                    "`{problem}` is neither in SCHEMA_LEVEL nor in SEMANTIC (tests/schema.rs): add its message there"
                ));
            }
        }
    }
    Ok(verdict)
}

/// Every bad config: corpus cases, and fixtures that expect a config error.
fn bad_configs() -> Vec<(PathBuf, String)> {
    let mut bad = Vec::new();
    let corpus = repo().join("tests/corpus/config");
    for entry in fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.extension().is_some_and(|e| e == "yaml") && !name.starts_with('_') {
            let expected = fs::read_to_string(path.with_extension("error")).unwrap();
            bad.push((path, expected));
        }
    }
    for entry in fs::read_dir(repo().join("tests/fixtures")).unwrap() {
        let dir = entry.unwrap().path();
        if let Some(expected) = expected_config_error(&dir) {
            bad.push((dir.join("config.yaml"), expected));
        }
    }
    bad.sort();
    bad
}

#[test]
fn bad_configs_fail_the_schema_when_their_problem_is_one_it_sees() {
    let validator = Validator::new();
    let mut failures = Vec::new();
    let mut schema_level = 0;
    for (config, expected) in bad_configs() {
        let file_name = config.file_name().unwrap().to_string_lossy().to_string();
        let shown = config.strip_prefix(repo()).unwrap().display().to_string();
        match verdict(&file_name, &expected) {
            Err(e) => failures.push(format!("{shown}: {e}")),
            Ok(Verdict::NotYaml) => {
                let text = fs::read_to_string(&config).unwrap();
                if Node::parse(&text).is_ok() {
                    failures.push(format!("{shown}: expected not to be YAML, but it parses"));
                }
            }
            Ok(Verdict::SchemaLevel) => {
                schema_level += 1;
                if validator.check(&config).is_ok() {
                    failures.push(format!("{shown}: a schema-level problem, but the schema accepts it"));
                }
            }
            // The schema must not refuse what it cannot judge: that would be a
            // problem it sees after all, to be listed in SCHEMA_LEVEL.
            Ok(Verdict::Semantic) => {
                if let Err(e) = validator.check(&config) {
                    failures.push(format!(
                        "{shown}: only semantic problems expected, but the schema refuses it:\n{e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(schema_level >= 60, "only {schema_level} schema-level cases");
}

#[test]
fn a_problem_in_no_list_must_be_classified() {
    let expected = "exit: 64\nx.yaml:3:5: templates.t: something new went wrong\n";
    let err = verdict("x.yaml", expected).unwrap_err();
    assert!(err.contains("something new went wrong"), "{err}");
    let expected = "exit: 64\nx.yaml:3:5: templates.t.path: output\nout/t.txt overlaps the output of template `u`\n";
    assert_eq!(verdict("x.yaml", expected), Ok(Verdict::Semantic));
}

#[test]
fn the_config_k8s_sidecar_mode_makes_passes_the_schema() {
    let validator = Validator::new();
    let out = Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(["k8s-sidecar", "--print-config"])
        .env_clear()
        .envs([
            ("LABEL", "grafana_dashboard"),
            ("FOLDER", "/tmp/dashboards"),
            ("NAMESPACE", "ALL"),
            ("RESOURCE", "both"),
            ("SCRIPT", "/bin/true"),
            (
                "REQ_URL",
                "http://localhost:3000/api/admin/provisioning/dashboards/reload",
            ),
            ("REQ_SKIP_INIT", "true"),
        ])
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("templates:"), "{text}");
    if let Err(e) = validator.check_text(&text) {
        panic!("the schema refuses the config k8s-sidecar mode makes:\n{e}\n{text}");
    }
}
