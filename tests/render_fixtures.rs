//! Fixture tests of `kube-template render`: each directory under
//! `tests/fixtures/` holds a `config.yaml`, `manifests/`, and either
//! `expected/` (the output tree after a successful render) or `error.txt`
//! (lines the error message must contain; exit status on the first line as
//! `exit: N`), or both (a render that failed in some groups: the error, and
//! the tree the other groups wrote). An optional `previous/` tree is put in
//! place first: after a failed render it must be exactly as it was, or as
//! `expected/` says when the case has both.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/files.rs"]
mod files;
use files::tree;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kube-template")
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in tree(from) {
        let target = to.join(rel);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(target, bytes).unwrap();
    }
}

fn show(files: &BTreeMap<String, Vec<u8>>) -> String {
    files
        .iter()
        .map(|(name, bytes)| format!("== {name}\n{}", String::from_utf8_lossy(bytes)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn render(config: &Path, manifests: &Path, out: &Path) -> std::process::Output {
    Command::new(binary())
        .args(["render", "-c"])
        .arg(config)
        .arg("--from")
        .arg(manifests)
        .arg("--out")
        .arg(out)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

/// Runs one case; returns a description of what went wrong, if anything.
fn run_case(case: &Path) -> Option<String> {
    let out = tempfile::tempdir().unwrap();
    let previous = case.join("previous");
    if previous.is_dir() {
        copy_tree(&previous, out.path());
    }
    let before = tree(out.path());
    let result = render(&case.join("config.yaml"), &case.join("manifests"), out.path());
    let stderr = String::from_utf8_lossy(&result.stderr);
    let after = tree(out.path());
    let error_spec = case.join("error.txt");
    if case.join("expected").is_dir() && !error_spec.exists() {
        if !result.status.success() {
            return Some(format!("render failed ({}):\n{stderr}", result.status));
        }
        let expected = tree(&case.join("expected"));
        if after != expected {
            return Some(format!(
                "output differs.\n--- expected:\n{}\n--- actual:\n{}",
                show(&expected),
                show(&after)
            ));
        }
        return None;
    }
    let spec = fs::read_to_string(&error_spec).expect("a case has expected/ or error.txt");
    let mut lines = spec.lines();
    let exit: i32 = lines
        .next()
        .and_then(|l| l.strip_prefix("exit: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("error.txt starts with `exit: N`");
    if result.status.code() != Some(exit) {
        return Some(format!(
            "exit status {:?}, expected {exit}:\n{stderr}",
            result.status.code()
        ));
    }
    for needle in lines.filter(|l| !l.trim().is_empty()) {
        if !stderr.contains(needle) {
            return Some(format!("the error lacks {needle:?}:\n{stderr}"));
        }
    }
    if case.join("expected").is_dir() {
        let expected = tree(&case.join("expected"));
        if after != expected {
            return Some(format!(
                "the groups that rendered did not write what expected/ holds.\n--- expected:\n{}\n--- actual:\n{}",
                show(&expected),
                show(&after)
            ));
        }
        return None;
    }
    if after != before {
        return Some(format!(
            "a failed render changed files.\n--- before:\n{}\n--- after:\n{}",
            show(&before),
            show(&after)
        ));
    }
    None
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_fixture_renders_as_expected() {
    let cases = cases();
    assert!(cases.len() >= 10, "fixtures are missing");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            run_case(case).map(|why| format!("### {}\n{why}", case.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The shipped examples render byte for byte what their `expected/` holds,
/// every time.
#[test]
fn examples_render_their_expected_outputs_on_every_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for example in ["haproxy", "dashboards", "grafana"] {
        let dir = root.join(example);
        let out = tempfile::tempdir().unwrap();
        for run in 1..=2 {
            let result = render(&dir.join("config.yaml"), &dir.join("manifests"), out.path());
            assert!(
                result.status.success(),
                "{example} run {run}: {}",
                String::from_utf8_lossy(&result.stderr)
            );
            assert_eq!(tree(out.path()), tree(&dir.join("expected")), "{example} run {run}");
        }
    }
}

/// `render` with no `--out` writes where the config says, relative to the
/// config file.
#[test]
fn render_without_out_writes_the_configured_paths() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("config.yaml"),
        "templates:\n  t:\n    inline: \"{{ resources | length }} stores\\n\"\n    path: out/t.txt\n",
    )
    .unwrap();
    fs::create_dir(dir.path().join("m")).unwrap();
    let result = Command::new(binary())
        .args(["render", "-c"])
        .arg(dir.path().join("config.yaml"))
        .arg("--from")
        .arg(dir.path().join("m"))
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(fs::read_to_string(dir.path().join("out/t.txt")).unwrap(), "0 stores\n");
}

/// A directory output may hold more files than the process may keep open:
/// staged files are closed before they are renamed into place.
#[test]
fn a_directory_output_may_have_more_files_than_open_files_allowed() {
    const FILES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("config.yaml"),
        "watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\ntemplates:\n  t:\n    inline: \"{% for cm in resources.cms %}{% for k, v in cm.data|items %}{{ file(k, v) }}{% endfor %}{% endfor %}\"\n    directory: out\n",
    )
    .unwrap();
    let data: serde_json::Map<String, serde_json::Value> = (0..FILES)
        .map(|i| (format!("file-{i:04}"), format!("{i}\n").into()))
        .collect();
    let manifest =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "many"}, "data": data});
    fs::create_dir(dir.path().join("m")).unwrap();
    fs::write(dir.path().join("m/cm.json"), manifest.to_string()).unwrap();
    // `ulimit -n 128`: far fewer open files than the output has.
    let result = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 128 && exec \"$0\" render -c \"$1\" --from \"$2\"")
        .arg(binary())
        .arg(dir.path().join("config.yaml"))
        .arg(dir.path().join("m"))
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let written = tree(&dir.path().join("out"));
    assert_eq!(written.len(), FILES);
    assert_eq!(written["file-0599"], b"599\n");
}
