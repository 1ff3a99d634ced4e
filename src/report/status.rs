//! The status ConfigMap.
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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::broadcast;

use super::{Report, StatusTarget, newest, truncate};
use crate::telemetry::RenderOutcome;

/// Annotation: when the last render finished (RFC 3339, UTC).
pub const LAST_RENDER_TIME: &str = "kube-template/last-render-time";
/// Annotation: `success` or `failure`.
pub const LAST_RENDER_RESULT: &str = "kube-template/last-render-result";
/// Annotation: the last render's error; absent after a success.
pub const LAST_RENDER_ERROR: &str = "kube-template/last-render-error";
/// Annotation: a JSON object, output path → sha256 of the file in place.
pub const CHECKSUMS: &str = "kube-template/checksums";

/// Room for an error in an annotation (all of an object's annotations share 256 KiB).
const MAX_ERROR_BYTES: usize = 4096;
/// Checksums beyond this are left out rather than have every write refused.
const MAX_CHECKSUMS_BYTES: usize = 128 * 1024;

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
pub(super) struct StatusWriter {
    api: Api<ConfigMap>,
    target: StatusTarget,
    retry: WriteRetry,
    /// The last failure logged as a warning, so that a lasting one is logged once.
    last_failure: Option<String>,
}

impl StatusWriter {
    pub(super) fn new(client: Client, target: StatusTarget, retry: WriteRetry) -> StatusWriter {
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

    fn outcome(error: Option<&str>, outputs: &[(&str, &str)]) -> RenderOutcome {
        RenderOutcome {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_millis(5),
            error: error.map(str::to_owned),
            changed: false,
            outputs: outputs.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect(),
        }
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
}
