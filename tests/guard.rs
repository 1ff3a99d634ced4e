//! The loss guard end to end (DESIGN 5.10): the real binary in `--from`
//! live mode, a guarded directory output, and the manifests its objects
//! come from deleted. A refused shrink keeps the files and is reported; it
//! goes through when `kube-template accept` says so or when it lasted its
//! `hold`; a restart with nothing to render does not wipe the files.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::case::{Case, config_map, within};
use support::http::http_get;
use support::sidecar::Sidecar;
use tokio::time::Instant;

const TEST_DEADLINE: Duration = Duration::from_secs(60);

const REFUSED: &str = "kube_template_renders_total{group=\"default\",result=\"failure\",reason=\"guard\"}";

/// A case whose guarded template `dashboards` writes one file per
/// ConfigMap into `dashboards/`, with its admin server on `admin` (a fixed
/// port: `accept` finds it in the config).
fn guarded_case(hold: &str, admin: SocketAddr) -> Case {
    let case = Case::new("");
    case.write(
        "config.yaml",
        &format!(
            r#"
watched_resources:
  cms: {{api_version: v1, kind: ConfigMap}}
templates:
  dashboards:
    directory: dashboards
    inline: "{{% for o in resources.cms %}}{{{{ file(o.metadata.name ~ '.json', o.data.v) }}}}{{% endfor %}}"
    guard: {{max_shrink: 50%, hold: {hold}}}
render:
  wait: {{min: 10ms, max: 100ms}}
admin: {{listen: "{admin}"}}
"#
        ),
    );
    fs::create_dir(case.path("manifests")).unwrap();
    case
}

/// A free port on `ip` (bound, then let go for the sidecar).
fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// Writes ConfigMaps `cm0`… `cm{n-1}` as `manifests/cms.yaml`, at once.
fn write_cms(case: &Case, n: usize) {
    let objects: Vec<Value> = (0..n)
        .map(|i| config_map(&format!("cm{i}"), &format!("v{i}")))
        .collect();
    let text: Vec<String> = objects.iter().map(|o| serde_json::to_string(o).unwrap()).collect();
    let temp = case.path("manifests/.cms.yaml.tmp");
    fs::write(&temp, text.join("\n---\n")).unwrap();
    fs::rename(&temp, case.path("manifests/cms.yaml")).unwrap();
}

fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| entries.count())
}

fn spawn(case: &Case) -> Sidecar {
    case.spawn(&[OsStr::new("--from"), case.path("manifests").as_os_str()])
}

