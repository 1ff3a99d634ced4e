//! A scratch directory holding a config, its outputs and what the tests'
//! checks and actions record, and the `kube-template run` started in it; plus
//! the waits on its files, log and admin server that the end-to-end tests share.
//!
//! Every wait polls a condition until [`WAIT`]; nothing sleeps a fixed time.

use std::ffi::OsStr;
use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};

use super::fake_api::FakeApiServer;
use super::http::http_get;
use super::sidecar::{POLL, Sidecar, WAIT};

/// Admin server on a free port, so that tests running in parallel never collide.
pub const ADMIN: &str = "admin: {listen: \"127.0.0.1:0\"}\n";

/// A template printing the store `cms` as `count=N` and one `name=value` line per object.
pub const CMS_TEMPLATE: &str = "      count={{ resources.cms | length }}
      {% for o in resources.cms -%}
      {{ o.metadata.name }}={{ o.data.v }}
      {% endfor -%}
";

/// A `check` that keeps a copy of every staged file in `versions/`, numbered in order.
pub const CAPTURE_VERSIONS: &str =
    r#"["sh", "-c", "n=$(ls versions | wc -l); cp '{file}' versions/$(printf %06d $n)"]"#;

/// Runs `test`, failing it if it takes longer than `limit`.
pub async fn within(limit: Duration, test: impl Future<Output = ()>) {
    timeout(limit, test)
        .await
        .expect("test did not finish before its deadline");
}

/// A ConfigMap `default/NAME` whose data is `{v: VALUE}`.
pub fn config_map(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"v": value},
    })
}

/// What [`CMS_TEMPLATE`] renders for these (name, value) pairs, given in key order.
pub fn listing(objects: &[(&str, &str)]) -> String {
    let mut text = format!("count={}\n", objects.len());
    for (name, value) in objects {
        text.push_str(&format!("{name}={value}\n"));
    }
    text
}

/// A scratch directory; the sidecar runs with it as working directory.
pub struct Case {
    pub dir: tempfile::TempDir,
}

impl Case {
    /// Writes `config` (the [`ADMIN`] section is added) as `config.yaml`, and
    /// makes the `versions/` and `installed/` folders that checks record into.
    pub fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::create_dir(dir.path().join("versions")).unwrap();
        fs::create_dir(dir.path().join("installed")).unwrap();
        fs::write(dir.path().join("config.yaml"), format!("{config}{ADMIN}")).unwrap();
        Case { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    /// Writes `text` to `rel`, making its parent folders.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// The files of a folder (`versions`, `installed`) in the order they were written.
    pub fn recorded(&self, folder: &str) -> Vec<String> {
        let mut names: Vec<PathBuf> = fs::read_dir(self.path(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names.iter().map(|p| fs::read_to_string(p).unwrap()).collect()
    }

    /// Every version a [`CAPTURE_VERSIONS`] check saw, in order.
    pub fn versions(&self) -> Vec<String> {
        self.recorded("versions")
    }

    /// The lines of `actions.log`.
    pub fn action_runs(&self) -> Vec<String> {
        self.read("actions.log")
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Starts `kube-template run -c config.yaml ARGS…`, logs to `sidecar.log`.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Sidecar {
        self.spawn_with_env(args, &[])
    }

    /// Like [`Case::spawn`], with extra environment variables.
    pub fn spawn_with_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &OsStr)]) -> Sidecar {
        let log = self.path("sidecar.log");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-template"))
            .arg("run")
            .arg("-c")
            .arg(self.path("config.yaml"))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,kube_template=debug")
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_UID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        Sidecar { child, log }
    }

    /// Starts the sidecar against `server`, with extra arguments.
    pub fn spawn_against(&self, server: &FakeApiServer, extra: &[&str]) -> Sidecar {
        let mut args: Vec<&OsStr> = vec![OsStr::new("--kubeconfig"), server.kubeconfig_path().as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        self.spawn(&args)
    }
}

impl Sidecar {
    /// Waits until the file `rel` of `case` holds exactly `expected`.
    pub async fn until_file(&self, case: &Case, rel: &str, expected: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let current = case.read(rel);
            if current.as_deref() == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {rel} to be\n{expected}\nit is\n{}\n--- sidecar log ---\n{}",
                current.as_deref().unwrap_or("(missing)"),
                self.log()
            );
            sleep(POLL).await;
        }
    }

    /// Waits until the log has a line containing `needle`, and returns it.
    pub async fn until_log(&self, needle: &str) -> String {
        self.until(&format!("a log line with {needle:?}"), || {
            self.log().lines().find(|l| l.contains(needle)).map(str::to_owned)
        })
        .await
    }

    /// Lines of the log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The admin server's address, once it listens.
    pub async fn admin(&self) -> String {
        let line = self.until_log("admin server listening").await;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("the log names the admin address")
            .to_owned()
    }

    /// Waits until `path` of the admin server at `admin` answers `code`; returns the body.
    pub async fn until_status(&self, admin: &str, path: &str, code: u16) -> String {
        self.until(&format!("{path} answering {code}"), || {
            let (status, body) = http_get(admin, path);
            (status == code).then_some(body)
        })
        .await
    }
}

/// Waits until `condition` holds for the server; fails the test after [`WAIT`].
pub async fn server_until(
    server: &FakeApiServer,
    sidecar: &Sidecar,
    what: &str,
    condition: impl Fn(&FakeApiServer) -> bool,
) {
    if timeout(WAIT, server.wait_for(condition)).await.is_err() {
        panic!("timed out waiting for {what}\n--- sidecar log ---\n{}", sidecar.log());
    }
}
