//! Outputs staged as the renderer produces them (`stage`): what streaming
//! could break, through the real renderer and the pipeline's staging.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;

use crate::output::{self, STAGING_PREFIX};
use crate::pipeline::{self, Prepared};
use crate::redact::Redactor;

/// A config over `cms` with one template `t` (`entry`: the YAML of the
/// rest of it) and `render:` settings.
fn prepared(dir: &Path, entry: &str, render: &str) -> Prepared {
    let text =
        format!("watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap}}\ntemplates:\n  t:\n{entry}{render}");
    pipeline::prepare_text(&text, &dir.join("c.yaml"), dir).unwrap()
}

/// ConfigMaps `cm0000`… each with `data.v` = `value(i)`.
fn cms(n: usize, value: impl Fn(usize) -> String) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "ns", "name": format!("cm{i:04}")}, "data": {"v": value(i)}}))
        .collect()
}

async fn render(prepared: &Prepared, objects: &[serde_json::Value]) -> Result<output::Report, String> {
    let stores = pipeline::stores_from(&prepared.config, objects);
    let snapshot = pipeline::snapshot(&stores);
    let staged = pipeline::stage(prepared, &snapshot, |_| true, None).map_err(|e| e.to_string())?;
    output::write_staged(staged, &Redactor::default())
        .await
        .map_err(|e| e.to_string())
}

/// Names in `dir` and below that are staged files.
fn staged_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.extend(staged_files(&entry.path()));
        } else if name.starts_with(STAGING_PREFIX) {
            found.push(name);
        }
    }
    found
}

#[tokio::test]
async fn a_render_failing_midway_through_a_directory_leaves_no_staged_file_and_the_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let good = prepared(
        dir.path(),
        "    inline: \"{% for c in resources.cms %}{{ file(c.metadata.name, c.data.v) }}{% endfor %}\"\n    directory: out\n",
        "",
    );
    render(&good, &cms(3, |i| format!("old {i}"))).await.unwrap();
    // Two files are staged (one new), then the render fails.
    let failing = prepared(
        dir.path(),
        "    inline: \"{% for c in resources.cms %}{{ file(c.metadata.name, c.data.v) }}{% endfor %}{{ file('new', 'x') }}{{ file('sub/new', 'x') }}{{ nothing.here }}\"\n    directory: out\n",
        "",
    );
    let error = render(&failing, &cms(2, |i| format!("new {i}"))).await.unwrap_err();
    assert!(error.contains("nothing"), "{error}");
    assert_eq!(staged_files(&out), Vec::<String>::new());
    for i in 0..3 {
        assert_eq!(
            fs::read_to_string(out.join(format!("cm{i:04}"))).unwrap(),
            format!("old {i}")
        );
    }
    assert!(!out.join("new").exists());
    assert!(!out.join("sub").exists(), "no directory made for the render is left");

    // A first render that fails leaves no output directory behind either.
    let fresh = prepared(
        dir.path(),
        "    inline: \"{{ file('a/b', 'x') }}{{ nothing.here }}\"\n    directory: fresh/out\n",
        "",
    );
    render(&fresh, &[]).await.unwrap_err();
    assert!(!dir.path().join("fresh").exists());
}

#[tokio::test]
async fn an_oversize_output_stops_the_render_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let entry = "    inline: \"{% for c in resources.cms %}{{ c.data.v }}{% endfor %}\"\n    path: out.txt\n";
    let limit = "render: {max_output_bytes: 200KiB}\n";
    let t = prepared(dir.path(), entry, limit);
    render(&t, &cms(10, |_| "a".repeat(1000))).await.unwrap();
    // 100 × 4 KiB: past the limit at the 51st object.
    let error = render(&t, &cms(100, |_| "b".repeat(4096))).await.unwrap_err();
    assert!(error.contains("max_output_bytes"), "{error}");
    assert_eq!(
        fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "a".repeat(10_000)
    );
    assert_eq!(staged_files(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_streamed_file_is_rewritten_only_when_its_bytes_change_and_then_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let t = prepared(
        dir.path(),
        "    inline: \"{% for c in resources.cms %}{{ c.data.v }}\\n{% endfor %}\"\n    path: out.txt\n",
        "",
    );
    // Far larger than what is compared at once.
    let line = |i: usize| format!("{i:06} {}", "x".repeat(1000));
    let expected = |n: usize, line: &dyn Fn(usize) -> String| (0..n).map(|i| line(i) + "\n").collect::<String>();
    render(&t, &cms(300, line)).await.unwrap();
    let before = fs::metadata(&path).unwrap();
    let report = render(&t, &cms(300, line)).await.unwrap();
    assert!(!report.changed(), "{report:?}");
    let after = fs::metadata(&path).unwrap();
    assert_eq!(
        (after.ino(), after.modified().unwrap()),
        (before.ino(), before.modified().unwrap())
    );

    // Different from the 250th line on, then shorter, then longer: the
    // bytes found equal before the difference are in the new file too.
    let changed = |i: usize| if i < 250 { line(i) } else { format!("{i:06} changed") };
    for (n, line) in [(300, &changed as &dyn Fn(usize) -> String), (200, &line), (400, &line)] {
        let report = render(&t, &cms(n, line)).await.unwrap();
        assert_eq!(report.written, std::slice::from_ref(&path));
        assert_eq!(fs::read_to_string(&path).unwrap(), expected(n, line), "{n} lines");
    }
    assert_eq!(staged_files(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn check_and_validate_see_the_whole_streamed_file() {
    let dir = tempfile::tempdir().unwrap();
    let entry = "    inline: \"[{% for c in resources.cms %}{{ c.data.v | tojson }}{{ ',' if not loop.last }}{% endfor %}]\"\n    path: out.json\n    validate: json\n    check: [\"sh\", \"-c\", \"tail -c 1 {file} | grep -q ']' && test $(wc -c < {file}) -gt 300000\"]\n";
    let t = prepared(dir.path(), entry, "");
    render(&t, &cms(300, |i| format!("{i} {}", "y".repeat(1000))))
        .await
        .unwrap();
    let written: Vec<String> = serde_json::from_slice(&fs::read(dir.path().join("out.json")).unwrap()).unwrap();
    assert_eq!(written.len(), 300);

    // A file that stops being valid JSON only at its very end.
    let broken = "    inline: \"[{% for c in resources.cms %}{{ c.data.v | tojson }},{% endfor %}\"\n    path: out.json\n    validate: json\n";
    let t = prepared(dir.path(), broken, "");
    let error = render(&t, &cms(300, |i| format!("{i} {}", "z".repeat(1000))))
        .await
        .unwrap_err();
    assert!(error.contains("is not valid json"), "{error}");
    let kept: Vec<String> = serde_json::from_slice(&fs::read(dir.path().join("out.json")).unwrap()).unwrap();
    assert!(kept[0].ends_with('y'), "the old file is kept");
}

#[tokio::test]
async fn a_directory_emitting_a_name_twice_is_checked_by_content_without_keeping_it() {
    let dir = tempfile::tempdir().unwrap();
    let twice = |second: &str| {
        format!("    inline: \"{{{{ file('a', 'same') }}}}{{{{ file('a', '{second}') }}}}\"\n    directory: out\n")
    };
    let same = prepared(dir.path(), &twice("same"), "");
    render(&same, &[]).await.unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("out/a")).unwrap(), "same");
    let different = prepared(dir.path(), &twice("other"), "");
    let error = render(&different, &[]).await.unwrap_err();
    assert!(error.contains("emitted twice with different content"), "{error}");
}
