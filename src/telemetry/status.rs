//! The live status of a run: what `/healthz`, `/readyz` and the status page
//! report. The pipeline and the sources write it; the admin server reads it.
//! It never holds object data, only names, counts, times and checksums.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// When a watch last showed life (a response or any bytes of its stream,
/// bookmarks included), as milliseconds since the status was created.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    millis: AtomicU64,
}

impl Activity {
    pub fn new(base: Instant) -> Activity {
        Activity {
            millis: AtomicU64::new(base.elapsed().as_millis() as u64),
            base,
        }
    }

    pub fn touch(&self) {
        self.millis
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the watch has been silent.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.millis.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// One store, for the status page.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    /// apiVersion, kind, selectors, store kind.
    pub resource: String,
    pub objects: usize,
    pub last_event: Option<SystemTime>,
}

/// One watch stream (a watch in one namespace, or the manifests).
#[derive(Debug, Clone)]
pub struct WatchInfo {
    pub name: String,
    pub synced: bool,
    pub activity: Arc<Activity>,
    /// How long it may be silent before it counts as stalled (`None`: never).
    pub silence_limit: Option<Duration>,
    /// The last error, until the watch shows life again.
    pub error: Option<String>,
}

/// One output file, for the status page.
#[derive(Debug, Clone)]
pub struct OutputInfo {
    pub template: String,
    pub written_at: SystemTime,
    pub sha256: String,
}

/// The last render.
#[derive(Debug, Clone)]
pub struct RenderInfo {
    pub at: SystemTime,
    pub duration: Duration,
    /// `None` on success; the error (template, line, cause) otherwise.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    stores: BTreeMap<String, StoreInfo>,
    watches: Vec<WatchInfo>,
    outputs: BTreeMap<String, OutputInfo>,
    last_render: Option<RenderInfo>,
    /// A stage task that died.
    dead: Option<String>,
    /// Why the sources have not started yet (an API server out of reach).
    starting: Option<String>,
}

/// Shared live status.
#[derive(Debug)]
pub struct Status {
    base: Instant,
    inner: Mutex<Inner>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            base: Instant::now(),
            inner: Mutex::default(),
        }
    }
}

impl Status {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh activity cell for a new watch stream.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::new(Activity::new(self.base))
    }

    pub fn add_store(&self, name: &str, resource: String) {
        self.lock().stores.insert(
            name.to_string(),
            StoreInfo {
                resource,
                objects: 0,
                last_event: None,
            },
        );
    }

    pub fn store_changed(&self, name: &str, objects: usize) {
        if let Some(store) = self.lock().stores.get_mut(name) {
            store.objects = objects;
            store.last_event = Some(SystemTime::now());
        }
    }

    /// Registers a watch stream; returns its index.
    pub fn add_watch(&self, name: String, activity: Arc<Activity>, silence_limit: Option<Duration>) -> usize {
        let mut inner = self.lock();
        inner.watches.push(WatchInfo {
            name,
            synced: false,
            activity,
            silence_limit,
            error: None,
        });
        inner.watches.len() - 1
    }

    pub fn watch_synced(&self, index: usize) {
        if let Some(w) = self.lock().watches.get_mut(index) {
            w.synced = true;
            w.error = None;
        }
    }

    pub fn watch_error(&self, index: usize, error: Option<String>) {
        if let Some(w) = self.lock().watches.get_mut(index) {
            w.error = error;
        }
    }

    pub fn output_written(&self, path: &str, template: &str, sha256: String) {
        self.lock().outputs.insert(
            path.to_string(),
            OutputInfo {
                template: template.to_string(),
                written_at: SystemTime::now(),
                sha256,
            },
        );
    }

    pub fn output_removed(&self, path: &str) {
        self.lock().outputs.remove(path);
    }

    pub fn render_done(&self, duration: Duration, error: Option<String>) {
        self.lock().last_render = Some(RenderInfo {
            at: SystemTime::now(),
            duration,
            error,
        });
    }

    /// Records why the sources are not started yet (`None`: they are).
    pub fn starting(&self, why: Option<String>) {
        self.lock().starting = why;
    }

    pub fn task_died(&self, why: String) {
        self.lock().dead = Some(why);
    }

    /// Why the initial sync is not done: one reason per watch that has not
    /// listed, with its last error (the verb, the resource and the server's
    /// message), if any.
    pub fn sync_problems(&self) -> Vec<String> {
        sync_problems(&self.lock())
    }

    /// `Ok` once every watch has listed and the last render succeeded; else
    /// one reason per failing part.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let inner = self.lock();
        let mut reasons = sync_problems(&inner);
        match &inner.last_render {
            None => reasons.push("no render yet".into()),
            Some(RenderInfo { error: Some(e), .. }) => reasons.push(format!("last render failed: {e}")),
            Some(_) => {}
        }
        if let Some(dead) = &inner.dead {
            reasons.push(format!("stopped: {dead}"));
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons) }
    }

    /// `Ok` while every watch shows life and no stage died; else one reason
    /// per failing part.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let inner = self.lock();
        let mut reasons = Vec::new();
        for w in &inner.watches {
            let silent = w.activity.silent_for();
            if let Some(limit) = w.silence_limit
                && silent > limit
            {
                let mut reason = format!("watch {}: silent for {}s", w.name, silent.as_secs());
                if let Some(error) = &w.error {
                    reason.push_str(&format!(" (last error: {error})"));
                }
                reasons.push(reason);
            }
        }
        if let Some(dead) = &inner.dead {
            reasons.push(format!("stopped: {dead}"));
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons) }
    }

    /// A copy of everything, for the status page.
    pub fn view(&self) -> StatusView {
        let inner = self.lock();
        StatusView {
            stores: inner.stores.clone(),
            watches: inner.watches.clone(),
            outputs: inner.outputs.clone(),
            last_render: inner.last_render.clone(),
        }
    }
}

fn sync_problems(inner: &Inner) -> Vec<String> {
    inner
        .starting
        .iter()
        .cloned()
        .chain(inner.watches.iter().filter(|w| !w.synced).map(|w| match &w.error {
            Some(error) => format!("watch {}: initial list not done: {error}", w.name),
            None => format!("watch {}: initial list not done", w.name),
        }))
        .collect()
}

/// A point-in-time copy of the status.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub stores: BTreeMap<String, StoreInfo>,
    pub watches: Vec<WatchInfo>,
    pub outputs: BTreeMap<String, OutputInfo>,
    pub last_render: Option<RenderInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_needs_every_list_and_a_good_render() {
        let status = Status::default();
        let w = status.add_watch("v1/Secret".into(), status.activity(), None);
        assert_eq!(
            status.readiness().unwrap_err(),
            ["watch v1/Secret: initial list not done", "no render yet"]
        );
        status.watch_synced(w);
        status.render_done(Duration::from_millis(3), Some("template `t`: boom".into()));
        assert_eq!(
            status.readiness().unwrap_err(),
            ["last render failed: template `t`: boom"]
        );
        status.render_done(Duration::from_millis(3), None);
        assert!(status.readiness().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_silent_past_its_limit_is_unhealthy_until_it_shows_life() {
        let status = Status::default();
        let activity = status.activity();
        status.add_watch(
            "v1/ConfigMap".into(),
            Arc::clone(&activity),
            Some(Duration::from_secs(10)),
        );
        status.add_watch("manifests".into(), status.activity(), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        let reasons = status.health().unwrap_err();
        assert_eq!(reasons, ["watch v1/ConfigMap: silent for 11s"]);
        activity.touch();
        assert!(status.health().is_ok());
    }
}
