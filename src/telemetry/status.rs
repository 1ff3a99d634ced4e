//! The live status of a run: what `/healthz`, `/readyz` and the status page
//! report. The pipeline and the sources write it; the admin server reads it.
//! It never holds object data, only names, counts, times and checksums.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::activity::Activity;
use super::problems::{Problem, Readiness, Verdict};

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
    /// How long it may be silent with its connection open before it counts
    /// as hung (`None`: never).
    pub silence_limit: Option<Duration>,
    /// The last error, until the watch shows life again.
    pub error: Option<String>,
}

impl WatchInfo {
    /// Since when the watch cannot reach the API server (its requests fail
    /// or are answered with errors), if it cannot.
    pub fn disconnected_since(&self) -> Option<SystemTime> {
        let failing = self.activity.failing_for()?;
        Some(SystemTime::now() - failing)
    }
}

/// One output file, for the status page.
#[derive(Debug, Clone)]
pub struct OutputInfo {
    pub template: String,
    pub written_at: SystemTime,
    pub sha256: String,
}

/// The last render (of a group).
#[derive(Debug, Clone)]
pub struct RenderInfo {
    pub at: SystemTime,
    pub duration: Duration,
    /// `None` on success; the error (template, line, cause) otherwise.
    pub error: Option<String>,
}

/// One group of templates, rendered, written and reloaded on its own.
#[derive(Debug, Clone, Default)]
pub struct GroupInfo {
    /// Whether problems name it: false for the one group of a config
    /// without named groups.
    pub named: bool,
    /// Which stores it reads (`all stores` where it cannot be known).
    pub reads: String,
    pub last_render: Option<RenderInfo>,
    /// When the current streak of failed renders began.
    pub failing_since: Option<SystemTime>,
    /// A render of this run succeeded, or its outputs were on disk already
    /// when the run started.
    pub good_render: bool,
}

#[derive(Debug, Default)]
struct Inner {
    stores: BTreeMap<String, StoreInfo>,
    watches: Vec<WatchInfo>,
    outputs: BTreeMap<String, OutputInfo>,
    /// The last render of any group.
    last_render: Option<RenderInfo>,
    /// Each group's renders, by name.
    groups: BTreeMap<String, GroupInfo>,
    /// Every output was on disk when the run started (rendered by an init
    /// container or an earlier run).
    outputs_found: bool,
    /// A stage task that died.
    dead: Option<String>,
    /// The pipeline loop's heartbeat and how long it may go without one.
    heartbeat: Option<(Arc<Activity>, Duration)>,
    readiness: Readiness,
    /// Problems reported by parts of the pipeline, by their key.
    reported: BTreeMap<String, Problem>,
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

    /// Registers a group before its first render; `named`: whether problems
    /// name it; `reads` describes the stores it reads.
    pub fn add_group(&self, name: &str, named: bool, reads: String) {
        let mut inner = self.lock();
        let group = inner.groups.entry(name.to_string()).or_default();
        group.named = named;
        group.reads = reads;
    }

    /// A render of `group` ended, with `error` if it failed.
    pub fn render_done(&self, group: &str, duration: Duration, error: Option<String>) {
        let mut inner = self.lock();
        let at = SystemTime::now();
        let info = inner.groups.entry(group.to_string()).or_default();
        if error.is_none() {
            info.good_render = true;
            info.failing_since = None;
        } else {
            info.failing_since.get_or_insert(at);
        }
        let render = RenderInfo { at, duration, error };
        info.last_render = Some(render.clone());
        inner.last_render = Some(render);
    }

    /// Every output was on disk when the run started: a good render (files
    /// are only ever written whole, after a successful render).
    pub fn outputs_found(&self) {
        self.lock().outputs_found = true;
    }

    /// Every output of `group` was on disk when the run started.
    pub fn group_outputs_found(&self, group: &str) {
        self.lock().groups.entry(group.to_string()).or_default().good_render = true;
    }

    /// Records why the sources are not started yet (`None`: they are).
    pub fn starting(&self, why: Option<String>) {
        self.lock().starting = why;
    }

    pub fn task_died(&self, why: String) {
        self.lock().dead = Some(why);
    }

    /// Why the initial sync is not done: the sources not started yet, and
    /// one reason per watch that has not listed, with its last error (the
    /// verb, the resource and the server's message), if any.
    pub fn sync_problems(&self) -> Vec<String> {
        sync_problems(&self.lock())
    }

    /// What `/readyz` means from now on.
    pub fn set_readiness(&self, readiness: Readiness) {
        self.lock().readiness = readiness;
    }

