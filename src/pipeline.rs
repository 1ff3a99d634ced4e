//! The pipeline that ties the stages together: sources → indexer → stores →
//! snapshot → renderer → outputs (→ actions).

pub mod group;
mod guard;
mod live;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use crate::action;
use crate::config::{self, Config, Issue};
use crate::object::Meta;
use crate::object::document::Document;
use crate::output::{self, OutputTarget, Template};
use crate::redact::Redactor;
use crate::render::{self, Renderer, StoresSnapshot};
use crate::source::own_writes::OwnWrites;
use crate::source::{self, Event, Scope, Sources};
use crate::store::AnyStore;
use crate::store::full::FullStore;
use crate::store::on_demand::{BodyCache, OnDemandStore};
use crate::telemetry::activity::Activity;
use crate::telemetry::metrics::{EventLabels, StoreLabel};
use crate::telemetry::problems::{Problem, Readiness};
use crate::telemetry::{self, Telemetry};
use group::Group;

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
    match renderer(&config) {
        Ok(renderer) if issues.is_empty() => Ok(Prepared { config, renderer }),
        Ok(_) => Err(invalid(issues)),
        Err(more) => {
            issues.extend(more);
            config::sort_issues(&mut issues);
            Err(invalid(issues))
        }
    }
}

/// The config's templates compiled; a compile error is an issue pointing at
/// the template's entry.
pub fn renderer(config: &Config) -> Result<Renderer, Vec<Issue>> {
    let specs = config.templates.iter().map(|(name, template)| render::Spec {
        name,
        source: &template.source,
        syntax: template.syntax.as_ref(),
        directory: matches!(template.output, OutputTarget::Directory { .. }),
    });
    let renderer = Renderer::new(
        &config.base_dir,
        config.render.fuel,
        config.render.max_output_bytes.0,
        specs,
    )
    .map_err(|problems| {
        problems
            .into_iter()
            .map(|p| config.issue_at(&["templates", &p.template, p.field], p.message))
            .collect::<Vec<_>>()
    })?;
    Ok(match &config.render.fetch {
        Some(fetch) => renderer.with_urls(urls(fetch, config.render.max_output_bytes.0)),
        None => renderer,
    })
}

