//! Exec mode (DESIGN 6): kube-template as the entrypoint of a single-container
//! image. The command starts as a child after the first good render, with
//! kube-template's stdin, stdout and stderr; a render that changed a file
//! reloads it (`reload_signal`, or a restart when none is set); a shutdown
//! stops it (`kill_signal`, then SIGKILL after `kill_timeout`); and its exit
//! status becomes kube-template's.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::broadcast;

use crate::action::signal;
use crate::telemetry::RenderOutcome;

/// How the child is reloaded and stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Sent on a change; `None` restarts the child instead.
    pub reload_signal: Option<Signal>,
    /// Sent to stop the child.
    pub kill_signal: Signal,
    /// How long a stopping child may take before it is killed.
    pub kill_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reload_signal: None,
            kill_signal: Signal::SIGTERM,
            // Below Kubernetes' default grace period of 30s, so that the
            // child's own status, not the kubelet's SIGKILL, ends the pod.
            kill_timeout: Duration::from_secs(20),
        }
    }
}

/// Why the child could not be run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command is empty.
    #[error("no command given after `--`")]
    Empty,
    /// The command could not be started.
    #[error("cannot start {argv:?}: {source}")]
    Spawn {
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// `--once`: this process could not be replaced by the command.
    #[error("cannot exec {argv:?}: {source}")]
    Exec {
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// A signal could not be sent to the child.
    #[error("cannot send {} to {argv:?}: {source}", signal::name(*sig))]
    Signal {
        argv: Vec<String>,
        sig: Signal,
        #[source]
        source: Errno,
    },
    /// Waiting for the child failed.
    #[error("cannot wait for {argv:?}: {source}")]
    Wait {
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pid of the running child, kept where a second SIGTERM can read it:
/// kube-template then exits at once, without its destructors, and kills the
/// child first so that it is not left running without its supervisor.
#[derive(Debug, Clone, Default)]
pub struct ChildPid(Arc<AtomicU32>);

impl ChildPid {
    fn set(&self, pid: Option<u32>) {
        self.0.store(pid.unwrap_or(0), Ordering::SeqCst);
    }

    /// Sends SIGKILL to the child, if one runs.
    pub fn kill(&self) {
        let pid = self.0.swap(0, Ordering::SeqCst);
        if pid != 0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// The running child.
#[derive(Debug)]
pub struct Child {
    argv: Vec<String>,
    settings: Settings,
    process: tokio::process::Child,
    pid: ChildPid,
}

impl Child {
    /// Starts `argv` (program, then arguments) with this process's stdio.
    /// `pid` follows it, also across restarts.
    pub fn start(argv: &[String], settings: Settings, pid: ChildPid) -> Result<Child> {
        let process = spawn(argv)?;
        tracing::info!(command = ?argv, pid = process.id(), "child started");
        pid.set(process.id());
        Ok(Child {
            argv: argv.to_vec(),
            settings,
            process,
            pid,
        })
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.id()
    }

    /// Resolves when the child exits, with its status.
    pub async fn exited(&mut self) -> Result<ExitStatus> {
        let status = self.process.wait().await;
        // Its pid may be reused from now on.
        self.pid.set(None);
        status.map_err(|source| Error::Wait {
            argv: self.argv.clone(),
            source,
        })
    }

    /// Tells the child that its files changed: `reload_signal`, or a stop
    /// and a new start.
    pub async fn reload(&mut self) -> Result<()> {
        match self.settings.reload_signal {
            Some(sig) => {
                tracing::info!(signal = signal::name(sig), pid = self.pid(), "reloading the child");
                self.send(sig)
            }
            None => {
                let status = self.stop().await?;
                tracing::info!(%status, "child stopped for a restart");
                self.process = spawn(&self.argv)?;
                self.pid.set(self.process.id());
                tracing::info!(command = ?self.argv, pid = self.process.id(), "child restarted");
                Ok(())
            }
        }
    }

    /// Stops the child: `kill_signal`, then SIGKILL after `kill_timeout`;
    /// its exit status.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let status = self.stop_and_wait().await;
        self.pid.set(None);
        status
    }

    async fn stop_and_wait(&mut self) -> Result<ExitStatus> {
        let wait_error = |argv: &[String], source| Error::Wait {
            argv: argv.to_vec(),
            source,
        };
        if let Some(status) = self.process.try_wait().map_err(|e| wait_error(&self.argv, e))? {
            return Ok(status);
        }
        self.send(self.settings.kill_signal)?;
        match tokio::time::timeout(self.settings.kill_timeout, self.process.wait()).await {
            Ok(status) => status.map_err(|e| wait_error(&self.argv, e)),
            Err(_) => {
                tracing::warn!(
                    timeout = %humantime::format_duration(self.settings.kill_timeout),
                    "the child did not stop in time; killing it"
                );
                // SIGKILL, then wait.
                self.process.kill().await.map_err(|e| wait_error(&self.argv, e))?;
                self.process.wait().await.map_err(|e| wait_error(&self.argv, e))
            }
        }
    }

    fn send(&self, sig: Signal) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        match kill(Pid::from_raw(pid as i32), sig) {
            // It exited meanwhile; `exited` reports how.
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(Error::Signal {
                argv: self.argv.clone(),
                sig,
                source,
            }),
        }
    }
}

fn spawn(argv: &[String]) -> Result<tokio::process::Child> {
    let (program, args) = argv.split_first().ok_or(Error::Empty)?;
    tokio::process::Command::new(program)
        .args(args)
        // Never outlive kube-template, even when it fails.
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            argv: argv.to_vec(),
            source,
        })
}

/// Runs the child of a live run: starts it after the first good render,
/// reloads it after each render that changed a file, and stops it when
/// `stop` resolves; `pid` follows it. Returns its exit status, or `None` when `stop` (or the
/// end of the renders) came before any good render.
pub async fn supervise(
    argv: &[String],
    settings: Settings,
    mut renders: broadcast::Receiver<Arc<RenderOutcome>>,
    stop: impl Future<Output = ()>,
    pid: ChildPid,
) -> Result<Option<ExitStatus>> {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(None),
            render = renders.recv() => match render {
                Ok(outcome) if outcome.error.is_none() => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            },
        }
    }
    let mut child = Child::start(argv, settings, pid)?;
    loop {
        tokio::select! {
            status = child.exited() => {
                let status = status?;
                tracing::info!(%status, "child exited");
                return Ok(Some(status));
            }
            () = &mut stop => {
                let status = child.stop().await?;
                tracing::info!(%status, "child stopped");
                return Ok(Some(status));
            }
            render = renders.recv() => match render {
                // A render that changed a file succeeded; `error` may name
                // another group still failing.
                Ok(outcome) if outcome.changed => child.reload().await?,
                Ok(_) => {}
                // Renders were missed: one of them may have changed a file.
                Err(broadcast::error::RecvError::Lagged(_)) => child.reload().await?,
                Err(broadcast::error::RecvError::Closed) => return child.stop().await.map(Some),
            },
        }
    }
}