    /// Starts following the pipeline loop: it touches the returned heartbeat
    /// on every turn, and `/healthz` fails once it went `limit` without one.
    pub fn heartbeat(&self, limit: Duration) -> Arc<Activity> {
        let heartbeat = self.activity();
        self.lock().heartbeat = Some((Arc::clone(&heartbeat), limit));
        heartbeat
    }

    /// Reports a problem under `key` (`Some`), or that it is over (`None`).
    pub fn report(&self, key: &str, problem: Option<Problem>) {
        let mut inner = self.lock();
        match problem {
            Some(problem) => inner.reported.insert(key.to_string(), problem),
            None => inner.reported.remove(key),
        };
    }

    /// Every current problem, and whether the run is ready (DESIGN section
    /// 7): every watch listed and a good render on disk; with
    /// [`Readiness::Strict`] also the last render succeeded and every watch is
    /// connected.
    pub fn readiness(&self) -> Verdict {
        let inner = self.lock();
        let mut problems: Vec<Problem> = inner
            .watches
            .iter()
            .filter(|w| !w.synced)
            .map(|w| Problem::ListPending {
                watch: w.name.clone(),
                error: w.error.clone(),
            })
            .collect();
        if let Some(why) = &inner.starting {
            problems.insert(0, Problem::NotStarted { why: why.clone() });
        }
        let good = inner.outputs_found || (!inner.groups.is_empty() && inner.groups.values().all(|g| g.good_render));
        if !good {
            problems.push(Problem::NoGoodRender);
        }
        for (name, group) in &inner.groups {
            if let (Some(RenderInfo { error: Some(error), .. }), Some(since)) =
                (&group.last_render, group.failing_since)
            {
                let error = error.clone();
                problems.push(match group.named {
                    false => Problem::RenderFailing { error, since },
                    true => Problem::GroupFailing {
                        group: name.clone(),
                        error,
                        since,
                    },
                });
            }
        }
        problems.extend(inner.watches.iter().filter_map(|w| {
            Some(Problem::WatchDisconnected {
                watch: w.name.clone(),
                since: w.disconnected_since()?,
                error: w.error.clone(),
            })
        }));
        problems.extend(inner.reported.values().cloned());
        if let Some(dead) = &inner.dead {
            problems.push(Problem::Stopped { why: dead.clone() });
        }
        Verdict::new(problems, inner.readiness)
    }

    /// `Ok` while this process can make progress; else one reason per part
    /// that cannot: a stage that died, a pipeline loop that stopped turning,
    /// a watch whose connection is open but silent past its limit. A watch
    /// that cannot connect is no reason: restarts would not bring the API
    /// server back.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let inner = self.lock();
        let mut reasons = Vec::new();
        for w in &inner.watches {
            let silent = w.activity.silent_for();
            if let Some(limit) = w.silence_limit
                && w.activity.is_open()
                && silent > limit
            {
                reasons.push(format!(
                    "watch {}: connection open but silent for {}s (limit {}s)",
                    w.name,
                    silent.as_secs(),
                    limit.as_secs()
                ));
            }
        }
        if let Some((heartbeat, limit)) = &inner.heartbeat {
            let still = heartbeat.silent_for();
            if still > *limit {
                reasons.push(format!(
                    "pipeline loop has not turned for {}s (limit {}s)",
                    still.as_secs(),
                    limit.as_secs()
                ));
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
            groups: inner.groups.clone(),
        }
    }
}

fn sync_problems(inner: &Inner) -> Vec<String> {
    let starting = inner
        .starting
        .iter()
        .map(|why| Problem::NotStarted { why: why.clone() });
    let pending = inner
        .watches
        .iter()
        .filter(|w| !w.synced)
        .map(|w| Problem::ListPending {
            watch: w.name.clone(),
            error: w.error.clone(),
        });
    starting.chain(pending).map(|p| p.to_string()).collect()
}

