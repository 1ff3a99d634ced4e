//! Reporters: render outcomes told to Kubernetes, for operators who look there
//! first. Both follow [`Telemetry::outcomes`] in tasks of their own, log their
//! failures and never stop the run.
//!
//! # Events on the pod
//!
//! When `POD_NAME` and `POD_NAMESPACE` are set (the downward API), a failed render
//! or `check` becomes a `Warning` Event `RenderFailed` on the pod, whose note is the
//! error (cut to the API's 1 KiB); the first successful render after failures is a
//! `Normal` Event `RenderRecovered`. `kubectl describe pod` shows both. The pod's uid
//! is taken from `POD_UID` if set, else read once with a GET of the pod (optional:
//! without `get` on pods the Events carry no uid).
//!
//! A failure that lasts must not flood the API, nor hide a new error:
//!
//! - the same note is posted at most once per [`EventLimits::repeat_interval`]
//!   (default 5 min) while the failures last; a different error is posted at once.
//!   Notes that differ only in the random name of a staged file (a failed `check`
//!   names it, and failed renders are retried) count as the same;
//! - every Warning takes a token from a bucket of [`EventLimits::burst`] tokens
//!   (default 10) refilled one per [`EventLimits::refill`] (default 1 min): at most
//!   10 Warnings in a burst, and 1 a minute after that, whatever the errors;
//! - a recovery is posted only when a Warning of the same run of failures was, so
//!   recoveries never outnumber Warnings; it takes no token, so that the pod's last
//!   Event never claims a failure that has ended.
//!
//! Events are `events.k8s.io/v1` Events (what `kubectl events` and `describe`
//! show, as the core `v1` ones), created with POST only (RBAC: `create` on
//! `events.k8s.io` `events`). kube-runtime's `Recorder` posts the same kind but
//! is not used: it folds every Event of one reason into a series for 6 minutes
//! and PATCHes the first one's count, keeping its note, so a second, different
//! error would never be shown; and it has no rate limit.
//!
//! # Status ConfigMap
//!
//! With a `status:` section, every render's result is written as annotations of an
//! existing ConfigMap: [`LAST_RENDER_TIME`], [`LAST_RENDER_RESULT`],
//! [`LAST_RENDER_ERROR`] (removed on success) and [`CHECKSUMS`]. Only these
//! annotations change. Each write reads the object (GET) and replaces it (PUT)
//! with the resourceVersion it read, so a concurrent change makes it fail with
//! 409 Conflict rather than be overwritten; it is then read again and retried,
//! with backoff ([`WriteRetry`]), until it lands: an outcome is never dropped
//! for conflicts or a passing API error. Outcomes that arrive while a write is
//! under way are not queued: the next attempt reports the newest one. Nothing but times, the result, the error message and checksums is ever
//! written: no file contents, no object data.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod as PodObject};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use regex::Regex;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::StatusSettings;
use crate::telemetry::{RenderOutcome, Telemetry};

/// Annotation: when the last render finished (RFC 3339, UTC).
pub const LAST_RENDER_TIME: &str = "kube-template/last-render-time";
/// Annotation: `success` or `failure`.
pub const LAST_RENDER_RESULT: &str = "kube-template/last-render-result";
/// Annotation: the last render's error; absent after a success.
pub const LAST_RENDER_ERROR: &str = "kube-template/last-render-error";
/// Annotation: a JSON object, output path → sha256 of the file in place.
pub const CHECKSUMS: &str = "kube-template/checksums";

/// `reportingController` of the Events.
pub const REPORTING_CONTROLLER: &str = "kube-template";
/// Reason of the Warning Event for a failed render or check.
pub const REASON_FAILED: &str = "RenderFailed";
/// Reason of the Normal Event for a success after failures.
pub const REASON_RECOVERED: &str = "RenderRecovered";

/// The API's limit on an Event's note.
const MAX_NOTE_BYTES: usize = 1024;
/// Room for an error in an annotation (all of an object's annotations share 256 KiB).
const MAX_ERROR_BYTES: usize = 4096;
/// Checksums beyond this are left out rather than have every write refused.
const MAX_CHECKSUMS_BYTES: usize = 128 * 1024;
/// Distinct notes remembered for [`EventLimits::repeat_interval`].
const MAX_RECENT_NOTES: usize = 64;
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

