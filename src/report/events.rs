//! Events on the pod.
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

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod as PodObject};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::limiter::{EventLimits, Limiter, repeat_key};
use super::{PodRef, Report, truncate};
use crate::telemetry::RenderOutcome;

/// `reportingController` of the Events.
pub const REPORTING_CONTROLLER: &str = "kube-template";
/// Reason of the Warning Event for a failed render or check.
pub const REASON_FAILED: &str = "RenderFailed";
/// Reason of the Normal Event for a success after failures.
pub const REASON_RECOVERED: &str = "RenderRecovered";

/// The API's limit on an Event's note.
pub(super) const MAX_NOTE_BYTES: usize = 1024;

/// Posts Events about render outcomes on the pod.
pub(super) struct EventReporter {
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
    pub(super) fn new(client: Client, pod: PodRef, limits: EventLimits) -> EventReporter {
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

/// `text` cut to at most `max` bytes (names are ASCII; others are cut on a
/// character boundary).
fn truncate_ascii(text: &str, max: usize) -> &str {
    let cut = (0..=max.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
