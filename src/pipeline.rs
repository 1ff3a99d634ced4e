//! The pipeline that ties the stages together: sources → indexer → stores →
//! snapshot → renderer → outputs (→ actions).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use tracing::Instrument;

use crate::action;
use crate::config::{self, Config, OutputTarget, Template};
use crate::object::Meta;
use crate::object::document::Document;
use crate::output::{self, Job};
use crate::redact::Redactor;
use crate::render::{self, Renderer, StoresSnapshot};
use crate::source::own_writes::OwnWrites;
use crate::source::{self, Event, Scope, Sources};
use crate::store::AnyStore;
use crate::store::full::FullStore;
use crate::store::on_demand::{BodyCache, OnDemandStore};
use crate::telemetry::metrics::{EventLabels, StoreLabel, TemplateLabel};
use crate::telemetry::problems::{Problem, Readiness};
use crate::telemetry::status::Activity;
use crate::telemetry::{RenderOutcome, Telemetry};

/// A validated config with its compiled templates: everything a run needs
/// that does not depend on the cluster.
#[derive(Debug)]
pub struct Prepared {
    pub config: Config,
    pub renderer: Renderer,
}

/// Loads a config and compiles its templates, reporting every problem of both
/// at once.
pub fn prepare(path: &Path) -> config::Result<Prepared> {
    let (text, base_dir) = Config::read(path)?;
    prepare_text(&text, path, &base_dir)
}

/// [`prepare`] for config text that is not read from a file (a config made
/// from something else, such as `k8s-sidecar`'s environment): `path` names
/// it in errors, `base_dir` anchors its relative paths.
pub fn prepare_text(text: &str, path: &Path, base_dir: &Path) -> config::Result<Prepared> {
    let invalid = |issues| config::Error::Invalid {
        path: path.to_owned(),
        issues,
    };
    let (config, mut issues) = Config::parse_lenient(text, path, base_dir).map_err(invalid)?;
    issues.extend(source::shared_watch_issues(&config));
    config::sort_issues(&mut issues);
    match Renderer::new(&config) {
        Ok(renderer) if issues.is_empty() => Ok(Prepared { config, renderer }),
        Ok(_) => Err(invalid(issues)),
        Err(more) => {
            issues.extend(more);
            config::sort_issues(&mut issues);
            Err(invalid(issues))
        }
    }
}

/// Why a render-and-write did not complete. Previous files stay in place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more templates failed to render.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Render(Vec<render::Error>),
    /// Writing or checking the outputs failed.
    #[error(transparent)]
    Output(#[from] output::Error),
}

/// Fills one store per `watched_resources` entry from a set of objects, each
/// object going to every entry whose watch selects it. The objects are in
/// memory already, so every store is a full one (`on-demand` included).
pub fn stores_from(config: &Config, objects: &[Value]) -> BTreeMap<String, AnyStore> {
    let mut stores = empty_stores(config, &BTreeMap::new());
    let namespaces = source::Namespaces::among(objects);
    for watch in source::plan(config) {
        let selected: Vec<Document> = objects
            .iter()
            .filter(|o| watch.spec.selects(o, &namespaces))
            .map(|o| watch.document(o))
            .collect();
        for name in &watch.stores {
            if let Some(store) = stores.get_mut(name) {
                store.reset_scope(None, selected.iter().cloned());
            }
        }
    }
    stores
}

/// One empty store per `watched_resources` entry: on-demand where a body
/// cache is given for it, full otherwise.
pub fn empty_stores(config: &Config, caches: &BTreeMap<String, Arc<BodyCache>>) -> BTreeMap<String, AnyStore> {
    config
        .watched_resources
        .iter()
        .map(|(name, resource)| {
            let store = match caches.get(name) {
                Some(cache) => AnyStore::OnDemand(
                    OnDemandStore::new(resource.indexer.clone(), resource.ignore_fields.clone()),
                    Arc::clone(cache),
                ),
                None => AnyStore::Full(FullStore::new(resource.indexer.clone(), resource.ignore_fields.clone())),
            };
            (name.clone(), store)
        })
        .collect()
}

/// One consistent snapshot of all stores.
pub fn snapshot(stores: &BTreeMap<String, AnyStore>) -> StoresSnapshot {
    StoresSnapshot {
        stores: stores.iter().map(|(name, s)| (name.clone(), s.snapshot())).collect(),
    }
}

