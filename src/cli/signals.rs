//! SIGTERM and SIGINT during a run.

use crate::exec;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// SIGTERM and SIGINT, listened for by a task of their own so that they are
/// seen even while a render runs: the first one asks for a graceful shutdown
/// (the current render finishes first), a second one exits at once. The task
/// stops when this is dropped.
pub struct Signals {
    first: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
}

impl Signals {
    /// `child` is killed before a second signal exits (exec mode).
    pub fn listen(child: exec::ChildPid) -> std::io::Result<Signals> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (first_tx, first) = oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down after the current render; a second signal exits at once");
            let _ = first_tx.send(());
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal; exiting now");
            child.kill();
            std::process::exit(130);
        });
        Ok(Signals {
            first: Some(first),
            task,
        })
    }

    /// Resolves on the first signal. A second signal exits at once, also
    /// while a render in flight keeps this future from being polled, for as
    /// long as this lives: keep it until the run has ended.
    pub async fn first(&mut self) {
        if let Some(first) = self.first.take() {
            // The sender only goes away with the task, which only `Drop` stops.
            let _ = first.await;
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}
