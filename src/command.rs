//! Running an external program with a timeout: `check` commands of outputs
//! and command actions. No shell is involved unless the user writes one.
//!
//! A run ends when the program exits, not when its output pipes close: a
//! reload like `sh -c 'daemon &'` leaves a child holding them, and that child
//! keeps running. Output is what the program wrote until it exited.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// How much of a program's output is kept (for the debug log and the first
/// line that errors show); the rest is read and dropped.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// How a program run ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// It could not be started (or waited for).
    #[error("could not start: {0}")]
    Spawn(#[source] std::io::Error),
    /// It ran past its timeout and was killed.
    #[error("did not finish within {}; killed", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// It exited unsuccessfully; `output` is its stderr (or stdout when stderr
    /// is empty), at most [`MAX_OUTPUT`] bytes. It may quote rendered files:
    /// show it only through [`crate::redact::Redactor`].
    #[error("{status}")]
    Exit { status: String, output: String },
}

/// Runs `argv` (program, then arguments) and waits at most `timeout` for it to
/// exit; on success, returns what it wrote (stderr, or else stdout).
pub async fn run(argv: &[String], timeout: Duration) -> Result<String, Failure> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Failure::Spawn(std::io::Error::other("the command is empty")));
    };
    let (out_writer, out_reader) = pipe::pipe().map_err(Failure::Spawn)?;
    let (err_writer, err_reader) = pipe::pipe().map_err(Failure::Spawn)?;
    let mut command = tokio::process::Command::new(program);
    // Its own process group, so that a timeout kills what it started too
    // (`sh -c "sleep 30; …"`), not just the shell.
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(blocking(out_writer)?)
        .stderr(blocking(err_writer)?)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(Failure::Spawn)?;
    // Our copies of the pipes' write ends go with the command.
    drop(command);
    let mut group = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));
    let mut stdout = Capture::new(out_reader);
    let mut stderr = Capture::new(err_reader);
    let status = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                status = child.wait() => break status,
                () = stdout.read_some(), if stdout.open() => {}
                () = stderr.read_some(), if stderr.open() => {}
            }
        }
    })
    .await;
    let status: ExitStatus = match status {
        Ok(status) => status.map_err(Failure::Spawn)?,
        // The guard kills the group.
        Err(_) => return Err(Failure::Timeout(timeout)),
    };
    // It exited: what it started may go on, holding the pipes.
    group.0 = None;
    let (stdout, stderr) = (stdout.finish(), stderr.finish());
    let output = if stderr.trim().is_empty() { stdout } else { stderr };
    if status.success() {
        Ok(output)
    } else {
        Err(Failure::Exit {
            status: status.to_string(),
            output,
        })
    }
}

fn blocking(writer: pipe::Sender) -> Result<Stdio, Failure> {
    writer.into_blocking_fd().map(Stdio::from).map_err(Failure::Spawn)
}

/// Kills a process group when dropped, unless its leader has exited: on a
/// timeout, or when the run is cancelled (an action stopped at shutdown).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // The group may be gone already; nothing else to do then.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// One output pipe of a program, read as it writes (so that it never blocks
/// on a full pipe), keeping the first [`MAX_OUTPUT`] bytes.
struct Capture {
    reader: Option<pipe::Receiver>,
    kept: Vec<u8>,
}

impl Capture {
    fn new(reader: pipe::Receiver) -> Capture {
        Capture {
            reader: Some(reader),
            kept: Vec::new(),
        }
    }

    fn open(&self) -> bool {
        self.reader.is_some()
    }

    /// Reads what is there; at the end of the pipe (or on an error) stops reading.
    async fn read_some(&mut self) {
        let Some(reader) = &mut self.reader else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 8192];
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => self.reader = None,
            Ok(n) => self.keep(&buf[..n]),
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_OUTPUT.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// What the program wrote before it exited: what was read, and what is
    /// still in the pipe, read without waiting for writers it left behind.
    fn finish(mut self) -> String {
        if let Some(reader) = self.reader.take()
            && let Ok(fd) = reader.into_nonblocking_fd()
        {
            self.drain(fd);
        }
        String::from_utf8_lossy(&self.kept).trim().to_string()
    }

    fn drain(&mut self, fd: OwnedFd) {
        let mut file = std::fs::File::from(fd);
        let mut buf = [0u8; 8192];
        // A child left running may write on; stop after a bounded amount.
        let mut budget = 2 * MAX_OUTPUT;
        while budget > 0 {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.keep(&buf[..n]);
                    budget = budget.saturating_sub(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 1; touch {}) & wait", marker.display());
        let failure = run(&argv(&["sh", "-c", &script]), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Timeout(_)), "{failure}");
        // Give an orphan time to do what it would have done.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn a_run_ends_when_the_program_exits_and_what_it_started_keeps_running() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("daemon-ran");
        // The background child inherits stdout and stderr and outlives the shell.
        let script = format!("(sleep 1; touch {}) & echo reloaded", marker.display());
        let started = tokio::time::Instant::now();
        let output = run(&argv(&["sh", "-c", &script]), Duration::from_millis(800))
            .await
            .expect("the shell exits at once");
        assert!(started.elapsed() < Duration::from_millis(800), "waited for the child");
        assert_eq!(output, "reloaded");
        let deadline = started + Duration::from_secs(10);
        while !marker.exists() {
            assert!(tokio::time::Instant::now() < deadline, "the child was killed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_past_the_limit_is_read_and_dropped() {
        let script = format!("head -c {} /dev/zero | tr '\\0' x; exit 3", 4 * MAX_OUTPUT);
        let failure = run(&argv(&["sh", "-c", &script]), Duration::from_secs(10)).await;
        assert!(
            matches!(failure, Err(Failure::Exit { ref output, .. }) if output.len() == MAX_OUTPUT),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn the_error_output_is_stderr_or_else_stdout() {
        let failure = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 2"]),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(failure, Err(Failure::Exit { ref output, .. }) if output == "err"),
            "{failure:?}"
        );
        let failure = run(&argv(&["sh", "-c", "echo out; exit 2"]), Duration::from_secs(5)).await;
        assert!(
            matches!(failure, Err(Failure::Exit { ref output, .. }) if output == "out"),
            "{failure:?}"
        );
    }
}
