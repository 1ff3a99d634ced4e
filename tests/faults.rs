//! The fault matrix: the real `kube-template run` binary against the fake API
//! server while something goes wrong — the server unreachable at start, a
//! watch stream cut mid-JSON, a malformed object, an object of several MB, a
//! list failing on its second page, the server coming back with a fresh
//! resourceVersion history, and a signal in the middle of a directory write.
//! Each test asserts what a user of the sidecar sees: the process, its log,
//! `/readyz`, and the files.
//!
//! Every test has an overall deadline and waits on conditions with deadlines,
//! never by sleeping a fixed time.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::case::{CAPTURE_VERSIONS, CMS_TEMPLATE, Case, config_map, listing, server_until, within};
use support::fake_api::FakeApiServer;
use support::http::http_get;
use support::sidecar::Sidecar;
use tokio::time::Instant;

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Prefix of the sidecar's staged (temporary) files.
const STAGING_PREFIX: &str = ".kube-template-";

async fn within_deadline(test: impl Future<Output = ()>) {
    within(TEST_DEADLINE, test).await
}

/// A config watching ConfigMaps as `cms` and rendering [`CMS_TEMPLATE`] to
/// `out.txt`, every staged version captured in `versions/`; `render` is
/// added to the render settings.
fn cms_config(render: &str) -> String {
    format!(
        r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    check: {CAPTURE_VERSIONS}
    inline: |
{CMS_TEMPLATE}render:
  wait: {{min: 10ms, max: 100ms}}
{render}"#
    )
}

/// The files of a directory (recursively, relative names) and their contents.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                let name = entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
                files.insert(name, fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    files
}

/// Names of the sidecar's staged files directly in `dir`.
fn staged_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(STAGING_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

fn modified(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// The `retry_in_ms=N` values of log lines.
fn retry_delays(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("retry_in_ms=")))
        .map(|n| n.parse().expect("retry_in_ms is a number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_unreachable_at_start_retries_with_backoff_touches_nothing_then_syncs() {
    within_deadline(async {
        let mut server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.go_down().await;
        let case = Case::new(&format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    inline: |
{CMS_TEMPLATE}  certs:
    directory: certs
    inline: '{{% for o in resources.cms %}}{{{{ file(o.metadata.name ~ ".pem", o.data.v) }}}}{{% endfor %}}'
render:
  wait: {{min: 10ms, max: 100ms}}
"#
        ));
        // Outputs left by an earlier run.
        case.write("out.txt", "from before\n");
        case.write("certs/old.pem", "old\n");
        let before = (modified(&case.path("out.txt")), modified(&case.path("certs/old.pem")));
        let started = Instant::now();
        let mut sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;

        // Three failed attempts, with growing delays between them.
        let lines = sidecar
            .until("three attempts to reach the API server", || {
                let lines = sidecar.log_lines("cannot reach the API server");
                (lines.len() >= 3).then_some(lines)
            })
            .await;
        let elapsed = started.elapsed();
        let delays = retry_delays(&lines);
        assert_eq!(delays.len(), lines.len(), "every retry says when: {lines:#?}");
        assert!(
            delays.windows(2).all(|w| w[1] > w[0]),
            "the delays grow (backoff): {delays:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(delays[0] + delays[1]),
            "three attempts came {elapsed:?} after the start, sooner than the delays {delays:?} allow"
        );
        assert!(sidecar.is_running(), "the sidecar gave up\n{}", sidecar.log());
        let (code, body) = http_get(&admin, "/readyz");
        assert_eq!(code, 503, "/readyz while the API server is unreachable: {body}");
        assert_eq!(case.read("out.txt").as_deref(), Some("from before\n"));
        assert_eq!(
            tree(&case.path("certs")),
            BTreeMap::from([("old.pem".into(), "old\n".into())])
        );
        assert_eq!(
            (modified(&case.path("out.txt")), modified(&case.path("certs/old.pem"))),
            before,
            "outputs were touched"
        );

        // The server appears on that address: the sidecar syncs and renders.
        server.come_back().await;
        sidecar.until_file(&case, "out.txt", &listing(&[("a", "1")])).await;
        sidecar
            .until_holds("the directory output", || {
                tree(&case.path("certs")) == BTreeMap::from([("a.pem".into(), "1".into())])
            })
            .await;
        sidecar
            .until_holds("/readyz to answer 200", || http_get(&admin, "/readyz").0 == 200)
            .await;
        server.apply(config_map("b", "2"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "1"), ("b", "2")]))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_cut_mid_json_recovers_and_never_renders_a_half_decoded_event() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        // Chunks then carry events, not bookmarks.
        server.set_bookmark_interval(Duration::from_secs(3600));
        server.apply(config_map("a", "1"));
        server.apply(config_map("b", "1"));
        let case = Case::new(&cms_config(""));
        let sidecar = case.spawn_against(&server, &[]);
        let s0 = listing(&[("a", "1"), ("b", "1")]);
        sidecar.until_file(&case, "out.txt", &s0).await;
        server_until(&server, &sidecar, "the watch", |s| s.open_watches("configmaps") == 1).await;

        // Three changes; the chunk that carries the first of them is cut in the
        // middle of its last event, and that stream ends.
        server.cut_next_watch_events(1);
        server.apply(config_map("a", "2"));
        server.apply(config_map("c", "1"));
        server.delete("v1", "ConfigMap", "default", "b").unwrap();
        let states = [
            s0,
            listing(&[("a", "2"), ("b", "1")]),
            listing(&[("a", "2"), ("b", "1"), ("c", "1")]),
            listing(&[("a", "2"), ("c", "1")]),
        ];
        sidecar.until_file(&case, "out.txt", &states[3]).await;
        assert_eq!(server.cut_watch_events(), 1, "one chunk was cut");
        assert!(server.watch_count("configmaps") >= 2, "the watch was opened again");
        for version in case.versions() {
            assert!(
                states.contains(&version),
                "a render showed a state the server never had:\n{version}\n--- sidecar log ---\n{}",
                sidecar.log()
            );
        }

        // A single event cut, then later changes: all arrive.
        server_until(&server, &sidecar, "the watch to be back", |s| {
            s.open_watches("configmaps") == 1
        })
        .await;
        server.cut_next_watch_events(1);
        server.apply(config_map("a", "3"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "3"), ("c", "1")]))
            .await;
        assert_eq!(server.cut_watch_events(), 2);
        server.apply(config_map("d", "1"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "3"), ("c", "1"), ("d", "1")]))
            .await;
    })
    .await;
}

