//! The live pipeline end to end (DESIGN section 9): the release binary against
//! the fake API server, timed and measured from outside.
//!
//! `cargo bench --bench live` prints one table. Each row starts the fake
//! server with N generated ConfigMaps (~1 KB of JSON each), runs
//! `kube-template run` on them and reports (medians of [`RUNS`] runs):
//! - the time from start to the first render written (`run --once`: the
//!   process exits once it is written);
//! - the peak resident memory (`VmHWM` from /proc), and what it holds beyond
//!   the baseline of a run with no objects, per byte of object JSON;
//! - for the `event` rows, the p50/p99 of watch event → file replaced over
//!   single-object updates with `wait.min: 0`;
//! - for the `idle` and `memory` rows, the resident memory a few seconds after
//!   the first render (anonymous and file-backed).
//!
//! The `k8s-sidecar` rows run `kube-template k8s-sidecar` on kiwigrid/k8s-sidecar's
//! jobs (medians of [`RUNS`]). With `K8S_SIDECAR_SRC` (a k8s-sidecar checkout's
//! directory holding `sidecar.py`) and `K8S_SIDECAR_PYTHON` (a python with its
//! requirements) set, the same jobs are run by k8s-sidecar itself against the same
//! server, and with `K8S_SIDECAR_RS_BIN` (the binary of its Rust rewrite,
//! vplme/k8s-sidecar-rs) by that too; each one's files are checked against ours
//! (`live/peer.rs`). Without them, the table says how to enable those rows.
//!
//! Two more tables say what replicas cost the API server (`api_cost`): one
//! replica's requests, bytes and connections at start and idle, and a fleet
//! of [`FLEET`] replicas against one server.
//!
//! `cargo bench --bench live -- sync` (or `templates`, `files`, `event`,
//! `memory`, `idle`, `one replica`, `fleet`) runs only the rows whose scenario name contains
//! the argument;
//! `KUBE_TEMPLATE_BIN=path cargo bench --bench live` measures that binary
//! instead of this build's (another profile's, say), with the same rows.
//! `cargo bench --bench live -- serve 10000` only starts the server and
//! prints its kubeconfig, to run the binary under a profiler by hand.

#[path = "live/api_cost.rs"]
mod api_cost;
#[path = "../tests/support/fake_api/mod.rs"]
mod fake_api;
#[path = "live/peer.rs"]
mod peer;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_api::FakeApiServer;
use serde_json::{Value, json};

/// The binary under measurement: `KUBE_TEMPLATE_BIN` when set (to compare
/// builds of other profiles with the same rows), else this build's.
fn binary() -> std::path::PathBuf {
    std::env::var_os("KUBE_TEMPLATE_BIN").map_or_else(|| env!("CARGO_BIN_EXE_kube-template").into(), Into::into)
}

/// A ConfigMap of about 1 KB once the server has added its metadata.
fn config_map(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("config-{i:06}"),
            "namespace": format!("team-{:02}", i % 40),
            "labels": {"app": format!("app-{}", i % 100), "tier": "backend"},
            "annotations": {"owner": "platform-team@example.com"},
        },
        "data": {"settings.json": "x".repeat(700), "mode": "production"}
    })
}

/// A ConfigMap with one data key of `size` bytes, labelled as Grafana's
/// chart labels dashboards.
fn dashboard(i: usize, size: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("dashboard-{i:03}"),
            "namespace": "monitoring",
            "labels": {"grafana_dashboard": "1"},
        },
        "data": {format!("dashboard-{i:03}.json"): "x".repeat(size)}
    })
}

/// One line per object, as an HAProxy backend list would be built.
const LINES: &str = "{% for cm in resources.cms %}{{ cm.metadata.namespace }}/{{ cm.metadata.name }} {{ cm.metadata.labels.app }} {{ cm.data.mode }}\n{% endfor %}";

/// A fake server holding `count` ConfigMaps, and their JSON size in bytes.
fn server_with(runtime: &tokio::runtime::Runtime, count: usize) -> (FakeApiServer, u64) {
    let server = runtime.block_on(FakeApiServer::start());
    let bytes = (0..count)
        .map(|i| serde_json::to_vec(&server.apply(config_map(i))).unwrap().len() as u64)
        .sum();
    (server, bytes)
}

