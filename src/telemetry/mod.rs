//! Telemetry: logs, metrics, the live status the admin server shows (with
//! the problems its probes weigh), and the stream of render outcomes that
//! reporters (Kubernetes Events, the status ConfigMap) follow.

pub mod accept;
pub mod activity;
pub mod logging;
pub mod metrics;
pub mod problems;
pub mod resident;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

pub use logging::{LogFormat, init};
use metrics::Metrics;
use status::Status;

/// What one render of a live run came to.
#[derive(Debug, Clone)]
pub struct RenderOutcome {
    pub at: SystemTime,
    pub duration: Duration,
    /// The group rendered.
    pub group: String,
    /// `None` when every group's last render succeeded; otherwise the errors
    /// of the groups whose last render failed, one line each (naming the
    /// group when the config has named groups), so that a success of one
    /// group does not hide the failure of another.
    pub error: Option<String>,
    /// Whether this render changed a file (a failed render changes none),
    /// while other groups may be failing.
    pub changed: bool,
    /// Every output file with its sha256, after the render.
    pub outputs: Vec<(String, String)>,
}

/// Metrics, status and render outcomes of one run, shared by every stage.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub status: Status,
    /// Operators' acceptances of refused shrinks, for the live pipeline.
    pub accepts: accept::Accepts,
    outcomes: broadcast::Sender<Arc<RenderOutcome>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            metrics: Metrics::new(),
            status: Status::default(),
            accepts: accept::Accepts::default(),
            outcomes: broadcast::channel(16).0,
        }
    }
}

impl Telemetry {
    /// Follows render outcomes from now on.
    pub fn outcomes(&self) -> broadcast::Receiver<Arc<RenderOutcome>> {
        self.outcomes.subscribe()
    }

    /// The metrics as text, the gauges that follow the status brought up
    /// to date first.
    pub fn encode_metrics(&self) -> String {
        // Watches with a silence limit are the API server's; files have no
        // connection to lose.
        for watch in self.status.view().watches.iter().filter(|w| w.silence_limit.is_some()) {
            let connected = watch.activity.failing_for().is_none();
            self.metrics
                .watch_connected
                .get_or_create(&metrics::WatchLabel {
                    watch: watch.name.clone(),
                })
                .set(i64::from(connected));
        }
        self.metrics.encode()
    }

    /// Publishes a render outcome to whoever follows them.
    pub fn publish(&self, outcome: RenderOutcome) {
        // No follower is fine.
        let _ = self.outcomes.send(Arc::new(outcome));
    }
}
