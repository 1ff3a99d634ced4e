use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;
use crate::config::Config;
use crate::redact::Redactor;

fn template(dir: &Path, yaml: &str) -> Template {
    let text = format!("templates:\n  t:\n    inline: x\n{yaml}");
    let config = Config::parse(&text, &dir.join("c.yaml"), dir).unwrap();
    config.templates["t"].clone()
}

async fn write(template: &Template, content: Content) -> Result<Report> {
    write_all(
        &[Job {
            template,
            target: &template.output,
            content: &content,
        }],
        &Redactor::default(),
    )
    .await
}

#[tokio::test]
async fn unchanged_bytes_are_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    path: out/a.txt\n");
    let first = write(&t, Content::File(b"one".to_vec())).await.unwrap();
    assert_eq!(first.written, [dir.path().join("out/a.txt")]);
    let inode = fs::metadata(dir.path().join("out/a.txt")).unwrap().ino();
    let second = write(&t, Content::File(b"one".to_vec())).await.unwrap();
    assert!(!second.changed(), "{second:?}");
    assert_eq!(fs::metadata(dir.path().join("out/a.txt")).unwrap().ino(), inode);
    let third = write(&t, Content::File(b"two".to_vec())).await.unwrap();
    assert_eq!(third.changed_templates, ["t"]);
    assert_ne!(
        fs::metadata(dir.path().join("out/a.txt")).unwrap().ino(),
        inode,
        "replaced by rename"
    );
}

#[tokio::test]
async fn mode_is_applied_and_fsync_writes_work() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(
        dir.path(),
        "    path: secret.pem\n    mode: \"0600\"\n    fsync: true\n",
    );
    write(&t, Content::File(b"k".to_vec())).await.unwrap();
    let mode = fs::metadata(dir.path().join("secret.pem")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn modes_are_exact_whether_or_not_the_umask_would_clear_their_bits() {
    let dir = tempfile::tempdir().unwrap();
    // 0666 and 04755 lose bits to any usual umask; 0640 to none.
    for (name, mode) in [("open.txt", 0o666), ("setuid.sh", 0o4755), ("group.txt", 0o640)] {
        let t = template(dir.path(), &format!("    path: {name}\n    mode: \"{mode:04o}\"\n"));
        write(&t, Content::File(b"k".to_vec())).await.unwrap();
        let written = fs::metadata(dir.path().join(name)).unwrap().mode() & 0o7777;
        assert_eq!(written, mode, "{name}: {written:o}");
    }
}

#[tokio::test]
async fn no_staged_files_are_left_behind_after_success_or_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ok = template(dir.path(), "    path: a.txt\n");
    write(&ok, Content::File(b"v1".to_vec())).await.unwrap();
    let failing = template(dir.path(), "    path: a.txt\n    check: [\"false\"]\n");
    let err = write(&failing, Content::File(b"v2".to_vec())).await.unwrap_err();
    assert!(matches!(err, Error::CheckFailed { .. }), "{err}");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with(STAGING_PREFIX)).count(),
        0,
        "{names:?}"
    );
    assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"v1");
}

#[tokio::test]
async fn a_file_that_appears_at_a_new_target_before_the_commit_is_replaced_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("a.txt");
    // The check runs between staging (no a.txt yet) and the commit.
    let check = format!("echo theirs > {}", target.display());
    let t = template(
        dir.path(),
        &format!("    path: a.txt\n    check: [\"sh\", \"-c\", {check:?}]\n"),
    );
    let report = write(&t, Content::File(b"ours".to_vec())).await.unwrap();
    assert_eq!(report.written, [dir.path().join("a.txt")]);
    assert_eq!(fs::read(&target).unwrap(), b"ours");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["a.txt"], "nothing staged or kept is left");
}