/// A config watching the ConfigMaps with `templates` (name → YAML of the rest
/// of the entry) and `extra` top-level YAML.
fn write_config(dir: &Path, templates: &[(String, String)], extra: &str) {
    let mut text = String::from("watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\ntemplates:\n");
    for (name, entry) in templates {
        text.push_str(&format!("  {name}: {entry}\n"));
    }
    text.push_str(extra);
    std::fs::write(dir.join("config.yaml"), text).unwrap();
}

fn inline(template: &str, output: &str) -> String {
    format!("{{inline: {}, {output}}}", serde_json::to_string(template).unwrap())
}

fn sidecar(server: &FakeApiServer, dir: &Path, once: bool) -> Child {
    let mut command = Command::new(binary());
    command
        .args(["--log-level", "warn", "run", "-c"])
        .arg(dir.join("config.yaml"));
    if once {
        command.arg("--once");
    }
    command
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// One `Name:  N kB` field of `/proc/PID/FILE` (`status`, `smaps_rollup`), in
/// bytes (`None` once the process is gone).
fn proc_kib(pid: u32, file: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Peak resident memory of a process in bytes, from /proc (`None` once it is gone).
fn peak_rss(pid: u32) -> Option<u64> {
    proc_kib(pid, "status", "VmHWM:")
}

/// Resident memory of a process: (total, anonymous, file-backed) in bytes,
/// from /proc (`None` once it is gone).
fn rss(pid: u32) -> Option<(u64, u64, u64)> {
    let field = |name: &str| proc_kib(pid, "status", name);
    Some((
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")? + field("RssShmem:")?,
    ))
}

/// `kube-template k8s-sidecar` with k8s-sidecar's variables `env`, writing
/// to `dir/out` (`METHOD=LIST` when `once`).
fn k8s_sidecar(server: &FakeApiServer, dir: &Path, env: &[(&str, &str)], once: bool) -> Child {
    let mut command = Command::new(binary());
    command
        .arg("k8s-sidecar")
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path());
    sidecar_job(&mut command, dir, env, once).spawn().unwrap()
}

/// The k8s-sidecar job every program runs (ours and the peers): its
/// variables `env`, writing to `dir/out`, `METHOD=LIST` when `once`.
fn sidecar_job<'c>(command: &'c mut Command, dir: &Path, env: &[(&str, &str)], once: bool) -> &'c mut Command {
    command
        .envs(env.iter().copied())
        .env("FOLDER", dir.join("out"))
        .env("METHOD", if once { "LIST" } else { "WATCH" })
        .env("HEALTH_PORT", "0")
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
}

/// Starts `run` in watch mode, waits until `ready` holds for its scratch
/// directory, lets it idle for `settle`, then reads its resident memory.
fn idle_rss(server: &FakeApiServer, dir: &Path, ready: impl Fn(&Path) -> bool, settle: Duration) -> (u64, u64, u64) {
    idle_rss_of(sidecar(server, dir, false), dir, ready, settle)
}

