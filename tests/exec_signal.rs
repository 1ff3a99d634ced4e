//! Signal actions and exec mode end to end: the real `kube-template run`
//! binary against the fake Kubernetes API server, with small shell programs
//! standing in for the daemon. Each records in `signals.log` when it started
//! (with the first line of the rendered file it saw) and every signal it got.
//!
//! Every test has an overall deadline and waits on conditions (a file's
//! content, the process exiting); nothing waits by sleeping a fixed time.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use support::case::{CMS_TEMPLATE, Case, config_map, within};
use support::fake_api::FakeApiServer;
use support::sidecar::{Sidecar, WAIT};

/// Upper bound for a whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(40);

/// A daemon stand-in: logs its start (with `out.txt`'s first line), HUP and
/// USR1, and exits 3 on TERM. Run from the case directory.
const DAEMON: &str = r#"
trap 'echo HUP >> signals.log' HUP
trap 'echo USR1 >> signals.log' USR1
trap 'echo TERM >> signals.log; exit 3' TERM
echo "started $(head -n 1 out.txt)" >> signals.log
while :; do sleep 0.05; done
"#;

fn config(extra: &str) -> String {
    format!(
        "watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  out:
    path: out.txt
    inline: |
{CMS_TEMPLATE}render:
  wait: {{min: 10ms, max: 100ms}}
{extra}"
    )
}

/// Starts `kube-template run` against `server` in exec mode, with
/// [`DAEMON`] as the command.
fn spawn_exec(case: &Case, server: &FakeApiServer) -> Sidecar {
    case.write("daemon.sh", DAEMON);
    case.spawn_against(server, &["--", "sh", "daemon.sh"])
}

/// The lines of `signals.log`.
fn signals(case: &Case) -> Vec<String> {
    case.read("signals.log")
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn until_signals(sidecar: &Sidecar, case: &Case, expected: &[&str]) {
    sidecar
        .until_holds(&format!("signals.log to be {expected:?}"), || signals(case) == expected)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mode_restarts_the_child_on_a_change_and_exits_with_its_status() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&config(""));
        let mut sidecar = spawn_exec(&case, &server);
        until_signals(&sidecar, &case, &["started count=1"]).await;

        server.apply(config_map("b", "2"));
        until_signals(&sidecar, &case, &["started count=1", "TERM", "started count=2"]).await;

        sidecar.signal("TERM");
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(3), "{}", sidecar.log());
        assert_eq!(signals(&case), ["started count=1", "TERM", "started count=2", "TERM"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mode_exits_with_the_status_of_a_child_that_ends_by_itself() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&config(""));
        let mut sidecar = case.spawn_against(&server, &["--", "sh", "-c", "head -n 1 out.txt > seen.txt; exit 5"]);
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(5), "{}", sidecar.log());
        assert_eq!(
            case.read("seen.txt").as_deref(),
            Some("count=1\n"),
            "the child ran before the render"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_a_command_renders_then_becomes_the_command() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&config(""));
        let script = "head -n 1 out.txt > seen.txt; echo $$ > pid.txt; exit 4";
        let mut sidecar = case.spawn_against(&server, &["--once", "--", "sh", "-c", script]);
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(4), "{}", sidecar.log());
        assert_eq!(case.read("seen.txt").as_deref(), Some("count=1\n"));
        let pid = sidecar.child.id().to_string();
        assert_eq!(
            case.read("pid.txt").as_deref().map(str::trim),
            Some(pid.as_str()),
            "not exec'd in place"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mode_sends_the_reload_signal_on_a_change_and_the_kill_signal_on_shutdown() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&config(
            "exec: {reload_signal: HUP, kill_signal: USR1, kill_timeout: 500ms}\n",
        ));
        let mut sidecar = spawn_exec(&case, &server);
        until_signals(&sidecar, &case, &["started count=1"]).await;

        server.apply(config_map("b", "2"));
        until_signals(&sidecar, &case, &["started count=1", "HUP"]).await;
        sidecar.until_file(&case, "out.txt", "count=2\na=1\nb=2\n").await;

        // USR1 does not stop the daemon: it is killed after kill_timeout.
        sidecar.signal("TERM");
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(128 + 9), "{}", sidecar.log());
        assert_eq!(signals(&case), ["started count=1", "HUP", "USR1"]);
    })
    .await;
}