#[tokio::test]
async fn a_missing_check_program_is_reported_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(
        dir.path(),
        "    path: a.txt\n    check: [\"/nonexistent/validator\", \"{file}\"]\n",
    );
    let err = write(&t, Content::File(b"v".to_vec())).await.unwrap_err();
    assert!(err.to_string().contains("cannot run check"), "{err}");
    assert!(!dir.path().join("a.txt").exists());
}

#[tokio::test]
async fn directory_outputs_hold_exactly_the_rendered_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    directory: certs\n");
    let files =
        |names: &[&str]| Content::Directory(names.iter().map(|n| (n.to_string(), n.as_bytes().to_vec())).collect());
    write(&t, files(&["a.pem", "sub/b.pem"])).await.unwrap();
    let report = write(&t, files(&["a.pem", "c.pem"])).await.unwrap();
    assert_eq!(report.written, [dir.path().join("certs/c.pem")]);
    assert_eq!(report.removed, [dir.path().join("certs/sub/b.pem")]);
    assert!(!dir.path().join("certs/sub").exists(), "emptied subdirectories go too");
    let report = write(&t, files(&[])).await.unwrap();
    assert_eq!(report.removed.len(), 2);
    assert!(dir.path().join("certs").is_dir(), "the output directory itself stays");
}

#[test]
fn leftovers_of_a_killed_run_beside_a_file_output_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    path: out/a.txt\n");
    let out = dir.path().join("out");
    fs::create_dir_all(out.join(".kube-template-dir0")).unwrap();
    for name in [
        ".kube-template-Ab12Cd",
        "a.txt",
        ".kube-template-longer-name",
        "kube-template-Ab12Cd",
    ] {
        fs::write(out.join(name), "x").unwrap();
    }
    let removed = remove_leftovers([&t.output]);
    assert_eq!(removed, [out.join(".kube-template-Ab12Cd")]);
    let mut left: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".kube-template-dir0",
            ".kube-template-longer-name",
            "a.txt",
            "kube-template-Ab12Cd"
        ]
    );
}

/// Templates `a` (a directory output), `b` and `c` (files in folders of their
/// own) of one config; `b`'s check puts a directory where its file goes while
/// the file `sabotage` exists, so that its rename fails after `a`'s.
fn three_templates(dir: &Path) -> Vec<Template> {
    let root = dir.display();
    let text = format!(
        r#"
templates:
  a: {{inline: x, directory: a}}
  b:
    inline: x
    path: b/b.txt
    check: ["sh", "-c", "if [ -e {root}/sabotage ]; then rm -f {root}/b/b.txt; mkdir -p {root}/b/b.txt/in-the-way; fi"]
  c: {{inline: x, path: c/c.txt}}
"#
    );
    let config = Config::parse(&text, &dir.join("c.yaml"), dir).unwrap();
    ["a", "b", "c"].map(|n| config.templates[n].clone()).into()
}

async fn write_three(templates: &[Template], a: &[(&str, &str)], b: &str, c: &str) -> Result<Report> {
    let a = Content::Directory(a.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect());
    let (b, c) = (Content::File(b.into()), Content::File(c.into()));
    let jobs: Vec<Job<'_>> = templates
        .iter()
        .zip([&a, &b, &c])
        .map(|(template, content)| Job {
            template,
            target: &template.output,
            content,
        })
        .collect();
    write_all(&jobs, &Redactor::default()).await
}