/// [`idle_rss`] of a started `child`.
fn idle_rss_of(mut child: Child, dir: &Path, ready: impl Fn(&Path) -> bool, settle: Duration) -> (u64, u64, u64) {
    wait_settled(&mut child, dir, ready, settle);
    let measured = rss(child.id()).expect("the sidecar is running");
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// Waits until `ready` holds for `dir` (the first render came), then `settle`.
fn wait_settled(child: &mut Child, dir: &Path, ready: impl Fn(&Path) -> bool, settle: Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(dir) {
        assert!(child.try_wait().unwrap().is_none(), "the sidecar exited");
        assert!(Instant::now() < deadline, "the first render never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
}

/// Runs `run --once` to the end [`RUNS`] times, each in a fresh scratch
/// directory in `place` that `config` writes the config into: the medians
/// of wall time and peak RSS (see [`median_once`]).
fn run_once(
    server: &FakeApiServer,
    place: Place,
    kept: &mut Vec<tempfile::TempDir>,
    config: impl Fn(&Path),
) -> (Duration, u64) {
    let mut spawn = |dir: &Path| {
        config(dir);
        sidecar(server, dir, true)
    };
    median_once(place, kept, &mut [&mut spawn])[0]
}

/// Runs `child`, started at `started`, to the end: wall time and peak RSS.
fn run_once_of(mut child: Child, started: Instant) -> (Duration, u64) {
    let mut peak = 0;
    loop {
        // VmHWM only grows, so the last reading before the exit is the peak
        // (short of the last 1 ms, when the process is tearing down).
        if let Some(rss) = peak_rss(child.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "run --once failed");
            return (started.elapsed(), peak);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs one-shot jobs [`RUNS`] times each, each run into a fresh scratch
/// directory in `place` (`spawns` start them there), taking turns run by run
/// so that no program always runs first: the medians of wall time and peak
/// RSS of each. The directories are pushed to `kept` (the last round's last,
/// in the order of `spawns`), for the caller to delete once every row has run: on ext4,
/// inodes freed in the last minutes are skipped by the allocator ("recently
/// deleted"), so a run right after 20k deletions spends seconds in the
/// kernel creating its files, whichever program it is.
fn median_once(
    place: Place,
    kept: &mut Vec<tempfile::TempDir>,
    spawns: &mut [&mut dyn FnMut(&Path) -> Child],
) -> Vec<(Duration, u64)> {
    let mut measured = vec![(Vec::new(), Vec::new()); spawns.len()];
    for _ in 0..RUNS {
        for (spawn, (walls, peaks)) in spawns.iter_mut().zip(&mut measured) {
            let dir = place.scratch().expect("a scratch directory there");
            let started = Instant::now();
            let (wall, peak) = run_once_of(spawn(dir.path()), started);
            walls.push(wall);
            peaks.push(peak);
            kept.push(dir);
        }
    }
    measured
        .into_iter()
        .map(|(mut walls, mut peaks)| {
            walls.sort_unstable();
            peaks.sort_unstable();
            (walls[RUNS / 2], peaks[RUNS / 2])
        })
        .collect()
}

/// Measures idle memory [`RUNS`] times, each in a fresh scratch directory:
/// the run with the median total.
fn median_idle<T>(mut measure: impl FnMut(&Path) -> T, total: impl Fn(&T) -> u64) -> T {
    let mut runs: Vec<T> = (0..RUNS)
        .map(|_| measure(tempfile::tempdir().unwrap().path()))
        .collect();
    runs.sort_by_key(&total);
    runs.swap_remove(RUNS / 2)
}

/// Applies `samples` single-object updates to a running sidecar and times each
/// until the output file shows it.
fn event_latencies(server: &FakeApiServer, dir: &Path, samples: usize) -> Vec<Duration> {
    let mut child = sidecar(server, dir, false);
    let out = dir.join("out.txt");
    // Reads the file only when a new one replaced it (a rename changes the
    // inode), so that the polling itself costs the sidecar little CPU.
    let mut seen_inode = 0;
    let mut wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let inode = std::fs::metadata(&out).map(|m| m.ino()).unwrap_or(0);
            if inode != seen_inode && std::fs::read_to_string(&out).is_ok_and(|t| t.contains(needle)) {
                seen_inode = inode;
                return;
            }
            assert!(Instant::now() < deadline, "the file never showed {needle:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    wait_for("/config-000000 ");
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let mut object = config_map(n);
        let marker = format!("updated-{n}");
        object["metadata"]["labels"]["app"] = json!(marker);
        let started = Instant::now();
        server.apply(object);
        wait_for(&format!("/config-{n:06} {marker} "));
        latencies.push(started.elapsed());
    }
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort();
    latencies
}

/// One row of the table.
struct Row {
    scenario: String,
    objects: usize,
    json_bytes: u64,
    first_render: Option<Duration>,
    peak_rss: Option<u64>,
    latency: Option<(Duration, Duration)>,
    /// Resident memory while idle: total, anonymous, file-backed.
    idle: Option<(u64, u64, u64)>,
}

impl Row {
    /// A `run --once` row: wall time to the first render written, peak RSS.
    fn once(scenario: String, objects: usize, json_bytes: u64, (elapsed, peak): (Duration, u64)) -> Row {
        Row {
            scenario,
            objects,
            json_bytes,
            first_render: Some(elapsed),
            peak_rss: Some(peak),
            latency: None,
            idle: None,
        }
    }

    /// An idle row: resident memory once settled.
    fn idle(scenario: String, objects: usize, json_bytes: u64, idle: (u64, u64, u64)) -> Row {
        Row {
            scenario,
            objects,
            json_bytes,
            first_render: None,
            peak_rss: None,
            latency: None,
            idle: Some(idle),
        }
    }
}

/// Where a scenario's outputs go: this machine's temporary directory (on
/// disk, usually), or tmpfs (as an emptyDir with `medium: Memory` is).
#[derive(Clone, Copy)]
enum Place {
    Disk,
    Tmpfs,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Disk => "disk",
            Place::Tmpfs => "tmpfs",
        }
    }

    /// A scratch directory there; `None` where this machine has no /dev/shm.
    fn scratch(self) -> Option<tempfile::TempDir> {
        match self {
            Place::Disk => Some(tempfile::tempdir().unwrap()),
            Place::Tmpfs => {
                let memory = Path::new("/dev/shm");
                memory.is_dir().then(|| tempfile::tempdir_in(memory).unwrap())
            }
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs of each one-shot and idle row, of which the median is reported.
const RUNS: usize = 3;
/// Time an idle sidecar is left after its first render before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);

/// Sidecars in the fleet row: 100 fit on a 2-core machine (they idle after
/// their sync).
const FLEET: usize = 100;

fn print(rows: &[Row], baseline: Option<u64>) {
    println!(
        "| scenario | objects | object JSON | first render written | peak RSS | (RSS − baseline) / JSON | event → file p50 / p99 | idle RSS (anon + file) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let first = row
            .first_render
            .map_or("".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        let rss = row.peak_rss.map_or("".into(), |b| format!("{:.1} MiB", b as f64 / MIB));
        let ratio = match (row.peak_rss, baseline) {
            (Some(peak), Some(base)) if row.json_bytes > 0 => {
                format!("{:.2}", peak.saturating_sub(base) as f64 / row.json_bytes as f64)
            }
            _ => String::new(),
        };
        let latency = row.latency.map_or("".into(), |(p50, p99)| {
            format!("{:.1} / {:.1} ms", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3)
        });
        let idle = row.idle.map_or("".into(), |(total, anon, file)| {
            format!(
                "{:.1} MiB ({:.1} + {:.1})",
                total as f64 / MIB,
                anon as f64 / MIB,
                file as f64 / MIB
            )
        });
        println!(
            "| {} | {} | {:.1} MiB | {first} | {rss} | {ratio} | {latency} | {idle} |",
            row.scenario,
            row.objects,
            row.json_bytes as f64 / MIB
        );
    }
    if let Some(base) = baseline {
        println!("\nbaseline (no objects): {:.1} MiB peak RSS", base as f64 / MIB);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let [serve, count] = &args[..]
        && serve == "serve"
    {
        // For profiling the binary by hand: the server and its kubeconfig,
        // until interrupted.
        let (server, json_bytes) = server_with(&runtime, count.parse().expect("serve COUNT"));
        println!(
            "serving {count} ConfigMaps ({:.1} MiB of JSON); kubeconfig: {}",
            json_bytes as f64 / MIB,
            server.kubeconfig_path().display()
        );
        loop {
            std::thread::park();
        }
    }
    let wanted = |scenario: &str| args.is_empty() || args.iter().any(|a| scenario.contains(a.as_str()));
    let mut rows = Vec::new();
    // Every one-shot run's directory, deleted once every row has run (see
    // median_once).
    let mut kept = Vec::new();

    let one_file = [("t".to_string(), inline(LINES, "path: out.txt"))];
    let mut baseline = None;
    for count in [0, 10_000, 100_000] {
        let scenario = format!("sync, 1 template, run --once (N={count})");
        if !wanted(&scenario) {
            continue;
        }
        let (server, json_bytes) = server_with(&runtime, count);
        let measured = run_once(&server, Place::Disk, &mut kept, |dir| write_config(dir, &one_file, ""));
        if count == 0 {
            baseline = Some(measured.1);
        }
        rows.push(Row::once(scenario, count, json_bytes, measured));
    }

    for templates in [1, 100] {
        let scenario = format!("templates: {templates} over the same store, run --once");
        if !wanted(&scenario) {
            continue;
        }
        let count = 10_000;
        let (server, json_bytes) = server_with(&runtime, count);
        let entries: Vec<_> = (0..templates)
            .map(|t| (format!("t{t}"), inline(LINES, &format!("path: out-{t}.txt"))))
            .collect();
        let measured = run_once(&server, Place::Disk, &mut kept, |dir| write_config(dir, &entries, ""));
        rows.push(Row::once(scenario, count, json_bytes, measured));
    }

    // On disk and in memory: creating 10k files costs what the disk makes it cost.
    for place in [Place::Disk, Place::Tmpfs] {
        let scenario = format!(
            "files: one file per object in a directory output on {}, run --once",
            place.name()
        );
        if place.scratch().is_none() || !wanted(&scenario) {
            continue;
        }
        let count = 10_000;
        let (server, json_bytes) = server_with(&runtime, count);
        let template = "{% for cm in resources.cms %}{{ file(cm.metadata.namespace ~ '_' ~ cm.metadata.name, cm.data['settings.json']) }}{% endfor %}";
        let entries = [("t".to_string(), inline(template, "directory: out"))];
        let measured = run_once(&server, place, &mut kept, |dir| write_config(dir, &entries, ""));
        rows.push(Row::once(scenario, count, json_bytes, measured));
    }

    for (count, samples, place) in [
        (10_000, 1_000, Place::Disk),
        (10_000, 1_000, Place::Tmpfs),
        (100_000, 100, Place::Disk),
    ] {
        let scenario = format!(
            "event → file on {}, wait.min 0, {samples} updates (N={count})",
            place.name()
        );
        let dir = match place.scratch() {
            Some(dir) if wanted(&scenario) => dir,
            _ => continue,
        };
        let (server, json_bytes) = server_with(&runtime, count);
        write_config(
            dir.path(),
            &one_file,
            "render:\n  wait: {min: 0s, max: 1s}\nadmin: {listen: \"127.0.0.1:0\"}\n",
        );
        let latencies = event_latencies(&server, dir.path(), samples);
        let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        rows.push(Row {
            scenario,
            objects: count,
            json_bytes,
            first_render: None,
            peak_rss: None,
            latency: Some((at(0.50), at(0.99))),
            idle: None,
        });
    }
    // What a full store holds once the first render is done (DESIGN 9,
    // memory, full store), beside the same process holding nothing.
    for count in [0, 100_000] {
        let scenario = format!("memory: full store, idle after the first render (N={count})");
        if !wanted(&scenario) {
            continue;
        }
        let (server, json_bytes) = server_with(&runtime, count);
        let ready = |dir: &Path| dir.join("out.txt").exists();
        let measure = |dir: &Path| {
            write_config(dir, &one_file, "");
            idle_rss(&server, dir, ready, SETTLE)
        };
        rows.push(Row::idle(scenario, count, json_bytes, median_idle(measure, |m| m.0)));
    }
    // k8s-sidecar's everyday job: a few dashboards, one file per data key,
    // then nothing for hours.
    let scenario = "idle: watch 50 ConfigMaps of 8 KB, one file per key".to_string();
    if wanted(&scenario) {
        let server = runtime.block_on(FakeApiServer::start());
        let json_bytes = (0..50)
            .map(|i| serde_json::to_vec(&server.apply(dashboard(i, 8 * 1024))).unwrap().len() as u64)
            .sum();
        let template = "{% for cm in resources.cms %}{% for key, text in cm.data | items %}{{ file(key, text) }}{% endfor %}{% endfor %}";
        let entries = [("t".to_string(), inline(template, "directory: out"))];
        let ready = |dir: &Path| dir.join("out/dashboard-049.json").exists();
        let measure = |dir: &Path| {
            write_config(dir, &entries, "admin: {listen: \"127.0.0.1:0\"}\n");
            idle_rss(&server, dir, ready, SETTLE)
        };
        let idle = median_idle(measure, |m| m.0);
        rows.push(Row::idle(scenario, 50, json_bytes, idle));
    }
    // The same two jobs through `kube-template k8s-sidecar`, configured as
    // kiwigrid/k8s-sidecar is, then by each peer program that the environment
    // names (README, Replacing k8s-sidecar); medians of [`RUNS`].
    let (peers, skipped) = peer::Peer::from_env();
    let mut notes = Vec::new();
    for place in [Place::Disk, Place::Tmpfs] {
        let job = format!("10k ConfigMaps → 20k files on {}, METHOD=LIST", place.name());
        let scenario = format!("k8s-sidecar: {job}");
        if place.scratch().is_none() || !wanted(&scenario) {
            continue;
        }
        let count = 10_000;
        let (server, json_bytes) = server_with(&runtime, count);
        let env = [("LABEL", "tier"), ("NAMESPACE", "ALL"), ("UNIQUE_FILENAMES", "true")];
        let (server, env) = (&server, &env);
        let mut ours = |dir: &Path| k8s_sidecar(server, dir, env, true);
        let mut theirs: Vec<_> = peers
            .iter()
            .map(|peer| move |dir: &Path| peer.spawn(server, dir, env, true))
            .collect();
        let mut spawns: Vec<&mut dyn FnMut(&Path) -> Child> = vec![&mut ours];
        spawns.extend(theirs.iter_mut().map(|spawn| spawn as &mut dyn FnMut(&Path) -> Child));
        let measured = median_once(place, &mut kept, &mut spawns);
        // Each program's last run, in the order of `spawns`.
        let outs: Vec<PathBuf> = kept[kept.len() - spawns.len()..]
            .iter()
            .map(|dir| dir.path().join("out"))
            .collect();
        assert_eq!(std::fs::read_dir(&outs[0]).unwrap().count(), 2 * count);
        rows.push(Row::once(scenario, count, json_bytes, measured[0]));
        for ((peer, out), measured) in peers.iter().zip(&outs[1..]).zip(&measured[1..]) {
            let files = peer::same_files(&outs[0], out, peer, 1_000);
            notes.push(format!(
                "{} LIST on {}: the same {files} file names as kube-template's, the same contents in every 1000th",
                peer.name(),
                place.name()
            ));
            rows.push(Row::once(
                format!("{}: {job}", peer.name()),
                count,
                json_bytes,
                *measured,
            ));
        }
    }
    let scenario = "k8s-sidecar: idle, WATCH 50 ConfigMaps of 8 KB".to_string();
    if wanted(&scenario) {
        let server = runtime.block_on(FakeApiServer::start());
        let json_bytes = (0..50)
            .map(|i| serde_json::to_vec(&server.apply(dashboard(i, 8 * 1024))).unwrap().len() as u64)
            .sum();
        let env = [("LABEL", "grafana_dashboard"), ("NAMESPACE", "monitoring")];
        let ready = |dir: &Path| dir.join("out/dashboard-049.json").exists();
        let idle = median_idle(
            |dir| idle_rss_of(k8s_sidecar(&server, dir, &env, false), dir, ready, SETTLE),
            |m| m.0,
        );
        rows.push(Row::idle(scenario, 50, json_bytes, idle));
        for peer in &peers {
            // Both open their watch after the initial list has written the
            // files: settled is after that.
            let ready = |dir: &Path| ready(dir) && server.open_watches("configmaps") == 1;
            let measure = |dir: &Path| {
                // Readiness counts open watches: the previous run's first close.
                let deadline = Instant::now() + Duration::from_secs(10);
                while server.open_watches("configmaps") > 0 {
                    assert!(Instant::now() < deadline, "the previous sidecar's watch never closed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut child = peer.spawn(&server, dir, &env, false);
                wait_settled(&mut child, dir, ready, SETTLE);
                let measured = peer::TreeMemory::of(child.id());
                peer::kill_tree(child);
                measured
            };
            let idle = median_idle(measure, |m| m.rss.0);
            notes.push(format!(
                "{} idle: {} process(es), RSS summed over them (pages a fork shares counted in each); their PSS summed: {:.1} MiB",
                peer.name(),
                idle.processes,
                idle.pss as f64 / MIB
            ));
            let scenario = format!("{}: idle, WATCH 50 ConfigMaps of 8 KB", peer.name());
            rows.push(Row::idle(scenario, 50, json_bytes, idle.rss));
        }
    }
    if rows.iter().any(|row| row.scenario.starts_with("k8s-sidecar:")) {
        notes.extend(skipped);
    }
    if !rows.is_empty() {
        print(&rows, baseline);
    }
    for note in notes {
        println!("\n{note}");
    }
    if wanted("api cost: one replica") {
        api_cost::one_replica(&runtime);
    }
    if let Some(peer) = peers.iter().find(|peer| matches!(peer, peer::Peer::Python { .. }))
        && wanted("api cost: one replica of kiwigrid/k8s-sidecar")
    {
        api_cost::peer_replica(&runtime, peer);
    }
    if wanted("fleet: replicas against one server") {
        api_cost::fleet(&runtime, FLEET);
    }
}
