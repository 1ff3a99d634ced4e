//! The live pipeline against the fake API server (DESIGN section 9): the
//! release binary, timed from outside, with its peak resident memory.
//!
//! `cargo bench --bench live` prints, for each scenario, the wall time and the
//! peak RSS of `kube-template run --once`:
//! - initial sync of 100k ConfigMaps (~1 KB) to the first render done;
//! - one-shot: 10k ConfigMaps → 10k files in a directory output;
//! - watch event → file replaced (`wait.min: 0`), 10k objects: p50/p99 over
//!   200 updates.

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_api::FakeApiServer;
use serde_json::json;

fn config_map(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("config-{i:06}"),
            "namespace": format!("team-{:02}", i % 40),
            "labels": {"app": format!("app-{}", i % 100)},
        },
        "data": {"settings.json": "x".repeat(900)}
    })
}

/// Peak resident memory of a process, from /proc (0 once it is gone).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `run --once` on `template` (a directory output when `directory`),
/// returns wall time and peak RSS.
fn run_once(server: &FakeApiServer, dir: &Path, template: &str, directory: bool) -> (Duration, u64) {
    let output = if directory { "directory: out" } else { "path: out.txt" };
    let config = format!(
        "watched_resources:\n  cms: {{api_version: v1, kind: ConfigMap}}\ntemplates:\n  t:\n    inline: {}\n    {output}\n",
        serde_json::to_string(template).unwrap()
    );
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(["--log-level", "warn", "run", "--once", "-c"])
        .arg(dir.join("config.yaml"))
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "run --once failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (started.elapsed(), peak)
}

/// Applies `samples` updates one at a time to a running sidecar watching
/// 10k ConfigMaps and times each until the output file shows it.
fn event_to_file(runtime: &tokio::runtime::Runtime, samples: usize) -> Vec<Duration> {
    let server = runtime.block_on(FakeApiServer::start());
    for i in 0..10_000 {
        server.apply(config_map(i));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = "watched_resources:\n  cms: {api_version: v1, kind: ConfigMap}\ntemplates:\n  t:\n    inline: \"{% for cm in resources.cms %}{{ cm.metadata.name }} {{ cm.metadata.labels.app }}\\n{% endfor %}\"\n    path: out.txt\nrender:\n  wait: {min: 0s, max: 1s}\nadmin: {listen: \"127.0.0.1:0\"}\n";
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-template"))
        .args(["--log-level", "warn", "run", "-c"])
        .arg(dir.path().join("config.yaml"))
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let out = dir.path().join("out.txt");
    // Reads the file only when a new one replaced it (a rename changes the
    // inode), so that the polling itself costs the sidecar little CPU.
    let mut seen_inode = 0;
    let mut wait_for = |needle: &str| {
        use std::os::unix::fs::MetadataExt;
        let deadline = Instant::now() + Duration::from_secs(60);
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
    wait_for("config-009999 ");
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let mut object = config_map(n);
        let marker = format!("updated-{n}");
        object["metadata"]["labels"]["app"] = json!(marker);
        let started = Instant::now();
        server.apply(object);
        wait_for(&format!("config-{n:06} {marker}\n"));
        latencies.push(started.elapsed());
    }
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort();
    latencies
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (count, template, directory, what) in [
        (
            100_000,
            "{{ resources.cms | length }}\n",
            false,
            "initial sync, 100k ConfigMaps, to first render done",
        ),
        (
            10_000,
            "{% for cm in resources.cms %}{{ file(cm.metadata.namespace ~ '_' ~ cm.metadata.name, cm.data['settings.json']) }}{% endfor %}",
            true,
            "one-shot, 10k ConfigMaps to 10k files",
        ),
    ] {
        let server = runtime.block_on(FakeApiServer::start());
        for i in 0..count {
            server.apply(config_map(i));
        }
        let dir = tempfile::tempdir().unwrap();
        let (elapsed, peak) = run_once(&server, dir.path(), template, directory);
        println!(
            "{what}: {:.3} s wall, {:.1} MiB peak RSS",
            elapsed.as_secs_f64(),
            peak as f64 / 1024.0
        );
        drop(server);
    }
    let latencies = event_to_file(&runtime, 200);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "watch event to file replaced, 10k objects, wait.min 0: p50 {:.1} ms, p99 {:.1} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}