#[tokio::test]
async fn a_failed_rename_restores_the_files_already_replaced_and_removes_no_stale_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let templates = three_templates(root);
    write_three(&templates, &[("x", "1"), ("y", "1")], "1", "1")
        .await
        .unwrap();

    fs::write(root.join("sabotage"), "").unwrap();
    let error = write_three(&templates, &[("x", "2")], "2", "2").await.unwrap_err();
    assert!(error.to_string().contains("b/b.txt"), "{error}");
    let read = |rel: &str| fs::read_to_string(root.join(rel)).ok();
    assert_eq!(read("a/x").as_deref(), Some("1"), "the replaced file is restored");
    assert_eq!(read("a/y").as_deref(), Some("1"), "no stale file is removed");
    assert_eq!(read("c/c.txt").as_deref(), Some("1"));
    for folder in ["a", "b", "c"] {
        let staged: Vec<_> = fs::read_dir(root.join(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(STAGING_PREFIX))
            .collect();
        assert!(staged.is_empty(), "{folder}: {staged:?}");
    }

    // Once the obstacle is gone, the next write changes every file again,
    // so the actions run.
    fs::remove_file(root.join("sabotage")).unwrap();
    fs::remove_dir_all(root.join("b/b.txt")).unwrap();
    let report = write_three(&templates, &[("x", "2")], "2", "2").await.unwrap();
    assert_eq!(
        report.written,
        [root.join("a/x"), root.join("b/b.txt"), root.join("c/c.txt")]
    );
    assert_eq!(report.removed, [root.join("a/y")]);
}

/// The content of a directory output: (name, text) pairs.
fn files(entries: &[(&str, &str)]) -> Content {
    Content::Directory(
        entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
    )
}

/// The names directly in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_file_can_become_a_directory_and_back_in_a_directory_output() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    directory: out\n");
    let out = dir.path().join("out");
    write(&t, files(&[("a", "file"), ("keep", "k")])).await.unwrap();

    let report = write(&t, files(&[("a/b", "inside"), ("a/c/d", "deeper"), ("keep", "k")]))
        .await
        .unwrap();
    assert_eq!(fs::read_to_string(out.join("a/b")).unwrap(), "inside");
    assert_eq!(fs::read_to_string(out.join("a/c/d")).unwrap(), "deeper");
    assert_eq!(report.written, [out.join("a/b"), out.join("a/c/d")]);
    assert_eq!(report.removed, [out.join("a")]);

    let report = write(&t, files(&[("a", "file again"), ("keep", "k")])).await.unwrap();
    assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "file again");
    assert_eq!(report.written, [out.join("a")]);
    assert_eq!(report.removed, [out.join("a/b"), out.join("a/c/d")]);
    assert_eq!(names_in(&out), ["a", "keep"], "nothing moved aside is left");
}

#[tokio::test]
async fn a_failed_commit_puts_back_what_it_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    directory: out\n");
    let out = dir.path().join("out");
    write(&t, files(&[("a", "file"), ("z/old", "old")])).await.unwrap();
    // `a` is moved aside for `a/b`; then a name too long for the file
    // system fails the commit (even as root).
    let too_long = format!("z/{}", "n".repeat(300));
    let error = write(&t, files(&[("a/b", "new"), (&too_long, "new")]))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nnnn"), "{error}");
    assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "file", "moved back");
    assert_eq!(
        fs::read_to_string(out.join("z/old")).unwrap(),
        "old",
        "no stale file removed"
    );
    assert_eq!(names_in(&out), ["a", "z"], "nothing staged or moved aside is left");
}

#[tokio::test]
async fn a_file_and_a_file_inside_it_in_one_render_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    directory: out\n");
    let error = write(&t, files(&[("a", "1"), ("a/b", "2")])).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("emitted both as a file and as the directory of"),
        "{error}"
    );
    // Any depth; names that only share a prefix are no conflict.
    let out = dir.path().join("out");
    let error = write(
        &t,
        files(&[("k/l", "1"), ("k/l.txt", "2"), ("k/lm/n", "3"), ("k/l/m/n", "4")]),
    )
    .await
    .unwrap_err()
    .to_string();
    let (file, inner) = (out.join("k/l"), out.join("k/l/m/n"));
    assert!(
        error.contains(&*file.to_string_lossy()) && error.contains(&*inner.to_string_lossy()),
        "{error}"
    );
    write(&t, files(&[("k/l.txt", "2"), ("k/lm/n", "3"), ("k/l/m/n", "4")]))
        .await
        .unwrap();
    assert_eq!(names_in(&out), ["k"], "nothing of the failed renders is left");
}

