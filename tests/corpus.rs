//! The bad-input corpus (`tests/corpus/`): configs and templates that are each
//! wrong in one way, beside the error they must give.
//!
//! - `config/<case>.yaml`: run through `check -c` and through
//!   `render -c … --from manifests/ --out DIR`.
//! - `templates/<case>.j2`: rendered by `render` through a generated config
//!   that has it as one template (a `directory` output when its first line is
//!   `{# directory #}`, a `path` otherwise) beside a good one.
//!
//! Names that start with `_` are helpers the cases use, not cases.
//!
//! `<case>.error` holds `exit: N` on its first line (64: a config error, as a
//! template that does not compile is; 1: a failed render), then lines that
//! stderr must contain. They pin the location: a config case has a line that
//! starts with `<case>.yaml:` and the line:column or YAML path, a template case
//! one that names `<case>.j2`. Every run starts from a populated output tree that must be
//! byte for byte the same afterwards, and no error may show Secret data.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "support/files.rs"]
mod files;
use files::tree;

/// The data of the Secret in `manifests/`, plain and base64: never in an error.
const SECRET: [&str; 2] = ["corpus-secret-value", "Y29ycHVzLXNlY3JldC12YWx1ZQ=="];

/// What a template case renders with: low limits, so that endless loops and
/// huge outputs fail fast.
const RENDER_LIMITS: &str = "render:\n  fuel: 100000\n  max_output_bytes: 64KiB\n";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn kube_template(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn check(config: &Path) -> Output {
    kube_template(&["check".as_ref(), "-c".as_ref(), config.as_os_str()])
}

fn render(config: &Path, out: &Path) -> Output {
    let manifests = corpus().join("manifests");
    kube_template(&[
        "render".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
        "--from".as_ref(),
        manifests.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// An output tree as a previous good render left it: the paths the cases
/// write to hold other bytes, so that any write shows.
fn previous_outputs(root: &Path) {
    for (path, text) in [
        ("out/t.txt", "previous t\n"),
        ("out/u.txt", "previous u\n"),
        ("out/other.txt", "previous other\n"),
        ("out/d/previous.txt", "previous d\n"),
        ("out/ok.txt", "previous ok\n"),
        ("out/case.txt", "previous case\n"),
        ("out/case/previous.txt", "previous case file\n"),
    ] {
        write(&root.join(path), text);
    }
}

/// `<case>.error`: the exit status and the lines stderr must contain.
struct Expected {
    exit: i32,
    lines: Vec<String>,
}

fn expected(path: &Path) -> Result<Expected, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let exit = lines
        .next()
        .and_then(|l| l.strip_prefix("exit: "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("{} does not start with `exit: N`", path.display()))?;
    let lines: Vec<String> = lines.filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    if lines.is_empty() {
        return Err(format!("{} names no error line", path.display()));
    }
    Ok(Expected { exit, lines })
}

/// Checks one run against what was expected; `what` names the run.
fn verdict(what: &str, run: &Output, expected: &Expected) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&run.stderr);
    let mut problems = Vec::new();
    if run.status.code() != Some(expected.exit) {
        problems.push(format!(
            "exit status {:?}, expected {}",
            run.status.code(),
            expected.exit
        ));
    }
    for line in &expected.lines {
        if !stderr.contains(line.as_str()) {
            problems.push(format!("stderr lacks {line:?}"));
        }
    }
    for secret in SECRET {
        if stderr.contains(secret) || String::from_utf8_lossy(&run.stdout).contains(secret) {
            problems.push("the output shows Secret data".to_string());
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!("{what}: {}\n--- stderr:\n{stderr}", problems.join("; ")))
}

fn untouched(what: &str, before: &BTreeMap<String, Vec<u8>>, root: &Path) -> Result<(), String> {
    let after = tree(root);
    if after == *before {
        return Ok(());
    }
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    Err(format!("{what} changed the outputs: {changed:?}"))
}

/// A config case: `check` and `render` both refuse it, naming the problem,
/// and write nothing.
fn config_case(name: &str) -> Result<(), String> {
    let dir = corpus().join("config");
    let expected = expected(&dir.join(format!("{name}.error")))?;
    if !expected.lines.iter().any(|l| l.starts_with(&format!("{name}.yaml:"))) {
        return Err(format!(
            "{name}.error: a line must start with `{name}.yaml:` and the position or YAML path"
        ));
    }
    let config = dir.join(format!("{name}.yaml"));
    verdict("check", &check(&config), &expected)?;
    let out = tempfile::tempdir().unwrap();
    previous_outputs(out.path());
    let before = tree(out.path());
    verdict("render", &render(&config, out.path()), &expected)?;
    untouched("render", &before, out.path())
}

/// The config a template case renders with: its template beside a good one,
/// in a copy of `templates/` so that includes resolve as they would.
fn template_setup(name: &str, text: &str) -> tempfile::TempDir {
    let setup = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(corpus().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "j2") {
            fs::create_dir_all(setup.path().join("templates")).unwrap();
            fs::copy(&path, setup.path().join("templates").join(path.file_name().unwrap())).unwrap();
        }
    }
    let output = if text.starts_with("{# directory #}") {
        "directory: out/case"
    } else {
        "path: out/case.txt"
    };
    let config = format!(
        "watched_resources:\n  cms:\n    api_version: v1\n    kind: ConfigMap\n  secrets:\n    api_version: v1\n    kind: Secret\n    store: on-demand\ntemplates:\n  ok:\n    inline: \"{{{{ resources.cms | length }}}} config maps\\n\"\n    path: out/ok.txt\n  case:\n    source: templates/{name}.j2\n    {output}\n{RENDER_LIMITS}"
    );
    write(&setup.path().join("config.yaml"), &config);
    setup
}

/// A template case: the render fails (or, for a template that does not
/// compile, `check` and `render` refuse the config), naming the template and
/// line, and no output changes.
fn template_case(name: &str) -> Result<(), String> {
    let dir = corpus().join("templates");
    let expected = expected(&dir.join(format!("{name}.error")))?;
    if !expected.lines.iter().any(|l| l.contains(&format!("{name}.j2"))) {
        return Err(format!("{name}.error: a line must name `{name}.j2` and its line"));
    }
    let text = fs::read_to_string(dir.join(format!("{name}.j2"))).unwrap();
    let setup = template_setup(name, &text);
    let config = setup.path().join("config.yaml");
    if expected.exit == 64 {
        verdict("check", &check(&config), &expected)?;
    }
    let out = tempfile::tempdir().unwrap();
    previous_outputs(out.path());
    let before = tree(out.path());
    verdict("render", &render(&config, out.path()), &expected)?;
    untouched("render", &before, out.path())
}

/// The cases of one corpus directory: the files with extension `ext` that
/// are not `_` helpers. Every case needs its `.error` and every `.error` its
/// case; anything else in the directory is a mistake too.
fn cases(dir: &Path, ext: &str) -> (Vec<String>, Vec<String>) {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    let mut problems = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('_') {
            continue;
        }
        match name.rsplit_once('.') {
            Some((stem, e)) if e == ext => cases.push(stem.to_string()),
            Some((stem, "error")) => errors.push(stem.to_string()),
            _ => problems.push(format!("{name}: neither a case, its `.error`, nor a `_` helper")),
        }
    }
    for case in &cases {
        if !errors.contains(case) {
            problems.push(format!("{case}.{ext} has no {case}.error"));
        }
    }
    for error in &errors {
        if !cases.contains(error) {
            problems.push(format!("{error}.error has no {error}.{ext}"));
        }
    }
    cases.sort();
    (cases, problems)
}

/// Runs `run` on every case on two threads; returns the failures.
fn run_all(cases: &[String], run: fn(&str) -> Result<(), String>) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(why) = run(case) {
                        failures.lock().unwrap().push(format!("### {case}\n{why}"));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    failures
}

fn assert_corpus(kind: &str, ext: &str, run: fn(&str) -> Result<(), String>) {
    let dir = corpus().join(kind);
    let before = tree(&corpus());
    let (cases, mut failures) = cases(&dir, ext);
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    failures.extend(run_all(&cases, run));
    if let Err(why) = untouched("the corpus run", &before, &corpus()) {
        failures.push(why);
    }
    assert!(
        failures.is_empty(),
        "{} of {} {kind} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_bad_config_is_refused_with_its_position_and_writes_nothing() {
    assert_corpus("config", "yaml", config_case);
}

#[test]
fn every_bad_template_fails_with_its_line_and_writes_nothing() {
    assert_corpus("templates", "j2", template_case);
}

/// The harness can see a write: the same setups with a good config or
/// template render and change the output tree, and `check` passes.
#[test]
fn a_good_config_and_template_do_change_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    write(
        &config,
        "watched_resources:\n  cms:\n    api_version: v1\n    kind: ConfigMap\ntemplates:\n  t:\n    inline: \"{{ resources.cms | length }}\\n\"\n    path: out/t.txt\n",
    );
    let out = tempfile::tempdir().unwrap();
    previous_outputs(out.path());
    let before = tree(out.path());
    let run = check(&config);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let run = render(&config, out.path());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(untouched("render", &before, out.path()).is_err());
    assert_eq!(fs::read_to_string(out.path().join("out/t.txt")).unwrap(), "2\n");

    for (name, text, written) in [
        ("good", "{{ resources.secrets | length }} secret\n", "out/case.txt"),
        (
            "good_directory",
            "{# directory #}{{ file(\"a.txt\", resources.cms | length) }}",
            "out/case/a.txt",
        ),
    ] {
        let setup = template_setup(name, text);
        write(&setup.path().join(format!("templates/{name}.j2")), text);
        let out = tempfile::tempdir().unwrap();
        previous_outputs(out.path());
        let run = render(&setup.path().join("config.yaml"), out.path());
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(
            fs::read_to_string(out.path().join("out/ok.txt")).unwrap(),
            "2 config maps\n",
            "{name}"
        );
        assert!(out.path().join(written).is_file(), "{name}: {written} not written");
    }
}

#[test]
fn a_log_filter_that_does_not_parse_is_refused_naming_it() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let run = kube_template(&[
        "check".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
        "--log-level".as_ref(),
        "kube_template=loud".as_ref(),
    ]);
    assert_eq!(run.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--log-level `kube_template=loud` is not a log level"),
        "{stderr}"
    );

    let run = Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(["check", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info,x=[")
        .output()
        .expect("the binary runs");
    assert_eq!(run.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("RUST_LOG `info,x=[`"), "{stderr}");
}

#[test]
fn a_config_named_relative_to_the_working_directory_writes_a_file_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("config.yaml"),
        "templates:\n  t:\n    path: out.txt\n    inline: \"hi\\n\"\n",
    );
    fs::create_dir(dir.path().join("manifests")).unwrap();
    for once in [false, true] {
        let run = if once {
            Command::new(env!("CARGO_BIN_EXE_kube-template"))
                .args(["run", "-c", "config.yaml", "--from", "manifests", "--once"])
                .current_dir(dir.path())
                .output()
        } else {
            Command::new(env!("CARGO_BIN_EXE_kube-template"))
                .args(["render", "-c", "config.yaml", "--from", "manifests"])
                .current_dir(dir.path())
                .output()
        }
        .expect("the binary runs");
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(fs::read_to_string(dir.path().join("out.txt")).unwrap(), "hi\n");
        fs::remove_file(dir.path().join("out.txt")).unwrap();
    }
}