/// A ConfigMap whose metadata does not decode: `labels` is a number.
fn malformed_config_map(name: &str, value: &str) -> Value {
    let mut object = config_map(name, value);
    object["metadata"]["labels"] = json!(7);
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_object_is_reported_by_resource_keeps_the_last_good_output_and_recovers() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(config_map("b", "1"));
        let case = Case::new(&cms_config(""));
        let mut sidecar = case.spawn_against(&server, &[]);
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "1"), ("b", "1")]))
            .await;
        server_until(&server, &sidecar, "the watch", |s| s.open_watches("configmaps") == 1).await;

        // In a watch event: reported, skipped; the object keeps its last good state.
        server.apply(malformed_config_map("b", "2"));
        let line = sidecar.until_log("watch failed").await;
        assert!(
            line.contains("stores=cms") && line.contains("v1/ConfigMap"),
            "the error names the resource: {line}"
        );
        assert!(line.contains("decode"), "the error says what is wrong: {line}");
        server.apply(config_map("a", "2"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("b", "1")]))
            .await;
        server.apply(config_map("b", "3"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("b", "3")]))
            .await;
        assert!(sidecar.is_running());

        // In a list: a new sidecar cannot sync while it is there; the previous
        // output stays, and it is not ready; once fixed, it syncs.
        server.apply(malformed_config_map("b", "4"));
        drop(sidecar);
        let versions_before = case.versions().len();
        let mut sidecar = case.spawn_against(&server, &[]);
        let admin_again = sidecar.admin().await;
        let line = sidecar.until_log("watch failed").await;
        assert!(
            line.contains("stores=cms") && line.contains("v1/ConfigMap") && line.contains("list"),
            "the error names the resource and the list: {line}"
        );
        let (code, body) = http_get(&admin_again, "/readyz");
        assert_eq!(code, 503, "not ready while the list fails: {body}");
        assert_eq!(case.read("out.txt"), Some(listing(&[("a", "2"), ("b", "3")])));
        assert_eq!(case.versions().len(), versions_before, "nothing rendered");
        server.apply(config_map("b", "5"));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("a", "2"), ("b", "5")]))
            .await;
        sidecar
            .until_holds("/readyz to answer 200", || http_get(&admin_again, "/readyz").0 == 200)
            .await;
        assert!(sidecar.is_running());
    })
    .await;
}