/// An owner the test may give files: another one when running as root (so
/// that a missing chown shows), else the test's own.
fn some_owner() -> (u32, u32) {
    let dir = tempfile::tempdir().unwrap();
    let meta = fs::metadata(dir.path()).unwrap();
    if meta.uid() == 0 {
        (4321, 4322)
    } else {
        (meta.uid(), meta.gid())
    }
}

#[tokio::test]
async fn owner_is_given_to_written_files_and_the_directories_created_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = some_owner();
    let t = template(
        dir.path(),
        &format!("    directory: out/certs\n    owner: \"{uid}:{gid}\"\n"),
    );
    write(&t, files(&[("a.pem", "a"), ("sub/b.pem", "b")])).await.unwrap();
    let owner = |rel: &str| {
        let meta = fs::metadata(dir.path().join(rel)).unwrap();
        (meta.uid(), meta.gid())
    };
    for rel in [
        "out",
        "out/certs",
        "out/certs/sub",
        "out/certs/a.pem",
        "out/certs/sub/b.pem",
    ] {
        assert_eq!(owner(rel), (uid, gid), "{rel}");
    }
    if uid != fs::metadata(dir.path()).unwrap().uid() {
        assert_ne!(owner(""), (uid, gid), "the directory that was there is left alone");
    }
}

#[tokio::test]
async fn an_unchanged_file_gets_its_owner_back() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = some_owner();
    let plain = template(dir.path(), "    path: a.txt\n");
    write(&plain, Content::File(b"same".to_vec())).await.unwrap();
    let owned = template(dir.path(), &format!("    path: a.txt\n    owner: \"{uid}:{gid}\"\n"));
    let report = write(&owned, Content::File(b"same".to_vec())).await.unwrap();
    assert!(!report.changed(), "{report:?}");
    let meta = fs::metadata(dir.path().join("a.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
}

#[tokio::test]
async fn an_output_that_does_not_validate_changes_nothing_and_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), "    directory: out\n    validate: json\n");
    write(&t, files(&[("a.json", "{}"), ("b.json", "[1]")])).await.unwrap();
    let error = write(&t, files(&[("a.json", "{\"new\": 1}"), ("b.json", "[1,")]))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "template `t`: the new {} is not valid json: ",
            dir.path().join("out/b.json").display()
        )),
        "{text}"
    );
    assert_eq!(fs::read_to_string(dir.path().join("out/a.json")).unwrap(), "{}");
}

/// A scratch directory beside the build's output, not in a temp directory
/// that may be a tmpfs, where new files are staged named.
fn on_disk() -> tempfile::TempDir {
    tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap()
}

/// Stages `names` (each with content `"v-" + name`) into template `t`'s
/// directory output with at most `budget` anonymous files open.
fn stage_files(t: &Template, names: &[&str], budget: usize) -> Staged {
    let mut stage = Stage::with_budget(t, &t.output, anonymous::Budget::new(budget)).unwrap();
    for name in names {
        stage.file(name, format!("v-{name}").as_bytes()).unwrap();
    }
    stage.finish().unwrap()
}

#[tokio::test]
async fn a_new_file_has_no_directory_entry_until_the_commit_links_it() {
    let dir = on_disk();
    let out = dir.path().join("out");
    let t = template(dir.path(), "    directory: out\n");
    let staged = stage_files(&t, &["a", "sub/b"], 16);
    // Its directory is made, but no staging name is in either.
    assert_eq!(names_in(&out), ["sub"]);
    assert_eq!(names_in(&out.join("sub")), Vec::<String>::new());

    let report = write_staged(vec![staged], &Redactor::default()).await.unwrap();
    assert_eq!(report.written, [out.join("a"), out.join("sub/b")]);
    assert_eq!(names_in(&out), ["a", "sub"]);
    assert_eq!(fs::read(out.join("sub/b")).unwrap(), b"v-sub/b");
}