/// `kube-template accept -c config.yaml [template]`.
fn accept(case: &Case, template: Option<&str>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .arg("accept")
        .arg("-c")
        .arg(case.path("config.yaml"))
        .args(template)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn metric(admin: &str, series: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until the guard refused at least `n` renders, then checks the
/// files are still all there.
async fn until_refused(sidecar: &Sidecar, case: &Case, admin: &str, n: f64, files: usize) {
    sidecar
        .until_holds(&format!("{n} renders refused by the guard"), || {
            metric(admin, REFUSED) >= n
        })
        .await;
    assert_eq!(
        files_in(&case.path("dashboards")),
        files,
        "a refused shrink keeps every file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_objects_keep_their_files_until_an_operator_accepts_the_loss() {
    within(TEST_DEADLINE, async {
        let addr = free_addr("127.0.0.1");
        let case = guarded_case("1h", addr);
        write_cms(&case, 4);
        let sidecar = spawn(&case);
        let admin = addr.to_string();
        sidecar
            .until_holds("4 dashboards", || files_in(&case.path("dashboards")) == 4)
            .await;
        let nothing = accept(&case, Some("dashboards"));
        assert_eq!(
            nothing.status.code(),
            Some(1),
            "nothing pending yet: {}",
            text(&nothing.stderr)
        );
        assert!(
            text(&nothing.stderr).contains("nothing to accept"),
            "{}",
            text(&nothing.stderr)
        );

        write_cms(&case, 0);
        until_refused(&sidecar, &case, &admin, 1.0, 4).await;
        let readyz = http_get(&admin, "/readyz?verbose").1;
        let dir = case.path("dashboards");
        let expected = format!(
            "template `dashboards`: would shrink {} from 4 to 0 files (100% > max_shrink 50%)",
            dir.display()
        );
        assert!(readyz.contains(&expected), "/readyz?verbose: {readyz}");
        assert!(readyz.contains("kube-template accept -c"), "/readyz?verbose: {readyz}");
        let log = sidecar.until_log("shrink refused by the guard").await;
        assert!(log.contains("template=dashboards"), "{log}");

        let unknown = accept(&case, Some("nope"));
        assert_eq!(unknown.status.code(), Some(64), "{}", text(&unknown.stderr));
        assert!(
            text(&unknown.stderr).contains("no template `nope`"),
            "{}",
            text(&unknown.stderr)
        );
        assert_eq!(files_in(&dir), 4);

        // After three refusals the next retry is 4s away: the acceptance
        // must not wait for it.
        until_refused(&sidecar, &case, &admin, 3.0, 4).await;
        let asked = Instant::now();
        let accepted = accept(&case, Some("dashboards"));
        assert_eq!(accepted.status.code(), Some(0), "{}", text(&accepted.stderr));
        assert!(
            text(&accepted.stdout).contains("accepted: dashboards"),
            "{}",
            text(&accepted.stdout)
        );
        sidecar
            .until_holds("the accepted loss written", || files_in(&dir) == 0)
            .await;
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "written {:?} after the acceptance, not at once",
            asked.elapsed()
        );
        sidecar.until_log("accepted by an operator").await;

        // Accepted once: a later loss is guarded again.
        write_cms(&case, 2);
        sidecar.until_holds("2 dashboards", || files_in(&dir) == 2).await;
        let refused = metric(&admin, REFUSED);
        write_cms(&case, 0);
        until_refused(&sidecar, &case, &admin, refused + 1.0, 2).await;
        let all = accept(&case, None);
        assert_eq!(all.status.code(), Some(0), "{}", text(&all.stderr));
        sidecar
            .until_holds("the second loss written", || files_in(&dir) == 0)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_that_lasts_its_hold_is_written_without_another_event() {
    within(TEST_DEADLINE, async {
        let addr = free_addr("127.0.0.1");
        // Retries after failures come 1s, 3s and 7s after the first: a hold
        // of 4s ends between two of them.
        let case = guarded_case("4s", addr);
        write_cms(&case, 3);
        let sidecar = spawn(&case);
        let dir = case.path("dashboards");
        sidecar.until_holds("3 dashboards", || files_in(&dir) == 3).await;
        write_cms(&case, 1);
        until_refused(&sidecar, &case, &addr.to_string(), 1.0, 3).await;
        let refused = Instant::now();
        sidecar
            .until_holds("the held loss written", || files_in(&dir) == 1)
            .await;
        assert!(
            refused.elapsed() < Duration::from_millis(6500),
            "written {:?} after the first refusal: not when the 4s hold ended",
            refused.elapsed()
        );
        let log = sidecar.until_log("shrink written").await;
        assert!(log.contains("it lasted the guard's hold"), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_nothing_to_render_keeps_the_files_on_disk() {
    within(TEST_DEADLINE, async {
        let addr = free_addr("127.0.0.1");
        let case = guarded_case("1h", addr);
        for i in 0..3 {
            case.write(&format!("dashboards/old{i}.json"), "{}");
        }
        write_cms(&case, 0);
        let sidecar = spawn(&case);
        until_refused(&sidecar, &case, &addr.to_string(), 1.0, 3).await;
        sidecar.until_status(&addr.to_string(), "/readyz", 200).await;
    })
    .await;
}

/// `POST path` on `addr`: the status code.
fn post(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// This machine's address on the way out, if it has one that is not loopback.
fn outward_ip() -> Option<String> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route.
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("10.255.255.255:9"))
        .ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptance_from_another_host_is_refused() {
    within(TEST_DEADLINE, async {
        let Some(ip) = outward_ip() else {
            eprintln!("skipped: this machine has no address but loopback (admin::tests covers the peer check)");
            return;
        };
        let addr = free_addr(&ip);
        let case = guarded_case("1h", addr);
        write_cms(&case, 2);
        let sidecar = spawn(&case);
        let dir = case.path("dashboards");
        sidecar.until_holds("2 dashboards", || files_in(&dir) == 2).await;
        write_cms(&case, 0);
        until_refused(&sidecar, &case, &addr.to_string(), 1.0, 2).await;
        // To its own outward address, a connection comes from that address.
        assert_eq!(post(addr, "/guard/accept?template=dashboards"), 403);
        let log = sidecar.until_log("guard acceptance refused").await;
        assert!(log.contains(&ip), "{log}");
        let cli = accept(&case, Some("dashboards"));
        assert_eq!(cli.status.code(), Some(64), "{}", text(&cli.stderr));
        assert!(text(&cli.stderr).contains("not on loopback"), "{}", text(&cli.stderr));
        assert_eq!(files_in(&dir), 2, "nothing accepted");
    })
    .await;
}

#[test]
fn accept_says_why_when_there_is_no_sidecar_or_nothing_guarded() {
    let case = guarded_case("1h", free_addr("127.0.0.1"));
    let down = accept(&case, None);
    assert_eq!(down.status.code(), Some(1), "{}", text(&down.stderr));
    assert!(
        text(&down.stderr).contains("cannot reach the sidecar's admin server"),
        "{}",
        text(&down.stderr)
    );

    let config = fs::read_to_string(case.path("config.yaml")).unwrap();
    let unguarded: String = config
        .lines()
        .filter(|l| !l.contains("guard:"))
        .map(|l| format!("{l}\n"))
        .collect();
    case.write("config.yaml", &unguarded);
    let nothing_guarded = accept(&case, None);
    assert_eq!(
        nothing_guarded.status.code(),
        Some(64),
        "{}",
        text(&nothing_guarded.stderr)
    );
    assert!(
        text(&nothing_guarded.stderr).contains("has a `guard:`"),
        "{}",
        text(&nothing_guarded.stderr)
    );
    let not_guarded = accept(&case, Some("dashboards"));
    assert_eq!(not_guarded.status.code(), Some(64), "{}", text(&not_guarded.stderr));
    assert!(
        text(&not_guarded.stderr).contains("template `dashboards` has no `guard:`"),
        "{}",
        text(&not_guarded.stderr)
    );
}