/// The exit code that passes a child's status on: its code, or 128 plus the
/// signal that ended it, as a shell does.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    }
}

/// `--once -- CMD`: replaces this process with the command. Returns only
/// when that failed.
pub fn exec(argv: &[String]) -> Error {
    let Some((program, args)) = argv.split_first() else {
        return Error::Empty;
    };
    let source = std::process::Command::new(program).args(args).exec();
    Error::Exec {
        argv: argv.to_vec(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::SystemTime;

    use super::*;

    /// A child that records each signal it gets in `log`, one name a line,
    /// and exits 3 on TERM (or never, when `ignore_term`).
    fn recorder(log: &Path, ignore_term: bool) -> Vec<String> {
        let on_term = if ignore_term {
            format!("echo TERM >> {}", log.display())
        } else {
            format!("echo TERM >> {}; exit 3", log.display())
        };
        let script = format!(
            "trap 'echo HUP >> {log}' HUP; trap 'echo USR1 >> {log}' USR1; trap '{on_term}' TERM; \
             echo started >> {log}; while :; do sleep 0.05; done",
            log = log.display()
        );
        vec!["sh".into(), "-c".into(), script]
    }

    async fn wait_for_lines(log: &Path, lines: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().collect::<Vec<_>>() == lines {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log is {text:?}, want {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn outcome(changed: bool, error: Option<&str>) -> Arc<RenderOutcome> {
        Arc::new(RenderOutcome {
            at: SystemTime::now(),
            duration: Duration::ZERO,
            group: "default".into(),
            error: error.map(String::from),
            changed,
            outputs: Vec::new(),
        })
    }

    #[tokio::test]
    async fn a_reload_signal_is_sent_and_a_stop_ends_with_the_childs_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("signals");
        let settings = Settings {
            reload_signal: Some(Signal::SIGHUP),
            ..Settings::default()
        };
        let mut child = Child::start(&recorder(&log, false), settings, ChildPid::default()).unwrap();
        wait_for_lines(&log, &["started"]).await;
        child.reload().await.unwrap();
        wait_for_lines(&log, &["started", "HUP"]).await;
        let status = child.stop().await.unwrap();
        assert_eq!(exit_code(status), 3);
        wait_for_lines(&log, &["started", "HUP", "TERM"]).await;
    }

    #[tokio::test]
    async fn without_a_reload_signal_a_reload_restarts_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("signals");
        let mut child = Child::start(&recorder(&log, false), Settings::default(), ChildPid::default()).unwrap();
        wait_for_lines(&log, &["started"]).await;
        let first = child.pid();
        child.reload().await.unwrap();
        wait_for_lines(&log, &["started", "TERM", "started"]).await;
        assert_ne!(child.pid(), first);
        child.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_child_that_ignores_the_kill_signal_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("signals");
        let settings = Settings {
            kill_signal: Signal::SIGTERM,
            kill_timeout: Duration::from_millis(300),
            ..Settings::default()
        };
        let mut child = Child::start(&recorder(&log, true), settings, ChildPid::default()).unwrap();
        wait_for_lines(&log, &["started"]).await;
        let status = child.stop().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(exit_code(status), 137);
    }

    #[tokio::test]
    async fn the_child_starts_after_the_first_good_render_and_reloads_on_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("signals");
        let (renders, receiver) = broadcast::channel(16);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = Settings {
            reload_signal: Some(Signal::SIGUSR1),
            ..Settings::default()
        };
        let argv = recorder(&log, false);
        let supervisor = tokio::spawn(async move {
            supervise(
                &argv,
                settings,
                receiver,
                async {
                    let _ = stopped.await;
                },
                ChildPid::default(),
            )
            .await
        });
        renders.send(outcome(true, Some("template `x`: boom"))).unwrap();
        renders.send(outcome(true, None)).unwrap();
        wait_for_lines(&log, &["started"]).await;
        renders.send(outcome(false, None)).unwrap();
        renders.send(outcome(false, Some("boom"))).unwrap();
        renders.send(outcome(true, None)).unwrap();
        wait_for_lines(&log, &["started", "USR1"]).await;
        // A group that changed a file while another one fails reloads too.
        renders.send(outcome(true, Some("group other: boom"))).unwrap();
        wait_for_lines(&log, &["started", "USR1", "USR1"]).await;
        stop.send(()).unwrap();
        let status = supervisor.await.unwrap().unwrap().expect("the child ran");
        assert_eq!(exit_code(status), 3);
    }

    #[tokio::test]
    async fn the_supervisor_returns_when_the_child_exits_by_itself() {
        let (renders, receiver) = broadcast::channel(16);
        renders.send(outcome(false, None)).unwrap();
        let argv = vec!["sh".to_string(), "-c".into(), "exit 7".into()];
        let status = supervise(
            &argv,
            Settings::default(),
            receiver,
            std::future::pending(),
            ChildPid::default(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(exit_code(status), 7);
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_an_error_that_names_it() {
        let error = Child::start(
            &["/nonexistent/daemon".into()],
            Settings::default(),
            ChildPid::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("cannot start [\"/nonexistent/daemon\"]"),
            "{error}"
        );
    }
}