/// A point-in-time copy of the status.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub stores: BTreeMap<String, StoreInfo>,
    pub watches: Vec<WatchInfo>,
    pub outputs: BTreeMap<String, OutputInfo>,
    pub last_render: Option<RenderInfo>,
    pub groups: BTreeMap<String, GroupInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(status: &Status) -> Vec<String> {
        status.readiness().lines()
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_needs_every_list_and_a_good_render_then_holds_through_failures() {
        let status = Status::default();
        let activity = status.activity();
        let w = status.add_watch("v1/Secret".into(), Arc::clone(&activity), None);
        assert!(!status.readiness().ready);
        assert_eq!(
            lines(&status),
            ["watch v1/Secret: initial list not done", "no good render on disk yet"]
        );
        status.watch_synced(w);
        status.render_done("default", Duration::from_millis(3), Some("template `t`: boom".into()));
        let verdict = status.readiness();
        assert!(!verdict.ready, "a failed first render is no good render");
        assert!(verdict.lines()[1].ends_with(": template `t`: boom"), "{verdict:?}");
        status.render_done("default", Duration::from_millis(3), None);
        assert_eq!(status.readiness(), Verdict::new(vec![], Readiness::Serving));
        status.render_done("default", Duration::from_millis(3), Some("template `t`: boom".into()));
        activity.failed();
        let verdict = status.readiness();
        assert!(verdict.ready, "{verdict:?}");
        assert_eq!(verdict.problems.len(), 2, "{verdict:?}");
        status.set_readiness(Readiness::Strict);
        assert!(!status.readiness().ready);
        status.render_done("default", Duration::from_millis(3), None);
        activity.opened();
        assert!(status.readiness().ready);
    }

    #[tokio::test(start_paused = true)]
    async fn outputs_on_disk_at_the_start_count_as_a_good_render() {
        let status = Status::default();
        status.outputs_found();
        status.render_done("default", Duration::from_millis(3), Some("template `t`: boom".into()));
        let verdict = status.readiness();
        assert!(verdict.ready, "{verdict:?}");
        assert_eq!(verdict.problems.len(), 1, "{verdict:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_group_is_named_and_the_others_keep_their_good_render() {
        let status = Status::default();
        status.add_group("dashboards", true, "all stores".into());
        status.add_group("alerts", true, "rules".into());
        status.render_done("dashboards", Duration::from_millis(3), None);
        assert_eq!(lines(&status), ["no good render on disk yet"]);
        status.render_done("alerts", Duration::from_millis(3), Some("template `r`: boom".into()));
        let [no_good, failing] = lines(&status).try_into().unwrap();
        assert_eq!(no_good, "no good render on disk yet", "alerts never rendered well");
        assert!(failing.starts_with("group alerts: "), "{failing}");
        assert!(status.view().groups["alerts"].failing_since.is_some());
        status.group_outputs_found("alerts");
        let verdict = status.readiness();
        assert!(verdict.ready, "{verdict:?}");
        let [line] = verdict.lines().try_into().unwrap();
        assert!(line.starts_with("group alerts: last render failed"), "{line}");
        assert!(line.ends_with(": template `r`: boom"), "{line}");
        status.render_done(
            "dashboards",
            Duration::from_millis(3),
            Some("template `d`: boom".into()),
        );
        assert_eq!(status.readiness().problems.len(), 2);
        status.render_done("alerts", Duration::from_millis(3), None);
        let [line] = status.readiness().lines().try_into().unwrap();
        assert!(line.starts_with("group dashboards: "), "{line}");
    }

    #[tokio::test(start_paused = true)]
    async fn reported_problems_are_listed_until_cleared() {
        let status = Status::default();
        status.outputs_found();
        status.report("stale", Some(Problem::StaleReads));
        assert_eq!(status.readiness().problems, [Problem::StaleReads]);
        status.report("stale", None);
        assert!(status.readiness().problems.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_open_and_silent_past_its_limit_is_unhealthy_until_it_shows_life() {
        let status = Status::default();
        let activity = status.activity();
        status.add_watch(
            "v1/ConfigMap".into(),
            Arc::clone(&activity),
            Some(Duration::from_secs(10)),
        );
        status.add_watch("manifests".into(), status.activity(), None);
        activity.opened();
        tokio::time::advance(Duration::from_secs(11)).await;
        let reasons = status.health().unwrap_err();
        assert_eq!(
            reasons,
            ["watch v1/ConfigMap: connection open but silent for 11s (limit 10s)"]
        );
        activity.touch();
        assert!(status.health().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_is_hung_only_while_a_connection_is_open_and_silent() {
        let status = Status::default();
        let activity = status.activity();
        status.add_watch(
            "v1/ConfigMap".into(),
            Arc::clone(&activity),
            Some(Duration::from_secs(10)),
        );
        activity.opened();
        activity.closed();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(status.health().is_ok());
        // A connection opened after a long outage is not silent yet.
        activity.failed();
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.opened();
        assert!(status.health().is_ok());
        // Nor is one dropped and opened again with nothing on it.
        tokio::time::advance(Duration::from_secs(6)).await;
        activity.closed();
        activity.opened();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(status.health().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipeline_loop_that_stops_turning_is_unhealthy() {
        let status = Status::default();
        let heartbeat = status.heartbeat(Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        heartbeat.touch();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(status.health().is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            status.health().unwrap_err(),
            ["pipeline loop has not turned for 6s (limit 5s)"]
        );
    }
}
