//! A `kube-template` process under test: killed when dropped, its stderr in a
//! log file that failing waits print.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// Upper bound for one awaited condition.
pub const WAIT: Duration = Duration::from_secs(15);
/// How often a condition is re-checked.
pub const POLL: Duration = Duration::from_millis(20);

/// A running `kube-template run`; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits until `probe` gives a value; fails the test with the log after [`WAIT`].
    pub async fn until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- sidecar log ---\n{}",
                self.log()
            );
            sleep(POLL).await;
        }
    }

    /// Waits until `probe` holds; fails the test with the log after [`WAIT`].
    pub async fn until_holds(&self, what: &str, mut probe: impl FnMut() -> bool) {
        self.until(what, || probe().then_some(())).await
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not exit within {within:?}\n--- sidecar log ---\n{}",
                self.log()
            );
            sleep(POLL).await;
        }
    }
}