/// What `fetch_url()` fetches with, from `render.fetch`.
fn urls(settings: &config::FetchSettings, max_output: u64) -> render::Urls {
    let fetcher = action::fetch::Fetcher {
        timeout: settings.timeout,
        retries: settings.retries,
        headers: settings.headers.clone(),
        insecure_skip_tls_verify: settings.insecure_skip_tls_verify,
        server_error_bodies: settings.server_error_bodies,
        max_bytes: usize::try_from(max_output).unwrap_or(usize::MAX),
    };
    let get = move |url: &str| fetcher.get_blocking(url).map_err(|e| e.to_string());
    render::Urls::new(Arc::new(get), settings.max_entries)
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
    /// Groups failed, each on its own (the others were written); one line
    /// per failing group, naming it.
    #[error("{}", .0.iter().map(|(group, e)| group.label(&e.to_string())).collect::<Vec<_>>().join("\n"))]
    Groups(Vec<(Group, Error)>),
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
    let watches = source::plan(config);
    config
        .watched_resources
        .iter()
        .map(|(name, resource)| {
            let store = match caches.get(name) {
                // Its bodies come from GETs, with every field.
                Some(cache) => AnyStore::OnDemand(
                    OnDemandStore::new(resource.indexer.clone(), resource.ignore_fields.clone()),
                    Arc::clone(cache),
                ),
                // Its objects come from its watch, without what the watch
                // omits for all its stores: only the rest is left to prune.
                None => {
                    let omitted = watches
                        .iter()
                        .find(|watch| watch.stores.contains(name))
                        .map_or(&[][..], |watch| &watch.omit[..]);
                    let ignore = resource
                        .ignore_fields
                        .iter()
                        .filter(|field| !omitted.contains(field))
                        .cloned()
                        .collect();
                    AnyStore::Full(FullStore::new(resource.indexer.clone(), ignore))
                }
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

/// Renders every group from `snapshot` and writes each group's outputs (all
/// or none of a group), as a live run's first render does: a failing group
/// leaves its files as they were and the others are written. With
/// `out_root`, every output is re-rooted under it (`render --out`).
pub async fn render_and_write(
    prepared: &Prepared,
    snapshot: &StoresSnapshot,
    out_root: Option<&Path>,
) -> Result<output::Report, Error> {
    let redactor = redactor(&prepared.config, snapshot);
    let mut report = output::Report::default();
    let mut failed = Vec::new();
    for group in group::plan(&prepared.config, &prepared.renderer) {
        let written = match stage(prepared, snapshot, |t| group.templates.contains(t), out_root) {
            Ok(staged) => output::write_staged(staged, &redactor).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        match written {
            Ok(done) => {
                report.written.extend(done.written);
                report.removed.extend(done.removed);
                report.changed_templates.extend(done.changed_templates);
            }
            Err(e) => failed.push((group, e)),
        }
    }
    match failed.len() {
        0 => Ok(report),
        1 if !failed[0].0.named => Err(failed.remove(0).1),
        _ => Err(Error::Groups(failed)),
    }
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

/// Renders the templates whose name `wanted` accepts from `snapshot`, each
/// straight into temp files beside its outputs (re-rooted under `out_root`
/// if given): nothing is in place yet, and a failure leaves no temp file.
/// Blocking work: file I/O as the templates render.
pub fn stage(
    prepared: &Prepared,
    snapshot: &StoresSnapshot,
    wanted: impl Fn(&str) -> bool,
    out_root: Option<&Path>,
) -> Result<Vec<output::Staged>, Error> {
    let mut stages = Vec::new();
    for (name, template) in prepared.config.templates.iter().filter(|(name, _)| wanted(name)) {
        let stage = match out_root {
            // A re-rooted render (`render --out`, template tests) is a
            // preview, often made without the privileges `owner:` needs: it
            // keeps the files' owner.
            Some(root) => {
                let preview = Template {
                    owner: None,
                    ..template.clone()
                };
                output::Stage::new(&preview, &template.output.rerooted(root))?
            }
            None => output::Stage::new(template, &template.output)?,
        };
        stages.push((name.clone(), stage));
    }
    let rendered = prepared.renderer.render_into(snapshot, stages).map_err(Error::Render)?;
    let staged = rendered
        .into_iter()
        .map(|(_, stage)| stage.finish())
        .collect::<Result<_, _>>()?;
    Ok(staged)
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

/// The live pipeline: applies source events to the stores, renders each
/// group once every watch has listed and the events on the stores it reads
/// have quieted (its `wait`), writes its outputs, and runs its actions when
/// one of its files changed. Groups render one after another from one
/// snapshot per render instant, and renders never overlap: events that
/// arrive meanwhile wait in the queue and cause one more render of the
/// groups that read them. A failing group is retried with its own backoff
/// and holds back no other. Each group's actions run on a task of their
/// own, so that events, the source tasks, `shutdown` and the other groups
/// are heeded while they run; the group's next render waits for them, so
/// that none of its files changes under its reload and the actions of two
/// of its renders never overlap. Returns when `shutdown`
/// resolves (between renders, after the running actions, each within its
/// timeout), or after the first render of every group and their actions
/// with `--once`.
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
    let started = Instant::now();
    let mut groups: Vec<group::Run> = group::plan(config, &prepared.renderer)
        .into_iter()
        .map(|g| group::Run::new(g, started))
        .collect();
    let (heartbeat, mut tick) = follow_probes(config, &groups, &telemetry);
    let mut own_writes = OwnWrites::default();
    // Operators' acceptances of refused shrinks, from the admin server.
    let mut accepts = telemetry.accepts.follow();
    let mut actions = action::Running::default();
    // `--once`: how the run ends once the actions of its render are done.
    let mut once_done: Option<Stopped> = None;
    tokio::pin!(shutdown);
    loop {
        heartbeat.touch();
        // A group whose actions run renders again once they are done.
        let due = if !unsynced.is_empty() {
            None
        } else {
            (0..groups.len())
                .filter(|&i| !actions.is_running(i))
                .filter_map(|i| groups[i].due())
                .min()
        };
        // Under a flood of events the event branch is always ready: once a
        // burst reached `wait.max`, its render goes before more events. Until
        // then, events already queued join the burst (with `wait.min: 0`
        // too), so a backlog read at once gives one render, not one each.
        let now = Instant::now();
        let overdue = due.is_some() && (0..groups.len()).any(|i| !actions.is_running(i) && groups[i].overdue(now));
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
                let mut synced_now = false;
                if let Event::Listed { scope, objects } = &event.event {
                    let waiting = unsynced.len();
                    unsynced.retain(|(w, s)| !(*w == event.watch && (s == scope || scope.is_none())));
                    if unsynced.len() < waiting {
                        let watch = &sources.watches[event.watch];
                        tracing::info!(stores = %watch.stores.join(","), watch = %watch.spec.describe(), objects = objects.len(), "initial list done");
                        synced_now = unsynced.is_empty();
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
                let changed = apply(&mut stores, names, event.event, &telemetry);
                if synced_now {
                    // The first render is where memory peaks: the code the
                    // listings ran need not stay resident through it.
                    let trimmed = telemetry::resident::trim();
                    tracing::debug!(
                        mapped_bytes = trimmed.mapped_bytes,
                        mappings = trimmed.mappings,
                        "memory only the listings needed given back"
                    );
                }
                if !only_ours {
                    let now = Instant::now();
                    for group in &mut groups {
                        for name in &changed {
                            group.store_changed(name, now);
                        }
                    }
                }
            }
            Some(request) = next_accept(&mut accepts) => {
                let reply = guard::accept(config, &mut groups, request.template.as_deref(), Instant::now());
                // The admin server may have given up waiting.
                let _ = request.reply.send(reply);
            }
            finished = actions.finished(), if actions.any() => {
                if let Err(e) = finished {
                    let died = RunError::ActionsDied(e.to_string());
                    telemetry.status.task_died(died.to_string());
                    return Err(died);
                }
                if let Some(stopped) = once_done.filter(|_| !actions.any()) {
                    return Ok(stopped);
                }
            }
            () = sleep_until(due), if due.is_some() => {
                let due = live::Due { prepared: &prepared, stores: &stores, caches: &sources.caches, seen: &seen, telemetry: &telemetry };
                let (to_run, redactor) = due.render(&mut groups, &mut checksums, |i| actions.is_running(i)).await;
                let stale = groups.iter().any(|g| g.stale);
                telemetry.status.report("stale reads", stale.then_some(Problem::StaleReads));
                for (i, to_run) in to_run {
                    actions.start(i, to_run, Arc::clone(&telemetry), Arc::clone(&redactor));
                }
                if options.once && groups.iter().all(|g| g.rendered) {
                    let stopped = if groups.iter().any(|g| g.error.is_some()) {
                        Stopped::RenderFailed
                    } else {
                        Stopped::Rendered
                    };
                    if !actions.any() {
                        return Ok(stopped);
                    }
                    once_done = Some(stopped);
                }
            }
            // Turns the loop, and so beats its heartbeat, while it has nothing to do.
            _ = tick.tick() => {}
        }
    }
}

/// Tells the probes how this run is judged (`admin:`), which groups there
/// are, and which of them have a good render on disk already (every output
/// exists: files are only ever written whole, after a successful render).
/// Returns the loop's heartbeat and a tick that turns the loop often enough
/// to beat it while idle.
fn follow_probes(
    config: &Config,
    groups: &[group::Run],
    telemetry: &Telemetry,
) -> (Arc<Activity>, tokio::time::Interval) {
    telemetry.status.set_readiness(match config.admin.readiness {
        config::Readiness::Serving => Readiness::Serving,
        config::Readiness::Strict => Readiness::Strict,
    });
    for run in groups {
        let group = &run.group;
        telemetry
            .status
            .add_group(&group.name, group.named, group.describe_reads());
        if group
            .templates
            .iter()
            .all(|t| config.templates[t].output.path().exists())
        {
            telemetry.status.group_outputs_found(&group.name);
        }
    }
    let limit = config.admin.stall_timeout;
    let mut tick = tokio::time::interval((limit / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    (telemetry.status.heartbeat(limit), tick)
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

/// The newest resourceVersion an event carries (the highest of a listing's
/// objects), if its versions are numbers, as the Kubernetes API makes them.
fn newest_version(event: &Event) -> Option<u64> {
    let version = |object: &Document| Meta::of(object.root()).resource_version.parse::<u64>().ok();
    match event {
        Event::Applied(object) | Event::Deleted(object) => version(object),
        Event::Listed { objects, .. } => objects.iter().filter_map(version).max(),
    }
}

/// The next acceptance request; pending forever when there are none to
/// follow (another run took them) or the admin server is gone.
async fn next_accept(
    requests: &mut Option<tokio::sync::mpsc::Receiver<crate::telemetry::accept::Request>>,
) -> Option<crate::telemetry::accept::Request> {
    match requests {
        Some(receiver) => match receiver.recv().await {
            Some(request) => Some(request),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
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

/// Applies one watch event to every store the watch feeds; returns the
/// stores whose content changed (an object a store skips, or a delete of
/// one it never held, changes nothing). The last store takes the event's
/// objects; only the others get copies.
fn apply<'a>(
    stores: &mut BTreeMap<String, AnyStore>,
    names: &'a [String],
    event: Event,
    telemetry: &Telemetry,
) -> Vec<&'a str> {
    let mut changed = Vec::new();
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
        let content_changed = match this {
            Some(Event::Applied(object)) => store.apply(object).changed(),
            Some(Event::Deleted(object)) => store.delete(&object),
            Some(Event::Listed { scope, objects }) => {
                store.reset_scope(scope.as_deref(), objects);
                true
            }
            None => false,
        };
        if content_changed {
            changed.push(name.as_str());
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
    changed
}