/// Renders every template from `snapshot` and writes the outputs (all or
/// none). With `out_root`, every output is re-rooted under it (`render --out`).
pub async fn render_and_write(
    prepared: &Prepared,
    snapshot: &StoresSnapshot,
    out_root: Option<&Path>,
) -> Result<output::Report, Error> {
    let rendered = prepared.renderer.render_all(snapshot).map_err(Error::Render)?;
    let redactor = redactor(&prepared.config, snapshot);
    write(prepared, &rendered, out_root, &redactor).await
}

/// What keeps the values of the snapshot's Secrets (whole objects, and the
/// bodies on-demand stores fetched) out of what checks and actions print.
pub fn redactor(config: &Config, snapshot: &StoresSnapshot) -> Redactor {
    let is_secret = |name: &String| {
        config
            .watched_resources
            .get(name)
            .is_some_and(|r| r.spec.api_version == "v1" && r.spec.kind == "Secret")
    };
    Redactor::new(
        snapshot
            .stores
            .iter()
            .filter(|(name, _)| is_secret(name))
            .map(|(_, store)| store.clone()),
    )
}

/// Writes rendered outputs (all or none), re-rooted under `out_root` if given.
pub async fn write(
    prepared: &Prepared,
    rendered: &[render::Rendered],
    out_root: Option<&Path>,
    redactor: &Redactor,
) -> Result<output::Report, Error> {
    let targets: Vec<OutputTarget> = rendered
        .iter()
        .map(|r| {
            let target = &prepared.config.templates[&r.template].output;
            match out_root {
                Some(root) => target.rerooted(root),
                None => target.clone(),
            }
        })
        .collect();
    // A re-rooted render (`render --out`, template tests) is a preview, often
    // made without the privileges `owner:` needs: it keeps the files' owner.
    let templates: Vec<Cow<'_, Template>> = rendered
        .iter()
        .map(|r| {
            let template = &prepared.config.templates[&r.template];
            match (out_root, template.owner) {
                (Some(_), Some(_)) => Cow::Owned(Template {
                    owner: None,
                    ..template.clone()
                }),
                _ => Cow::Borrowed(template),
            }
        })
        .collect();
    let jobs: Vec<Job<'_>> = rendered
        .iter()
        .zip(&targets)
        .zip(&templates)
        .map(|((r, target), template)| Job {
            template,
            target,
            content: &r.content,
        })
        .collect();
    Ok(output::write_all(&jobs, redactor).await?)
}

/// How a live run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown signal came.
    Shutdown,
    /// `--once`: the first render succeeded (and the actions ran).
    Rendered,
    /// `--once`: the first render failed.
    RenderFailed,
}

/// Why a live run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A source task died; the process stops rather than render from a
    /// store that no longer follows the cluster.
    #[error("a source stopped: {0}")]
    SourceDied(String),
    /// The task running the actions died (a panic): a bug, reported rather
    /// than hidden.
    #[error("the actions task failed: {0}")]
    ActionsDied(String),
    /// `--once`: the initial sync did not finish by its deadline; why, per
    /// watch still waiting.
    #[error("the initial sync did not finish within --sync-timeout: {0}")]
    NotSynced(String),
}

/// Options of a live run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Render once after the initial sync, run the actions, and stop.
    pub once: bool,
    /// Give up (an error) if the initial sync is not done by then: an init
    /// container must not hang on an error that lasts.
    pub sync_deadline: Option<Instant>,
}

