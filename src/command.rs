//! Running an external program with a timeout: `check` commands of outputs
//! and command actions. No shell is involved unless the user writes one.

use std::process::Stdio;
use std::time::Duration;

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
    /// is empty), trimmed to 2 KiB.
    #[error("{status}")]
    Exit { status: String, output: String },
}

/// Runs `argv` (program, then arguments) and waits at most `timeout`.
pub async fn run(argv: &[String], timeout: Duration) -> Result<(), Failure> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Failure::Spawn(std::io::Error::other("the command is empty")));
    };
    // Its own process group, so that a timeout kills what it started too
    // (`sh -c "sleep 30; …"`), not just the shell.
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(Failure::Spawn)?;
    let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(Failure::Spawn)?,
        Err(_) => {
            if let Some(group) = group {
                // The group may be gone already; nothing else to do then.
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            return Err(Failure::Timeout(timeout));
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    const MAX: usize = 2048;
    if text.len() > MAX {
        let cut = (0..=MAX).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    Err(Failure::Exit {
        status: output.status.to_string(),
        output: text,
    })
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