/// How many Events a run of failures may cause (see the module docs).
#[derive(Debug, Clone)]
pub struct EventLimits {
    /// The same note is posted at most once per this, while failures last.
    pub repeat_interval: Duration,
    /// Warnings that may be posted at once; 0 posts none.
    pub burst: u32,
    /// One more Warning may be posted per this, up to `burst`.
    pub refill: Duration,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            repeat_interval: Duration::from_secs(5 * 60),
            burst: 10,
            refill: Duration::from_secs(60),
        }
    }
}

/// How a status write that conflicted (or met a transient error) is retried:
/// until it lands, or a newer outcome takes its place.
#[derive(Debug, Clone)]
pub struct WriteRetry {
    /// Attempts (each a GET and a PUT) after which a failing write is logged
    /// as a warning; it goes on after that.
    pub attempts: u32,
    /// Wait before the second attempt; it doubles after each further one.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for WriteRetry {
    fn default() -> Self {
        WriteRetry {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
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

// ---------------------------------------------------------------------------
// Events

/// Whether an Event is to be posted, by the rules of the module docs. Pure: the
/// caller passes the time in.
#[derive(Debug)]
struct Limiter {
    limits: EventLimits,
    tokens: u32,
    refilled: Instant,
    /// Notes posted in this run of failures, with when.
    recent: HashMap<String, Instant>,
    /// Failed renders in a row.
    failures: u64,
    /// Whether a Warning was posted for this run of failures.
    warned: bool,
}

impl Limiter {
    fn new(limits: EventLimits, now: Instant) -> Limiter {
        Limiter {
            tokens: limits.burst,
            limits,
            refilled: now,
            recent: HashMap::new(),
            failures: 0,
            warned: false,
        }
    }

    /// A render failed with `note`: whether to post a Warning.
    fn failure(&mut self, note: &str, now: Instant) -> bool {
        self.failures += 1;
        let interval = self.limits.repeat_interval;
        if self
            .recent
            .get(note)
            .is_some_and(|at| now.saturating_duration_since(*at) < interval)
        {
            return false;
        }
        if !self.take_token(now) {
            return false;
        }
        self.recent
            .retain(|_, at| now.saturating_duration_since(*at) < interval);
        if self.recent.len() >= MAX_RECENT_NOTES
            && let Some(oldest) = self.recent.iter().min_by_key(|(_, at)| **at).map(|(n, _)| n.clone())
        {
            self.recent.remove(&oldest);
        }
        self.recent.insert(note.to_owned(), now);
        self.warned = true;
        true
    }

    /// A render succeeded: the number of failures it ends, if a recovery is to
    /// be posted.
    fn success(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.recent.clear();
        std::mem::take(&mut self.warned).then_some(failures)
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let (burst, refill) = (self.limits.burst, self.limits.refill);
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = if refill.is_zero() {
            u128::from(burst)
        } else {
            elapsed.as_nanos() / refill.as_nanos()
        };
        if earned >= u128::from(burst.saturating_sub(self.tokens)) {
            self.tokens = burst;
            self.refilled = now;
        } else if earned > 0 {
            // Less than `burst`, so it fits.
            let earned = earned as u32;
            self.tokens += earned;
            self.refilled += refill * earned;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Posts Events about render outcomes on the pod.
struct EventReporter {
    events: Api<Event>,
    pods: Api<PodObject>,
    pod: PodRef,
    /// Whether the uid is settled (known, or not to be known).
    uid_settled: bool,
    limiter: Limiter,
    /// Tells apart Events posted within one nanosecond.
    sequence: u64,
}

impl EventReporter {
    fn new(client: Client, pod: PodRef, limits: EventLimits) -> EventReporter {
        EventReporter {
            events: Api::namespaced(client.clone(), &pod.namespace),
            pods: Api::namespaced(client, &pod.namespace),
            uid_settled: pod.uid.is_some(),
            pod,
            limiter: Limiter::new(limits, Instant::now()),
            sequence: 0,
        }
    }

    async fn post(&mut self, type_: &str, reason: &str, note: String) {
        let uid = self.uid().await;
        let now = Timestamp::now();
        self.sequence += 1;
        let nanos = now.as_nanosecond().unsigned_abs() as u64;
        // Named as client-go names Events: `<object>.<hex time>`.
        let name = format!(
            "{}.{:x}",
            truncate_ascii(&self.pod.name, 200),
            nanos.wrapping_add(self.sequence)
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.pod.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.to_owned()),
            reason: Some(reason.to_owned()),
            action: Some("Render".to_owned()),
            note: Some(note),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(self.pod.name.clone()),
                namespace: Some(self.pod.namespace.clone()),
                uid,
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(truncate_ascii(&self.pod.name, 128).to_owned()),
            ..Event::default()
        };
        match self.events.create(&PostParams::default(), &event).await {
            Ok(_) => tracing::debug!(reason, "event posted"),
            Err(error) => tracing::warn!(reason, %error, "cannot post the event"),
        }
    }

    /// The pod's uid, read once; a failed read is tried again with the next
    /// Event unless it was refused for good (403, 404).
    async fn uid(&mut self) -> Option<String> {
        if !self.uid_settled {
            match self.pods.get_metadata(&self.pod.name).await {
                Ok(pod) => {
                    self.pod.uid = pod.metadata.uid;
                    self.uid_settled = true;
                }
                Err(kube::Error::Api(status)) if status.is_forbidden() || status.is_not_found() => {
                    let code = status.code;
                    tracing::debug!(pod = %self.pod.name, code, "cannot read the pod; events carry no uid");
                    self.uid_settled = true;
                }
                Err(error) => tracing::debug!(pod = %self.pod.name, %error, "cannot read the pod's uid yet"),
            }
        }
        self.pod.uid.clone()
    }
}

impl Report for EventReporter {
    async fn report(&mut self, outcome: Arc<RenderOutcome>, _queue: &mut broadcast::Receiver<Arc<RenderOutcome>>) {
        let now = Instant::now();
        match &outcome.error {
            Some(error) => {
                let note = truncate(error, MAX_NOTE_BYTES);
                if self.limiter.failure(&repeat_key(&note), now) {
                    self.post("Warning", REASON_FAILED, note).await;
                } else {
                    tracing::debug!(failures = self.limiter.failures, "render failure event held back");
                }
            }
            None => {
                if let Some(failures) = self.limiter.success() {
                    let plural = if failures == 1 { "" } else { "s" };
                    let note = format!("rendered successfully after {failures} failed render{plural}");
                    self.post("Normal", REASON_RECOVERED, note).await;
                }
            }
        }
    }
}

/// What makes two notes the same for [`EventLimits::repeat_interval`]: the note
/// with the random part of staged file names (`output`'s `.kube-template-XXXXXX`)
/// masked, since a failed `check` names the staged file and every retry stages a
/// new one.
fn repeat_key(note: &str) -> std::borrow::Cow<'_, str> {
    static STAGED: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\.kube-template-[A-Za-z0-9]+").expect("a valid regex"));
    STAGED.replace_all(note, ".kube-template-*")
}

/// `text` cut to at most `max` bytes (names are ASCII; others are cut on a
/// character boundary).
fn truncate_ascii(text: &str, max: usize) -> &str {
    let cut = (0..=max.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

// ---------------------------------------------------------------------------
// Status ConfigMap

/// Why one status write attempt failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The API refused or could not be reached.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The GET gave no resourceVersion: writing would be a blind overwrite.
    #[error("the config map was read without a resourceVersion")]
    NoResourceVersion,
}

impl WriteError {
    /// Whether another attempt may succeed: a conflict, or a transient error.
    fn is_retryable(&self) -> bool {
        match self {
            WriteError::Api(kube::Error::Api(status)) => {
                status.is_conflict() || status.code == 429 || status.code >= 500
            }
            WriteError::Api(_) => true,
            WriteError::NoResourceVersion => false,
        }
    }
}

/// Writes render outcomes to the status ConfigMap's annotations.
struct StatusWriter {
    api: Api<ConfigMap>,
    target: StatusTarget,
    retry: WriteRetry,
    /// The last failure logged as a warning, so that a lasting one is logged once.
    last_failure: Option<String>,
}

impl StatusWriter {
    fn new(client: Client, target: StatusTarget, retry: WriteRetry) -> StatusWriter {
        StatusWriter {
            api: Api::namespaced(client, &target.namespace),
            target,
            retry,
            last_failure: None,
        }
    }

    /// One attempt: read the object, set the annotations, replace it at the
    /// resourceVersion read.
    async fn attempt(&self, outcome: &RenderOutcome) -> Result<(), WriteError> {
        let mut config_map = self.api.get(&self.target.name).await?;
        if config_map.metadata.resource_version.is_none() {
            return Err(WriteError::NoResourceVersion);
        }
        annotate(&mut config_map.metadata, outcome);
        self.api
            .replace(&self.target.name, &PostParams::default(), &config_map)
            .await?;
        Ok(())
    }

    fn failed(&mut self, error: &WriteError) {
        let message = error.to_string();
        let hint = match error {
            WriteError::Api(kube::Error::Api(status)) if status.is_not_found() => {
                "create it; kube-template only writes its annotations"
            }
            WriteError::Api(kube::Error::Api(status)) if status.is_forbidden() => "it needs get and update on it",
            _ => "",
        };
        let (config_map, namespace) = (&self.target.name, &self.target.namespace);
        if self.last_failure.as_deref() == Some(message.as_str()) {
            tracing::debug!(%config_map, %namespace, error = %message, "cannot write the status config map");
        } else {
            tracing::warn!(%config_map, %namespace, error = %message, hint, "cannot write the status config map");
            self.last_failure = Some(message);
        }
    }
}

impl Report for StatusWriter {
    async fn report(&mut self, outcome: Arc<RenderOutcome>, queue: &mut broadcast::Receiver<Arc<RenderOutcome>>) {
        let mut outcome = newest(outcome, queue);
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            match self.attempt(&outcome).await {
                Ok(()) => {
                    tracing::debug!(config_map = %self.target.name, attempt, "status written");
                    self.last_failure = None;
                    return;
                }
                Err(error) if error.is_retryable() => {
                    if attempt == self.retry.attempts {
                        self.failed(&error);
                    } else {
                        let config_map = &self.target.name;
                        tracing::debug!(%config_map, attempt, %error, "status write failed; reading it again");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                    outcome = newest(outcome, queue);
                }
                Err(error) => {
                    self.failed(&error);
                    return;
                }
            }
        }
    }
}

/// Sets the status annotations of `meta` to `outcome`, leaving every other
/// field alone.
fn annotate(meta: &mut ObjectMeta, outcome: &RenderOutcome) {
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(LAST_RENDER_TIME.to_owned(), format_time(outcome.at));
    let result = if outcome.error.is_some() { "failure" } else { "success" };
    annotations.insert(LAST_RENDER_RESULT.to_owned(), result.to_owned());
    match &outcome.error {
        Some(error) => annotations.insert(LAST_RENDER_ERROR.to_owned(), truncate(error, MAX_ERROR_BYTES)),
        None => annotations.remove(LAST_RENDER_ERROR),
    };
    let checksums: BTreeMap<&str, &str> = outcome
        .outputs
        .iter()
        .map(|(path, sum)| (path.as_str(), sum.as_str()))
        .collect();
    let checksums = serde_json::to_string(&checksums).expect("strings always serialize");
    if checksums.len() <= MAX_CHECKSUMS_BYTES {
        annotations.insert(CHECKSUMS.to_owned(), checksums);
    } else {
        tracing::debug!(
            outputs = outcome.outputs.len(),
            "too many outputs for the checksums annotation"
        );
        annotations.remove(CHECKSUMS);
    }
}

/// RFC 3339 in UTC, to the millisecond.
fn format_time(at: SystemTime) -> String {
    Timestamp::try_from(at).map_or_else(|_| String::new(), |t| format!("{t:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limits(repeat_interval: Duration, burst: u32, refill: Duration) -> EventLimits {
        EventLimits {
            repeat_interval,
            burst,
            refill,
        }
    }

    fn outcome(error: Option<&str>, outputs: &[(&str, &str)]) -> RenderOutcome {
        RenderOutcome {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_millis(5),
            group: "default".into(),
            error: error.map(str::to_owned),
            changed: false,
            outputs: outputs.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect(),
        }
    }

    #[test]
    fn the_same_failure_is_posted_once_per_repeat_interval() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(5 * MINUTE, 10, MINUTE), t0);
        assert!(limiter.failure("boom", t0));
        for s in 1..300 {
            assert!(!limiter.failure("boom", t0 + Duration::from_secs(s)), "at {s}s");
        }
        assert!(limiter.failure("boom", t0 + 5 * MINUTE));
        assert_eq!(limiter.failures, 301);
    }

    #[test]
    fn a_different_failure_is_posted_at_once() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(EventLimits::default(), t0);
        assert!(limiter.failure("boom", t0));
        assert!(limiter.failure("bang", t0 + Duration::from_secs(1)));
        assert!(!limiter.failure("boom", t0 + Duration::from_secs(2)));
    }

    #[test]
    fn distinct_failures_are_capped_by_the_bucket_then_one_per_refill() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(5 * MINUTE, 10, MINUTE), t0);
        let posted = (0..100).filter(|i| limiter.failure(&format!("error {i}"), t0)).count();
        assert_eq!(posted, 10);
        // Over the next ten minutes, one a minute.
        let mut posted = 0;
        for s in 1..=600 {
            if limiter.failure(&format!("late {s}"), t0 + Duration::from_secs(s)) {
                posted += 1;
            }
        }
        assert_eq!(posted, 10);
    }

    #[test]
    fn an_idle_bucket_refills_to_burst_and_no_more() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(MINUTE, 3, MINUTE), t0);
        assert_eq!((0..5).filter(|i| limiter.failure(&i.to_string(), t0)).count(), 3);
        let later = t0 + 1000 * MINUTE;
        assert_eq!((0..5).filter(|i| limiter.failure(&format!("x{i}"), later)).count(), 3);
    }

    #[test]
    fn recovery_is_posted_once_and_only_after_a_posted_warning() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(MINUTE, 1, 10 * MINUTE), t0);
        assert_eq!(limiter.success(), None, "no failure yet");
        assert!(limiter.failure("boom", t0));
        assert!(!limiter.failure("boom", t0));
        assert_eq!(limiter.success(), Some(2));
        assert_eq!(limiter.success(), None);
        // No token left: the failure is held back, and so is its recovery.
        assert!(!limiter.failure("boom", t0));
        assert_eq!(limiter.success(), None);
    }

    #[test]
    fn a_recovery_forgets_the_notes_so_a_relapse_is_posted() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(EventLimits::default(), t0);
        assert!(limiter.failure("boom", t0));
        assert_eq!(limiter.success(), Some(1));
        assert!(limiter.failure("boom", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_zero_burst_posts_no_warnings() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(limits(MINUTE, 0, MINUTE), t0);
        assert!(!limiter.failure("boom", t0 + 10 * MINUTE));
        assert_eq!(limiter.success(), None);
    }

    #[test]
    fn notes_differing_only_in_the_staged_file_name_repeat() {
        let note =
            |name| format!("template `a`: check [\"false\"] rejected /etc/out/.kube-template-{name} (exit status: 1)");
        assert_eq!(repeat_key(&note("Ab12Cd")), repeat_key(&note("xY98zW")));
        assert_ne!(repeat_key(&note("Ab12Cd")), repeat_key("template `b`: boom"));
        let t0 = Instant::now();
        let mut limiter = Limiter::new(EventLimits::default(), t0);
        assert!(limiter.failure(&repeat_key(&note("Ab12Cd")), t0));
        assert!(!limiter.failure(&repeat_key(&note("xY98zW")), t0 + MINUTE));
    }

    #[test]
    fn truncate_keeps_char_boundaries_and_the_limit() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = truncate(&long, MAX_NOTE_BYTES);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_ascii("abcdef", 3), "abc");
        assert_eq!(truncate_ascii("ab", 3), "ab");
    }

    #[test]
    fn annotate_sets_the_result_and_removes_the_error_on_success() {
        let mut meta = ObjectMeta {
            annotations: Some(BTreeMap::from([("other".to_owned(), "kept".to_owned())])),
            ..ObjectMeta::default()
        };
        annotate(
            &mut meta,
            &outcome(Some("template `a`: boom"), &[("/out/b", "22"), ("/out/a", "11")]),
        );
        let annotations = meta.annotations.clone().unwrap();
        assert_eq!(annotations[LAST_RENDER_RESULT], "failure");
        assert_eq!(annotations[LAST_RENDER_ERROR], "template `a`: boom");
        assert_eq!(annotations[LAST_RENDER_TIME], "2023-11-14T22:13:20.123Z");
        assert_eq!(annotations[CHECKSUMS], r#"{"/out/a":"11","/out/b":"22"}"#);
        assert_eq!(annotations["other"], "kept");

        annotate(&mut meta, &outcome(None, &[]));
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations[LAST_RENDER_RESULT], "success");
        assert!(!annotations.contains_key(LAST_RENDER_ERROR));
        assert_eq!(annotations[CHECKSUMS], "{}");
        assert_eq!(annotations["other"], "kept");
    }

    #[test]
    fn checksums_too_large_for_an_annotation_are_left_out() {
        let sum = "0".repeat(64);
        let paths: Vec<String> = (0..3000).map(|i| format!("/etc/haproxy/certs/{i:06}.pem")).collect();
        let outputs: Vec<(&str, &str)> = paths.iter().map(|p| (p.as_str(), sum.as_str())).collect();
        let mut meta = ObjectMeta::default();
        annotate(&mut meta, &outcome(None, &outputs[..10]));
        assert!(meta.annotations.as_ref().unwrap().contains_key(CHECKSUMS));
        annotate(&mut meta, &outcome(None, &outputs));
        assert!(!meta.annotations.unwrap().contains_key(CHECKSUMS));
    }

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