/// A string of `len` bytes that compresses badly and has no repeats a
/// truncation could hide: the decimal numbers from `seed` on.
fn big_value(len: usize, seed: u64) -> String {
    let mut text = String::with_capacity(len + 20);
    let mut n = seed;
    while text.len() < len {
        text.push_str(&n.to_string());
        text.push(',');
        n += 7919;
    }
    text.truncate(len);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_several_megabytes_is_stored_and_rendered_or_cleanly_refused_when_too_big() {
    within_deadline(async {
        const MB5: usize = 5 << 20;
        let server = FakeApiServer::start().await;
        let first = big_value(MB5, 1);
        server.apply(config_map("big", &first));
        server.apply(config_map("small", "1"));

        // Stored and rendered from the list, then from a watch event.
        let case = Case::new(&cms_config(""));
        let sidecar = case.spawn_against(&server, &[]);
        sidecar
            .until_file(&case, "out.txt", &listing(&[("big", &first), ("small", "1")]))
            .await;
        let second = big_value(MB5 + 12345, 2);
        server.apply(config_map("big", &second));
        sidecar
            .until_file(&case, "out.txt", &listing(&[("big", &second), ("small", "1")]))
            .await;
        drop(sidecar);

        // With a 1 MiB limit: the render fails, the old file stays, then recovers.
        server.apply(config_map("big", "tiny"));
        let limited = Case::new(&cms_config("  max_output_bytes: 1MiB\n"));
        let sidecar = limited.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        let good = listing(&[("big", "tiny"), ("small", "1")]);
        sidecar.until_file(&limited, "out.txt", &good).await;
        server.apply(config_map("big", &first));
        let line = sidecar.until_log("render failed").await;
        assert!(line.contains("max_output_bytes"), "the error names the limit: {line}");
        let body = sidecar
            .until("/readyz?verbose to name the failure", || {
                let (code, body) = http_get(&admin, "/readyz?verbose");
                body.contains("last render failed").then_some((code, body))
            })
            .await;
        assert_eq!(body.0, 200, "the last good file is served: still ready: {}", body.1);
        assert!(
            body.1.contains("max_output_bytes"),
            "/readyz?verbose says why: {}",
            body.1
        );
        assert_eq!(limited.read("out.txt"), Some(good), "the last good file stays");
        assert!(
            staged_files(limited.dir.path()).is_empty(),
            "no staged file is left behind"
        );
        server.apply(config_map("big", "tiny again"));
        sidecar
            .until_file(&limited, "out.txt", &listing(&[("big", "tiny again"), ("small", "1")]))
            .await;
        sidecar
            .until_holds("/readyz to answer 200", || http_get(&admin, "/readyz").0 == 200)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_failing_on_its_second_page_never_renders_a_partial_store() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        // kube-rs asks for pages of 500: the server answers with pages of 4.
        server.cap_list_pages(4);
        let mut objects: Vec<(String, String)> = (0..10).map(|i| (format!("c{i:02}"), "1".to_owned())).collect();
        for (name, value) in &objects {
            server.apply(config_map(name, value));
        }
        let full = |objects: &[(String, String)]| {
            let pairs: Vec<(&str, &str)> = objects.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            listing(&pairs)
        };
        let old = full(&objects);

        // The initial list: its second page fails once.
        server.fail_continued_lists(1, 500);
        let case = Case::new(&cms_config(""));
        let sidecar = case.spawn_against(&server, &[]);
        let admin = sidecar.admin().await;
        sidecar.until_file(&case, "out.txt", &old).await;
        assert!(
            server.list_count("configmaps") >= 5,
            "two pages, one failed, then three: {} LISTs",
            server.list_count("configmaps")
        );
        assert_eq!(case.versions(), [old.as_str()], "only the whole list was rendered");
        sidecar
            .until_holds("/readyz to answer 200", || http_get(&admin, "/readyz").0 == 200)
            .await;
        server_until(&server, &sidecar, "the watch", |s| s.open_watches("configmaps") == 1).await;

        // A re-list (the watch's version is compacted away) whose second page
        // fails with 410, as an expired continue token does.
        let lists_before = server.list_count("configmaps");
        server.stall_watches(true);
        for name in ["c00", "c01", "c02"] {
            server.delete("v1", "ConfigMap", "default", name).unwrap();
        }
        server.apply(config_map("c05", "2"));
        server.apply(config_map("n0", "1"));
        server.apply(config_map("n1", "1"));
        objects.retain(|(n, _)| !["c00", "c01", "c02"].contains(&n.as_str()));
        objects.iter_mut().find(|(n, _)| n == "c05").unwrap().1 = "2".into();
        objects.extend([("n0".into(), "1".into()), ("n1".into(), "1".into())]);
        let new = full(&objects);
        server.compact();
        server.fail_continued_lists(1, 410);
        server.drop_watches();
        server.stall_watches(false);
        sidecar.until_file(&case, "out.txt", &new).await;
        assert!(
            server.list_count("configmaps") >= lists_before + 4,
            "a failed re-list, then a whole one"
        );
        for version in case.versions() {
            assert!(
                version == old || version == new,
                "a partial store was rendered:\n{version}"
            );
        }
        server.apply(config_map("n2", "1"));
        objects.push(("n2".into(), "1".into()));
        sidecar.until_file(&case, "out.txt", &full(&objects)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_back_with_a_fresh_resource_version_history_is_followed_again() {
    within_deadline(async {
        let mut server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        server.apply(config_map("b", "1"));
        server.apply(config_map("c", "1"));
        // Push the resourceVersion well above what the new history will reach.
        for i in 0..50 {
            server.apply(config_map("x", &i.to_string()));
        }
        let case = Case::new(&cms_config(""));
        let sidecar = case.spawn_against(&server, &[]);
        sidecar
            .until_file(
                &case,
                "out.txt",
                &listing(&[("a", "1"), ("b", "1"), ("c", "1"), ("x", "49")]),
            )
            .await;
        server_until(&server, &sidecar, "the watch", |s| s.open_watches("configmaps") == 1).await;
        let old_rv = server.resource_version();

        // The server dies; the sidecar notices it cannot reach it.
        let failures = sidecar.log_lines("watch failed").len();
        server.go_down().await;
        sidecar
            .until_holds("the sidecar to notice", || {
                sidecar.log_lines("watch failed").len() > failures
            })
            .await;

        // It comes back from a backup, and things changed meanwhile.
        server.restart_history();
        server.delete("v1", "ConfigMap", "default", "b").unwrap();
        server.apply(config_map("a", "2"));
        server.apply(config_map("d", "1"));
        assert!(
            server.resource_version() < old_rv,
            "the new history is behind the old one"
        );
        server.come_back().await;
        sidecar
            .until_file(
                &case,
                "out.txt",
                &listing(&[("a", "2"), ("c", "1"), ("d", "1"), ("x", "49")]),
            )
            .await;

        // And it follows the new history from there.
        server.apply(config_map("e", "1"));
        server.delete("v1", "ConfigMap", "default", "x").unwrap();
        sidecar
            .until_file(
                &case,
                "out.txt",
                &listing(&[("a", "2"), ("c", "1"), ("d", "1"), ("e", "1")]),
            )
            .await;
    })
    .await;
}

/// Files in the directory output: `n` of them, `f0.conf` … , each holding `gen`.
const DIR_CONFIG: &str = r#"
watched_resources:
  cms: {api_version: v1, kind: ConfigMap}
templates:
  a_file:
    path: out.txt
    inline: "gen={{ resources.cms.get_one('default', 'gen').data.v }}\n"
  b_dir:
    directory: dir
    inline: |
      {%- set o = resources.cms.get_one('default', 'gen') -%}
      {%- for i in range(o.data.n | int) -%}
      {{ file('sub' ~ (i % 4) ~ '/f' ~ i ~ '.conf', 'gen=' ~ o.data.v ~ ' i=' ~ i ~ '\n') }}
      {%- endfor -%}
render:
  wait: {min: 10ms, max: 100ms}
"#;

fn generation(v: &str, n: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "gen", "namespace": "default"},
        "data": {"v": v, "n": n.to_string()},
    })
}

/// What [`DIR_CONFIG`] renders into `dir` for generation `v` with `n` files.
fn dir_set(v: &str, n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("sub{}/f{i}.conf", i % 4), format!("gen={v} i={i}\n")))
        .collect()
}