/// A daemon stand-in started by the test as `argv0`, from the case directory;
/// killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(case: &Case, argv0: &str) -> Daemon {
        case.write("daemon.sh", DAEMON);
        case.write("out.txt", "not yet rendered\n");
        let child = Command::new("sh")
            .arg0(argv0)
            .arg("daemon.sh")
            .current_dir(case.dir.path())
            .spawn()
            .unwrap();
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_action_reaches_every_process_of_that_name_after_a_change() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let name = format!("kt-daemon-{}", std::process::id());
        let case = Case::new(&config(&format!("actions:\n  - {{signal: USR1, process: {name}}}\n")));
        let _daemon = Daemon::start(&case, &name);
        let sidecar = case.spawn_against(&server, &[]);
        until_signals(&sidecar, &case, &["started not yet rendered"]).await;
        sidecar.until_file(&case, "out.txt", "count=1\na=1\n").await;
        until_signals(&sidecar, &case, &["started not yet rendered", "USR1"]).await;

        server.apply(config_map("b", "2"));
        until_signals(&sidecar, &case, &["started not yet rendered", "USR1", "USR1"]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_action_reaches_the_pid_of_its_pid_file_and_a_missing_process_is_reported() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&config(
            "actions:\n  - {signal: HUP, pid_file: daemon.pid}\n  - {signal: HUP, process: kt-no-such-daemon}\n",
        ));
        let daemon = Daemon::start(&case, "kt-pid-file-daemon");
        case.write("daemon.pid", &format!("{}\n", daemon.0.id()));
        let sidecar = case.spawn_against(&server, &[]);
        until_signals(&sidecar, &case, &["started not yet rendered", "HUP"]).await;
        let failed = sidecar.until_log("action failed").await;
        assert!(
            failed.contains("no process named `kt-no-such-daemon`"),
            "the failure says what was looked for: {failed}"
        );
    })
    .await;
}

/// The owner of `path`, as `uid:gid`.
fn owner_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.uid(), meta.gid())
}

#[test]
fn a_rerooted_render_keeps_the_owner_of_its_files_and_a_live_one_sets_it() {
    let case = Case::new("templates:\n  out:\n    path: out.txt\n    owner: \"4321:4322\"\n    inline: \"x\\n\"\n");
    let own = owner_of(case.dir.path());
    let render = |out: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kube-template"));
        command.args(["render", "-c"]).arg(case.path("config.yaml"));
        command.arg("--from").arg(case.path("versions"));
        if let Some(out) = out {
            command.arg("--out").arg(out);
        }
        command.output().unwrap()
    };
    let preview = case.path("preview");
    let output = render(Some(&preview));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(owner_of(&preview.join("out.txt")), own, "--out is a preview: no chown");

    // In place, the owner is set: as root it is 4321:4322, else the chown is refused.
    let output = render(None);
    if own.starts_with("0:") {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(owner_of(&case.path("out.txt")), "4321:4322");
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot set the owner of"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_a_command_does_not_run_it_when_the_render_fails() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(
            "watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\ntemplates:\n  out:\n    path: out.txt\n    inline: \"{{ resources.cms.get_one('default', 'a').data.missing }}\\n\"\n",
        );
        let mut sidecar = case.spawn_against(&server, &["--once", "--", "sh", "-c", "touch ran"]);
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(1), "{}", sidecar.log());
        assert!(case.read("ran").is_none(), "the command ran after a failed render");
        assert!(sidecar.log().contains("the render failed"), "{}", sidecar.log());
    })
    .await;
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_in_exec_mode_exits_at_once_and_takes_the_child_along() {
    within(TEST_DEADLINE, async {
        let server = FakeApiServer::start().await;
        server.apply(config_map("a", "1"));
        let case = Case::new(&config("exec: {kill_signal: TERM, kill_timeout: 10m}\n"));
        // Ignores the kill signal: only the second signal can end the run.
        case.write(
            "stubborn.sh",
            "trap '' TERM\necho $$ > child.pid\nwhile :; do sleep 0.05; done\n",
        );
        let mut sidecar = case.spawn_against(&server, &["--", "sh", "stubborn.sh"]);
        let pid = sidecar
            .until("the child's pid", || {
                case.read("child.pid").filter(|p| p.ends_with('\n'))
            })
            .await;
        let pid = pid.trim().to_owned();
        assert!(running(&pid));

        sidecar.signal("TERM");
        sidecar.until_log("a second signal exits at once").await;
        sidecar.signal("TERM");
        let status = sidecar.exit(WAIT).await;
        assert_eq!(status.code(), Some(130), "{}", sidecar.log());
        sidecar
            .until_holds(&format!("the child {pid} to be gone"), || !running(&pid))
            .await;
    })
    .await;
}
