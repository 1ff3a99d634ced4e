//! Reporters: render outcomes told to Kubernetes, for operators who look there
//! first. Both follow [`Telemetry::outcomes`] in tasks of their own, log their
//! failures and never stop the run.
//!
//! - [`events`]: a failed render as a Warning Event on the pod, a recovery as
//!   a Normal one, rate limited by [`limiter`];
//! - [`status`]: the last render's result as annotations of a ConfigMap.

pub mod events;
pub mod limiter;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::telemetry::{RenderOutcome, Telemetry};
use events::EventReporter;
use status::StatusWriter;

pub use events::{REASON_FAILED, REASON_RECOVERED, REPORTING_CONTROLLER};
pub use limiter::EventLimits;
pub use status::{CHECKSUMS, LAST_RENDER_ERROR, LAST_RENDER_RESULT, LAST_RENDER_TIME, WriteRetry};

/// `status:` — a ConfigMap whose annotations carry the last render's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    /// Name of the ConfigMap (it must exist; only its annotations are written).
    #[schemars(
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub config_map: String,
    /// Its namespace; default: the pod's (`POD_NAMESPACE`).
    #[serde(default)]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub namespace: Option<String>,
}

/// How long [`Reporters::stop`] waits for the last reports.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why reporting cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `status:` names no namespace and the pod's is unknown.
    #[error(
        "status.config_map `{config_map}`: no namespace: set status.namespace, or POD_NAMESPACE \
         (from the downward API's metadata.namespace)"
    )]
    NoStatusNamespace { config_map: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pod this process runs in, as the downward API tells it. Empty values
/// count as unset.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `POD_UID` (saves a GET of the pod).
    pub pod_uid: Option<String>,
}

impl Environment {
    /// Reads `POD_NAME`, `POD_NAMESPACE` and `POD_UID`.
    pub fn from_env() -> Environment {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Environment {
            pod_name: var("POD_NAME"),
            pod_namespace: var("POD_NAMESPACE"),
            pod_uid: var("POD_UID"),
        }
    }
}

/// The pod Events are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    /// Known from `POD_UID`; else looked up when the first Event is posted.
    pub uid: Option<String>,
}

/// The ConfigMap whose annotations carry the last render's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub namespace: String,
    pub name: String,
}

/// What to report where; decided before connecting, so that a `status:` without
/// a namespace fails at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Events, when running in a pod.
    pub events: Option<PodRef>,
    /// The status ConfigMap, when the config has `status:`.
    pub status: Option<StatusTarget>,
}

impl Plan {
    /// Events when `env` names the pod; the status ConfigMap when `status` is
    /// set, in its namespace or else the pod's (an error if neither is known).
    pub fn new(status: Option<&StatusSettings>, env: &Environment) -> Result<Plan> {
        let events = match (&env.pod_name, &env.pod_namespace) {
            (Some(name), Some(namespace)) => Some(PodRef {
                name: name.clone(),
                namespace: namespace.clone(),
                uid: env.pod_uid.clone(),
            }),
            _ => None,
        };
        let status = status
            .map(|settings| {
                let namespace = settings
                    .namespace
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .or_else(|| env.pod_namespace.clone())
                    .ok_or_else(|| Error::NoStatusNamespace {
                        config_map: settings.config_map.clone(),
                    })?;
                Ok(StatusTarget {
                    namespace,
                    name: settings.config_map.clone(),
                })
            })
            .transpose()?;
        Ok(Plan { events, status })
    }

    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.events.is_none() && self.status.is_none()
    }
}

/// Tuning of the reporters; the defaults are what `run` uses.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub events: EventLimits,
    pub retry: WriteRetry,
}