/// Staged files anywhere below `root`.
fn staged_below(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                found.push(entry.path());
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found
}

const OLD_FILES: usize = 2500;
const NEW_FILES: usize = 2000;

/// Upper bound for a whole directory write: a few thousand files take a
/// fraction of a second, but many seconds on a machine busy with disk I/O.
const SLOW_WRITE: Duration = Duration::from_secs(45);

/// Waits until `probe` holds, at most [`SLOW_WRITE`].
async fn until_written(sidecar: &Sidecar, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + SLOW_WRITE;
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- sidecar log ---\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a sidecar over [`DIR_CONFIG`] with the old generation rendered,
/// then changes it to the new one and returns once the write is under way
/// (staged files exist in the directory).
async fn directory_write_under_way(server: &FakeApiServer, case: &Case) -> Sidecar {
    server.apply(generation("old", OLD_FILES));
    let sidecar = case.spawn_against(server, &[]);
    let old = dir_set("old", OLD_FILES);
    until_written(&sidecar, "the old set", || {
        case.read("out.txt").as_deref() == Some("gen=old\n") && tree(&case.path("dir")) == old
    })
    .await;
    server.apply(generation("new", NEW_FILES));
    // Polled often: the write may take only a tenth of a second.
    let deadline = Instant::now() + SLOW_WRITE;
    let dir = case.path("dir");
    while staged_below(&dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "never saw the write under way\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sidecar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_directory_write_leaves_the_old_or_the_new_set_and_no_temp_files() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let case = Case::new(DIR_CONFIG);
        let mut sidecar = directory_write_under_way(&server, &case).await;
        sidecar.signal("TERM");
        // Staged files still there once the signal is delivered: it came during the write.
        let during_write = !staged_below(&case.path("dir")).is_empty();
        assert!(during_write, "the signal came after the write, not during it");
        let status = sidecar.exit(SLOW_WRITE).await;
        assert!(status.success(), "SIGTERM exited {status}\n{}", sidecar.log());

        let files = tree(&case.path("dir"));
        let old = dir_set("old", OLD_FILES);
        let new = dir_set("new", NEW_FILES);
        assert!(
            files == old || files == new,
            "the directory is a mix: {} files, {} of the old set, {} of the new",
            files.len(),
            files.iter().filter(|(k, v)| old.get(*k) == Some(v)).count(),
            files.iter().filter(|(k, v)| new.get(*k) == Some(v)).count(),
        );
        let out = case.read("out.txt");
        let expected_out = if files == new { "gen=new\n" } else { "gen=old\n" };
        assert_eq!(out.as_deref(), Some(expected_out), "out.txt is of the same render");
        let left: Vec<PathBuf> = staged_below(case.dir.path());
        assert!(left.is_empty(), "staged files left behind: {left:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_directory_write_then_a_restart_gives_the_new_set_and_no_temp_files() {
    within_deadline(async {
        let server = FakeApiServer::start().await;
        let case = Case::new(DIR_CONFIG);
        let mut sidecar = directory_write_under_way(&server, &case).await;
        sidecar.signal("KILL");
        let status = sidecar.exit(Duration::from_secs(5)).await;
        assert!(!status.success(), "SIGKILL is no clean exit");
        let interrupted =
            !staged_below(case.dir.path()).is_empty() || tree(&case.path("dir")) != dir_set("new", NEW_FILES);
        assert!(interrupted, "the kill came after the write, not during it");
        drop(sidecar);

        // A restart: its first render puts exactly the new set in place.
        let sidecar = case.spawn_against(&server, &[]);
        until_written(&sidecar, "the first render after the restart", || {
            sidecar.log().contains("render done")
        })
        .await;
        let files = tree(&case.path("dir"));
        assert!(
            files == dir_set("new", NEW_FILES),
            "{} files after the restart",
            files.len()
        );
        assert_eq!(case.read("out.txt").as_deref(), Some("gen=new\n"));
        let left: Vec<PathBuf> = staged_below(case.dir.path());
        assert!(left.is_empty(), "staged files left behind: {left:?}");
    })
    .await;
}
