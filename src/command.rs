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
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(Failure::Spawn)?;
    // On timeout the child is dropped, which kills it (kill_on_drop).
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| Failure::Timeout(timeout))?
        .map_err(Failure::Spawn)?;
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