/// The running reporter tasks. [`Reporters::stop`] ends them; dropping this
/// aborts them.
#[derive(Debug)]
pub struct Reporters {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// Starts a task per reporter of `plan`, each following the render outcomes
/// published from now on.
pub fn start(plan: Plan, client: Client, telemetry: &Telemetry, options: Options) -> Reporters {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(pod) = plan.events {
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, "failed renders become events on the pod");
        let reporter = EventReporter::new(client.clone(), pod, options.events);
        let task = tokio::spawn(follow(telemetry.outcomes(), stopped.clone(), reporter));
        tasks.push(("events", task));
    }
    if let Some(target) = plan.status {
        let (config_map, namespace) = (&target.name, &target.namespace);
        tracing::info!(%config_map, %namespace, "render results go to the status config map");
        let writer = StatusWriter::new(client, target, options.retry);
        let task = tokio::spawn(follow(telemetry.outcomes(), stopped, writer));
        tasks.push(("status", task));
    }
    Reporters { stop, tasks }
}

impl Reporters {
    /// Asks every reporter to report what is already published, then to stop,
    /// and waits for them, at most a few seconds.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + STOP_GRACE;
        for (name, mut task) in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(reporter = name, %error, "reporter failed"),
                Err(_) => {
                    tracing::warn!(reporter = name, "reporter did not finish in time; stopped");
                    task.abort();
                }
            }
        }
    }
}

impl Drop for Reporters {
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// One reporter: what it does with an outcome.
trait Report: Send + 'static {
    /// Reports `outcome`, or a newer one it finds in `queue`.
    fn report(
        &mut self,
        outcome: Arc<RenderOutcome>,
        queue: &mut broadcast::Receiver<Arc<RenderOutcome>>,
    ) -> impl Future<Output = ()> + Send;
}

/// Feeds `reporter` every outcome until `stop`, then the ones already queued.
async fn follow(
    mut outcomes: broadcast::Receiver<Arc<RenderOutcome>>,
    mut stop: watch::Receiver<bool>,
    mut reporter: impl Report,
) {
    loop {
        let received = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            received = outcomes.recv() => received,
        };
        match received {
            Ok(outcome) => reporter.report(outcome, &mut outcomes).await,
            Err(RecvError::Lagged(skipped)) => tracing::debug!(skipped, "reporter skipped old render outcomes"),
            Err(RecvError::Closed) => return,
        }
    }
    loop {
        match outcomes.try_recv() {
            Ok(outcome) => reporter.report(outcome, &mut outcomes).await,
            Err(TryRecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A dropped sender stops too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// `outcome`, or the newest outcome queued after it.
fn newest(mut outcome: Arc<RenderOutcome>, queue: &mut broadcast::Receiver<Arc<RenderOutcome>>) -> Arc<RenderOutcome> {
    loop {
        match queue.try_recv() {
            Ok(newer) => outcome = newer,
            Err(TryRecvError::Lagged(_)) => {}
            Err(_) => return outcome,
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…`.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub('…'.len_utf8());
    let cut = (0..=room).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_takes_the_status_namespace_from_the_config_then_the_pod() {
        let settings = |namespace: Option<&str>| StatusSettings {
            config_map: "status".into(),
            namespace: namespace.map(str::to_owned),
        };
        let in_pod = Environment {
            pod_name: Some("web-0".into()),
            pod_namespace: Some("web".into()),
            pod_uid: None,
        };
        let plan = Plan::new(Some(&settings(Some("ops"))), &in_pod).unwrap();
        assert_eq!(plan.status.unwrap().namespace, "ops");
        let plan = Plan::new(Some(&settings(None)), &in_pod).unwrap();
        assert_eq!(plan.status.unwrap().namespace, "web");
        assert_eq!(plan.events.unwrap().name, "web-0");

        let outside = Environment::default();
        let error = Plan::new(Some(&settings(None)), &outside).unwrap_err();
        assert!(error.to_string().contains("status.config_map `status`"), "{error}");
        let plan = Plan::new(None, &outside).unwrap();
        assert!(plan.is_empty());
        // Events need both the name and the namespace.
        let half = Environment {
            pod_name: Some("web-0".into()),
            ..Environment::default()
        };
        assert!(Plan::new(None, &half).unwrap().events.is_none());
    }
}
