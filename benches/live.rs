//! The live pipeline against the fake API server (DESIGN section 9): the
//! release binary, timed from outside, with its peak resident memory.
//!
//! `cargo bench --bench live` prints, for each scenario, the wall time and the
//! peak RSS of `kube-template run --once`:
//! - initial sync of 100k ConfigMaps (~1 KB) to the first render done;
//! - one-shot: 10k ConfigMaps → 10k files in a directory output.

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
}