#[tokio::test]
async fn a_dropped_stage_leaves_nothing_anonymous_or_named() {
    for budget in [16, 0] {
        let dir = on_disk();
        let t = template(dir.path(), "    directory: out\n");
        drop(stage_files(&t, &["a", "sub/b"], budget));
        assert_eq!(names_in(dir.path()), Vec::<String>::new(), "budget {budget}");
    }
}

#[tokio::test]
async fn past_its_budget_a_stage_stages_named_files_and_commits_them_all() {
    let dir = on_disk();
    let out = dir.path().join("out");
    let t = template(dir.path(), "    directory: out\n");
    let names = ["a", "b", "c", "d", "e"];
    let staged = stage_files(&t, &names, 2);
    let named = names_in(&out);
    assert_eq!(named.len(), 3, "{named:?}");
    assert!(named.iter().all(|n| n.starts_with(STAGING_PREFIX)), "{named:?}");

    write_staged(vec![staged], &Redactor::default()).await.unwrap();
    assert_eq!(names_in(&out), names);
    for name in names {
        assert_eq!(fs::read_to_string(out.join(name)).unwrap(), format!("v-{name}"));
    }
}

#[tokio::test]
async fn a_file_that_appears_before_its_link_is_replaced_all_the_same() {
    let dir = on_disk();
    let out = dir.path().join("out");
    let t = template(dir.path(), "    directory: out\n");
    let staged = stage_files(&t, &["a"], 16);
    fs::write(out.join("a"), "theirs").unwrap();

    let report = write_staged(vec![staged], &Redactor::default()).await.unwrap();
    assert_eq!(report.written, [out.join("a")]);
    assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "v-a");
    assert_eq!(names_in(&out), ["a"], "nothing staged or kept is left");
}

#[tokio::test]
async fn a_failed_commit_removes_the_new_files_it_linked() {
    let dir = on_disk();
    let root = dir.path();
    let templates = three_templates(root);
    write_three(&templates, &[("x", "1")], "1", "1").await.unwrap();

    // `z` is new: linked, then unlinked when `b` fails.
    fs::write(root.join("sabotage"), "").unwrap();
    let error = write_three(&templates, &[("x", "1"), ("z", "2")], "2", "2")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("b/b.txt"), "{error}");
    assert_eq!(names_in(&root.join("a")), ["x"]);
}

#[test]
fn out_of_descriptors_a_stage_names_its_anonymous_files_and_stages_the_rest_named() {
    // Run alone in a child process, whose limit of open files it lowers.
    const CHILD: &str = "KUBE_TEMPLATE_TEST_FEW_DESCRIPTORS";
    let name = "output::tests::out_of_descriptors_a_stage_names_its_anonymous_files_and_stages_the_rest_named";
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        return;
    }
    let dir = on_disk();
    let out = dir.path().join("out");
    let t = template(dir.path(), "    directory: out\n");
    let open_now = fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let nofile = rustix::process::Resource::Nofile;
    let limit = rustix::process::Rlimit {
        current: Some(open_now + 24),
        maximum: rustix::process::getrlimit(nofile).maximum,
    };
    rustix::process::setrlimit(nofile, limit).unwrap();

    // A budget far beyond what the limit leaves: anonymous files run out of
    // descriptors after some twenty.
    let names: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let staged = stage_files(&t, &names, 1_000);
    let named = names_in(&out);
    assert!(
        named.len() == names.len() && named.iter().all(|n| n.starts_with(STAGING_PREFIX)),
        "every file staged under a name: {named:?}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime
        .block_on(write_staged(vec![staged], &Redactor::default()))
        .unwrap();
    assert_eq!(names_in(&out), names);
    for name in names {
        assert_eq!(fs::read_to_string(out.join(name)).unwrap(), format!("v-{name}"));
    }
}
