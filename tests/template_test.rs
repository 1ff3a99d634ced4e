//! `kube-template test`: the template test cases of every example pass, a
//! changed expectation fails with a unified diff, `--update` rewrites the
//! expectation, and broken cases or configs say what is wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn kube_template(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(args)
        .output()
        .expect("run kube-template")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A copy of `examples/NAME` in a scratch directory, to change freely.
fn copy_example(name: &str) -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&examples().join(name), scratch.path());
    scratch
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn config(dir: &Path) -> String {
    dir.join("config.yaml").to_string_lossy().into_owned()
}

#[test]
fn the_test_cases_of_every_example_pass() {
    for example in ["haproxy", "dashboards", "grafana"] {
        let output = kube_template(&["test", "-c", &config(&examples().join(example))]);
        let out = stdout(&output);
        assert!(
            output.status.success(),
            "{example}:\n{out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(out.ends_with(" passed, 0 failed\n"), "{example}: {out}");
        assert!(!out.contains("FAIL"), "{example}: {out}");
    }
}

#[test]
fn a_changed_expectation_fails_with_a_unified_diff_and_update_accepts_the_render() {
    let dir = copy_example("haproxy");
    let expected = dir.path().join("tests/missing-service/expect/out/haproxy.cfg");
    let original = fs::read_to_string(&expected).unwrap();
    fs::write(&expected, original.replace("status 503", "status 502")).unwrap();

    let output = kube_template(&["test", "-c", &config(dir.path()), "missing-service"]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL missing-service"), "{out}");
    assert!(
        out.contains("--- expect/out/haproxy.cfg\n+++ rendered/out/haproxy.cfg\n"),
        "{out}"
    );
    assert!(
        out.contains("-    http-request return status 502\n+    http-request return status 503\n"),
        "{out}"
    );
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");

    let output = kube_template(&["test", "-c", &config(dir.path()), "--update", "missing-service"]);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("changed "), "{out}");
    assert_eq!(fs::read_to_string(&expected).unwrap(), original);
    let output = kube_template(&["test", "-c", &config(dir.path())]);
    assert!(output.status.success(), "{}", stdout(&output));
}

#[test]
fn an_expected_error_that_does_not_come_fails_the_case() {
    let dir = copy_example("haproxy");
    let case = dir.path().join("tests/rule-without-http");
    fs::write(case.join("expect_error"), "line 99\n").unwrap();
    let output = kube_template(&["test", "-c", &config(dir.path()), "rule-without-http"]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("the error does not contain [\"line 99\"]"), "{out}");
    assert!(out.contains("`rule.http` is undefined"), "{out}");
}

#[test]
fn a_case_without_manifests_or_expectation_is_a_failing_case_that_says_so() {
    let dir = copy_example("dashboards");
    fs::create_dir_all(dir.path().join("tests/empty")).unwrap();
    fs::create_dir_all(dir.path().join("tests/unexpected/manifests")).unwrap();
    let output = kube_template(&["test", "-c", &config(dir.path())]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("tests/empty: no manifests/ folder"), "{out}");
    assert!(
        out.contains("tests/unexpected: no expect/ folder or expect_error file"),
        "{out}"
    );
    assert!(out.ends_with("2 passed, 2 failed\n"), "{out}");
}

#[test]
fn unknown_case_names_and_bad_configs_exit_64() {
    let dir = copy_example("dashboards");
    let output = kube_template(&["test", "-c", &config(dir.path()), "nope"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(err.contains("no test case `nope`"), "{err}");
    assert!(err.contains("cases: folders, same-file-twice"), "{err}");

    fs::write(dir.path().join("config.yaml"), "templates: {}\nbogus: 1\n").unwrap();
    let output = kube_template(&["test", "-c", &config(dir.path())]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(err.contains("bogus"), "{err}");

    let bare = tempfile::tempdir().unwrap();
    fs::copy(
        examples().join("dashboards/config.yaml"),
        bare.path().join("config.yaml"),
    )
    .unwrap();
    copy_dir(&examples().join("dashboards/templates"), &bare.path().join("templates"));
    let output = kube_template(&["test", "-c", &config(bare.path())]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(err.contains("no test cases"), "{err}");
}

#[test]
fn rendering_a_case_leaves_the_configured_outputs_alone() {
    let dir = copy_example("dashboards");
    let output = kube_template(&["test", "-c", &config(dir.path())]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(
        !dir.path().join("out").exists(),
        "test wrote into the configured output paths"
    );
}
