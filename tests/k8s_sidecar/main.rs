//! `kube-template k8s-sidecar`: kiwigrid/k8s-sidecar's environment, its files
//! and its calls. Fixture cases in `tests/k8s-sidecar-fixtures/` go from an
//! environment and manifests to a rendered tree; live tests run against the
//! fake API server.

#[path = "../support/mod.rs"]
mod support;

mod files;
mod reloads;
mod servers;
mod urls;

use servers::{Received, Routes, content_server, reload_server, reload_server_with};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_api::FakeApiServer;
use support::files::tree;
use support::http::http_get;
use support::sidecar::Sidecar;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_kube-template");

/// `kube-template k8s-sidecar ARGS` with exactly `env` (and PATH), logging to
/// `dir/sidecar.log`.
fn spawn<K: AsRef<std::ffi::OsStr>>(dir: &Path, env: &[(K, String)], args: &[&str]) -> Sidecar {
    let log = dir.join("sidecar.log");
    let child = Command::new(BIN)
        .arg("k8s-sidecar")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("the binary starts");
    Sidecar { child, log }
}

/// The admin address the sidecar logged (text logs).
async fn admin_address(sidecar: &Sidecar) -> String {
    sidecar
        .until("the health server", || {
            let log = sidecar.log();
            let line = log.lines().find(|l| l.contains("admin server listening"))?;
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(str::to_owned)
        })
        .await
}

fn dashboard(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "default", "name": name, "labels": {"grafana_dashboard": "1"}},
        "data": data,
    })
}

/// The Grafana chart's dashboard sidecar environment as the chart sets it by
/// default; only the addresses and the folder point at this test's.
fn grafana_chart_env(folder: &Path, reload_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("METHOD", "WATCH".into()),
        ("LABEL", "grafana_dashboard".into()),
        ("FOLDER", folder.display().to_string()),
        ("RESOURCE", "both".into()),
        ("REQ_USERNAME", "admin".into()),
        ("REQ_PASSWORD", "prom-operator".into()),
        ("REQ_URL", reload_url.into()),
        ("REQ_METHOD", "POST".into()),
        // Not set by the chart (default 8080): a free port keeps tests apart.
        ("HEALTH_PORT", "0".into()),
    ]
}