/// The live pipeline: applies source events to the stores, renders a
/// snapshot once every watch has listed and the events have quieted
/// (`render.wait`), writes the outputs, and runs the actions when a file
/// changed. Renders never overlap: events that arrive meanwhile wait in the
/// queue and cause one more render. Actions run on a task of their own, so
/// that events, the source tasks and `shutdown` are heeded while they run;
/// the next render waits for them, so that no file changes under a reload and
/// the actions of two renders never overlap. Returns when `shutdown` resolves
/// (between renders, after the running actions, each within its timeout), or
/// after the first render and its actions with `--once`.
pub async fn run(
    prepared: Arc<Prepared>,
    mut sources: Sources,
    options: RunOptions,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, RunError> {
    let config = &prepared.config;
    for path in output::remove_leftovers(config.templates.values().map(|t| &t.output)) {
        tracing::info!(path = %path.display(), "staged file of an earlier run removed");
    }
    let mut stores = empty_stores(config, &sources.caches);
    let mut checksums: BTreeMap<String, String> = BTreeMap::new();
    // Per store, the newest resourceVersion of the events applied to it.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut unsynced: HashSet<(usize, Scope)> = sources.expected.iter().cloned().collect();
    let wait = config.render.wait;
    let mut burst: Option<Burst> = None;
    let mut retry: Option<(Instant, u32)> = None;
    let mut rendered_once = false;
    let (heartbeat, mut tick) = follow_probes(config, &telemetry);
    let mut own_writes = OwnWrites::default();
    let mut actions = action::Running::default();
    tokio::pin!(shutdown);
    loop {
        heartbeat.touch();
        let due = if !unsynced.is_empty() || actions.is_running() {
            None
        } else if let Some(burst) = &burst {
            Some(if rendered_once { burst.due(wait) } else { Instant::now() })
        } else {
            retry.map(|(at, _)| at)
        };
        // Under a flood of events the event branch is always ready: once a
        // burst reached `wait.max`, its render goes before more events. Until
        // then, events already queued join the burst (with `wait.min: 0`
        // too), so a backlog read at once gives one render, not one each.
        let overdue =
            due.is_some() && rendered_once && burst.as_ref().is_some_and(|b| b.first + wait.max <= Instant::now());
        tokio::select! {
            biased;
            () = &mut shutdown => {
                actions.finish().await;
                return Ok(Stopped::Shutdown);
            }
            Some(ended) = sources.tasks.join_next() => {
                let why = match ended {
                    Ok(Ok(())) => "a source finished".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("a source task failed: {e}"),
                };
                telemetry.status.task_died(why.clone());
                return Err(RunError::SourceDied(why));
            }
            () = sleep_until(options.sync_deadline), if !unsynced.is_empty() && options.sync_deadline.is_some() => {
                return Err(RunError::NotSynced(telemetry.status.sync_problems().join("; ")));
            }
            event = sources.events.recv(), if !overdue => {
                let Some(event) = event else {
                    telemetry.status.task_died("all sources stopped".into());
                    return Err(RunError::SourceDied("all sources stopped".into()));
                };
                // A listing of everything stands for every scope of its watch
                // (a kind found cluster-scoped only once it was served).
                if let Event::Listed { scope, objects } = &event.event {
                    let waiting = unsynced.len();
                    unsynced.retain(|(w, s)| !(*w == event.watch && (s == scope || scope.is_none())));
                    if unsynced.len() < waiting {
                        let watch = &sources.watches[event.watch];
                        tracing::info!(stores = %watch.stores.join(","), watch = %watch.spec.describe(), objects = objects.len(), "initial list done");
                    }
                }
                let names = &sources.watches[event.watch].stores;
                if let Some(version) = newest_version(&event.event) {
                    for name in names {
                        let last = seen.entry(name.clone()).or_default();
                        *last = (*last).max(version);
                    }
                }
                // The status writes of this process (when it watches their
                // ConfigMap) are stored, but render nothing: each render
                // would otherwise cause the next.
                let only_ours = own_writes.only_ours(event.watch, &event.event);
                apply(&mut stores, names, event.event, &telemetry);
                if !only_ours {
                    let now = Instant::now();
                    burst.get_or_insert(Burst { first: now, last: now }).last = now;
                }
            }
            finished = actions.finished(), if actions.is_running() => {
                if let Err(e) = finished {
                    let died = RunError::ActionsDied(e.to_string());
                    telemetry.status.task_died(died.to_string());
                    return Err(died);
                }
                if options.once {
                    return Ok(Stopped::Rendered);
                }
            }
            () = sleep_until(due), if due.is_some() => {
                burst = None;
                let stale_before = stale_reads(&sources.caches);
                let rendered = render_once(&prepared, snapshot(&stores), &seen, &telemetry, &mut checksums).await;
                rendered_once = true;
                let ok = !matches!(rendered, Rendered::Failed);
                if let Rendered::Changed(redactor) = rendered
                    && !prepared.config.actions.is_empty()
                {
                    actions.start(prepared.config.actions.clone(), Arc::clone(&telemetry), redactor);
                }
                if options.once {
                    if actions.is_running() {
                        continue;
                    }
                    return Ok(if ok { Stopped::Rendered } else { Stopped::RenderFailed });
                }
                // A render that showed cached copies because GETs failed is
                // done again, with the same backoff, until the API answers.
                let stale = stale_reads(&sources.caches) > stale_before;
                telemetry.status.report("stale reads", stale.then_some(Problem::StaleReads));
                retry = if ok && !stale {
                    None
                } else {
                    let failures = retry.map_or(1, |(_, n)| n + 1);
                    let delay = retry_delay(failures);
                    let retry_in_ms = delay.as_millis() as u64;
                    if ok {
                        tracing::warn!(retry_in_ms, "render used cached copies of objects it could not fetch; will render again");
                    } else {
                        tracing::warn!(retry_in_ms, "render failed; outputs unchanged; will retry");
                    }
                    Some((Instant::now() + delay, failures))
                };
            }
            // Turns the loop, and so beats its heartbeat, while it has nothing to do.
            _ = tick.tick() => {}
        }
    }
}

/// Tells the probes how this run is judged (`admin:`), and whether a good
/// render is on disk already (every output exists: files are only ever
/// written whole, after a successful render). Returns the loop's heartbeat
/// and a tick that turns the loop often enough to beat it while idle.
fn follow_probes(config: &Config, telemetry: &Telemetry) -> (Arc<Activity>, tokio::time::Interval) {
    telemetry.status.set_readiness(match config.admin.readiness {
        config::Readiness::Serving => Readiness::Serving,
        config::Readiness::Strict => Readiness::Strict,
    });
    if config.templates.values().all(|t| t.output.path().exists()) {
        telemetry.status.outputs_found();
    }
    let limit = config.admin.stall_timeout;
    let mut tick = tokio::time::interval((limit / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    (telemetry.status.heartbeat(limit), tick)
}

/// What one render of a live run did.
enum Rendered {
    Failed,
    Unchanged,
    /// A file changed: the actions are due; the render's Secret values.
    Changed(Arc<Redactor>),
}

/// The events since the last render: when the first and the last came.
#[derive(Debug, Clone, Copy)]
struct Burst {
    first: Instant,
    last: Instant,
}

impl Burst {
    /// `min` after the last event, but never later than `max` after the first.
    fn due(&self, wait: config::Wait) -> Instant {
        (self.last + wait.min).min(self.first + wait.max)
    }
}

/// How many reads of all on-demand stores used a cached copy because a GET
/// failed.
fn stale_reads(caches: &BTreeMap<String, Arc<BodyCache>>) -> u64 {
    // Stores of one watch share a cache: count each once.
    let mut seen = HashSet::new();
    caches
        .values()
        .filter(|cache| seen.insert(Arc::as_ptr(cache)))
        .map(|cache| cache.stats.stale.get())
        .sum()
}

/// Backoff before re-rendering after failures: 1s, 2s, 4s … up to a minute.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// The newest resourceVersion an event carries (the highest of a listing's
/// objects), if its versions are numbers, as the Kubernetes API makes them.
fn newest_version(event: &Event) -> Option<u64> {
    let version = |object: &Document| Meta::of(object.root()).resource_version.parse::<u64>().ok();
    match event {
        Event::Applied(object) | Event::Deleted(object) => version(object),
        Event::Listed { objects, .. } => objects.iter().filter_map(version).max(),
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        // Past: ready now, without waiting for the timer driver to notice.
        Some(due) if due <= Instant::now() => {}
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Applies one watch event to every store the watch feeds. The last store
/// takes the event's objects; only the others get copies.
fn apply(stores: &mut BTreeMap<String, AnyStore>, names: &[String], event: Event, telemetry: &Telemetry) {
    let kind = match &event {
        Event::Applied(_) => "applied",
        Event::Deleted(_) => "deleted",
        Event::Listed { .. } => "listed",
    };
    let mut event = Some(event);
    for (i, name) in names.iter().enumerate() {
        let Some(store) = stores.get_mut(name) else { continue };
        let this = if i + 1 == names.len() {
            event.take()
        } else {
            event.clone()
        };
        match this {
            Some(Event::Applied(object)) => {
                store.apply(object);
            }
            Some(Event::Deleted(object)) => {
                store.delete(&object);
            }
            Some(Event::Listed { scope, objects }) => store.reset_scope(scope.as_deref(), objects),
            None => {}
        }
        let label = StoreLabel { store: name.clone() };
        telemetry
            .metrics
            .store_objects
            .get_or_create(&label)
            .set(store.len() as i64);
        telemetry
            .metrics
            .watch_events
            .get_or_create(&EventLabels {
                store: name.clone(),
                r#type: kind.into(),
            })
            .inc();
        telemetry.status.store_changed(name, store.len());
    }
}

/// One render of a live run: render off the async threads and write; report
/// it all. `checksums` holds each template output's sha256 between renders.
async fn render_once(
    prepared: &Arc<Prepared>,
    snapshot: StoresSnapshot,
    seen: &BTreeMap<String, u64>,
    telemetry: &Telemetry,
    checksums: &mut BTreeMap<String, String>,
) -> Rendered {
    let started = Instant::now();
    let span = tracing::info_span!("render");
    // What the snapshot holds: the newest event of each store, so that an
    // output can be traced back to the cluster versions it was rendered from.
    let versions = seen
        .iter()
        .map(|(store, rv)| format!("{store}={rv}"))
        .collect::<Vec<_>>();
    span.in_scope(|| tracing::debug!(versions = %versions.join(","), "render started"));
    let redactor = Arc::new(redactor(&prepared.config, &snapshot));
    let result = render_and_report(prepared, snapshot, &redactor, telemetry, checksums)
        .instrument(span)
        .await;
    let duration = started.elapsed();
    telemetry.metrics.render_done(result.is_ok(), duration);
    let error = result.as_ref().err().cloned();
    telemetry.status.render_done(duration, error.clone());
    let changed = result.as_ref().is_ok_and(|changed| *changed);
    telemetry.publish(RenderOutcome {
        at: std::time::SystemTime::now(),
        duration,
        error,
        changed,
        outputs: checksums
            .iter()
            .map(|(path, sum)| (path.clone(), sum.clone()))
            .collect(),
    });
    match result {
        Ok(true) => Rendered::Changed(redactor),
        Ok(false) => Rendered::Unchanged,
        Err(_) => Rendered::Failed,
    }
}

/// Renders, writes and logs; `Ok(changed)`, or the error message.
async fn render_and_report(
    prepared: &Arc<Prepared>,
    snapshot: StoresSnapshot,
    redactor: &Arc<Redactor>,
    telemetry: &Telemetry,
    checksums: &mut BTreeMap<String, String>,
) -> Result<bool, String> {
    let started = Instant::now();
    let job = Arc::clone(prepared);
    let redactor = Arc::clone(redactor);
    let runtime = tokio::runtime::Handle::current();
    let known: HashSet<String> = checksums.keys().cloned().collect();
    // Rendering, file I/O and checksums are blocking work: off the runtime's
    // thread, so that watches and the admin server go on meanwhile. `check`
    // commands still run on the runtime.
    let written = tokio::task::spawn_blocking(move || {
        let rendering = Instant::now();
        let rendered = job.renderer.render_all(&snapshot).map_err(Failed::Render)?;
        let render_ms = rendering.elapsed().as_millis() as u64;
        let report = runtime
            .block_on(write(&job, &rendered, None, &redactor))
            .map_err(Failed::Write)?;
        let sums: Vec<(String, String, String)> = rendered
            .iter()
            .filter_map(|r| {
                let path = job.config.templates[&r.template].output.path().display().to_string();
                let fresh = report.changed_templates.contains(&r.template) || !known.contains(&path);
                fresh.then(|| (path, r.template.clone(), checksum(&r.content)))
            })
            .collect();
        Ok((report, sums, render_ms))
    })
    .await
    .map_err(|e| format!("the render task failed: {e}"))?;
    let (report, sums, render_ms) = match written {
        Ok(written) => written,
        Err(Failed::Render(errors)) => {
            for error in &errors {
                tracing::error!(template = %error.template, error = %error.message, "render failed");
            }
            return Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
        }
        Err(Failed::Write(error)) => {
            tracing::error!(%error, "writing outputs failed; previous files kept");
            return Err(error.to_string());
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    for (path, template, sum) in sums {
        telemetry.status.output_written(&path, &template, sum.clone());
        checksums.insert(path, sum);
    }
    for (template, count) in count_by_template(prepared, &report) {
        telemetry
            .metrics
            .files_written
            .get_or_create(&TemplateLabel { template })
            .inc_by(count);
    }
    if !report.changed() {
        tracing::info!(elapsed_ms, render_ms, "render done; outputs unchanged");
        return Ok(false);
    }
    for path in &report.written {
        tracing::info!(path = %path.display(), "file written");
    }
    for path in &report.removed {
        tracing::info!(path = %path.display(), "stale file removed");
    }
    tracing::info!(elapsed_ms, render_ms, templates = %report.changed_templates.join(","), "render done; outputs changed");
    Ok(true)
}

/// Why a render wrote nothing.
enum Failed {
    Render(Vec<render::Error>),
    Write(Error),
}

/// Files written per template in one write.
fn count_by_template(prepared: &Prepared, report: &output::Report) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for path in &report.written {
        let template = prepared
            .config
            .templates
            .values()
            .find(|t| path.starts_with(t.output.path()))
            .map(|t| t.name.clone())
            .unwrap_or_default();
        *counts.entry(template).or_insert(0) += 1;
    }
    counts
}

/// The sha256 of a template's output: of the file, or of every file's name and
/// bytes of a directory output.
fn checksum(content: &render::Content) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    match content {
        render::Content::File(bytes) => digest.update(bytes),
        render::Content::Directory(files) => {
            for (name, bytes) in files {
                digest.update(name.as_bytes());
                digest.update([0]);
                digest.update((bytes.len() as u64).to_be_bytes());
                digest.update(bytes);
            }
        }
    }
    digest.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
