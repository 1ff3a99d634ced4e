//! The pipeline that ties the stages together: sources → indexer → stores →
//! snapshot → renderer → outputs (→ actions).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use crate::action;
use crate::config::{self, Config, OutputTarget};
use crate::output::{self, Job};
use crate::render::{self, Renderer, StoresSnapshot};
use crate::source::{self, Event, Scope, Sources};
use crate::store::AnyStore;
use crate::store::full::FullStore;
use crate::store::on_demand::{BodyCache, OnDemandStore};

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
    let invalid = |issues| config::Error::Invalid {
        path: path.to_owned(),
        issues,
    };
    let (config, mut issues) = Config::parse_lenient(&text, path, &base_dir).map_err(invalid)?;
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
    for watch in source::plan(config) {
        let selected: Vec<&Value> = objects.iter().filter(|o| watch.spec.selects(o)).collect();
        for name in &watch.stores {
            if let Some(store) = stores.get_mut(name) {
                store.reset_scope(None, selected.iter().map(|o| (*o).clone()));
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
                Some(cache) => AnyStore::OnDemand(OnDemandStore::for_resource(resource), Arc::clone(cache)),
                None => AnyStore::Full(FullStore::for_resource(resource)),
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
    write(prepared, &rendered, out_root).await
}

/// Writes rendered outputs (all or none), re-rooted under `out_root` if given.
pub async fn write(
    prepared: &Prepared,
    rendered: &[render::Rendered],
    out_root: Option<&Path>,
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
    let jobs: Vec<Job<'_>> = rendered
        .iter()
        .zip(&targets)
        .map(|(r, target)| Job {
            template: &prepared.config.templates[&r.template],
            target,
            content: &r.content,
        })
        .collect();
    Ok(output::write_all(&jobs).await?)
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
}

/// Options of a live run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Render once after the initial sync, run the actions, and stop.
    pub once: bool,
}

/// The live pipeline: applies source events to the stores, renders a
/// snapshot once every watch has listed and the events have quieted
/// (`render.wait`), writes the outputs, and runs the actions when a file
/// changed. Renders never overlap: events that arrive meanwhile wait in the
/// queue and cause one more render. Returns when `shutdown` resolves (between
/// renders), or after the first render with `--once`.
pub async fn run(
    prepared: Arc<Prepared>,
    mut sources: Sources,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, RunError> {
    let config = &prepared.config;
    let mut stores = empty_stores(config, &sources.caches);
    let mut unsynced: HashSet<(usize, Scope)> = sources.expected.iter().cloned().collect();
    let wait = config.render.wait;
    let mut burst: Option<Burst> = None;
    let mut retry: Option<(Instant, u32)> = None;
    let mut rendered_once = false;
    tokio::pin!(shutdown);
    loop {
        let due = if !unsynced.is_empty() {
            None
        } else if let Some(burst) = &burst {
            Some(if rendered_once { burst.due(wait) } else { Instant::now() })
        } else {
            retry.map(|(at, _)| at)
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(Stopped::Shutdown),
            Some(ended) = sources.tasks.join_next() => {
                let why = match ended {
                    Ok(Ok(())) => "a source finished".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("a source task failed: {e}"),
                };
                return Err(RunError::SourceDied(why));
            }
            event = sources.events.recv() => {
                let Some(event) = event else {
                    return Err(RunError::SourceDied("all sources stopped".into()));
                };
                if let Event::Listed { scope, objects } = &event.event
                    && unsynced.remove(&(event.watch, scope.clone()))
                {
                    let watch = &sources.watches[event.watch];
                    tracing::info!(stores = %watch.stores.join(","), watch = %watch.spec.describe(), objects = objects.len(), "initial list done");
                }
                apply(&mut stores, &sources.watches[event.watch].stores, event.event);
                let now = Instant::now();
                burst.get_or_insert(Burst { first: now, last: now }).last = now;
            }
            () = sleep_until(due), if due.is_some() => {
                burst = None;
                let ok = render_once(&prepared, snapshot(&stores)).await;
                rendered_once = true;
                if options.once {
                    return Ok(if ok { Stopped::Rendered } else { Stopped::RenderFailed });
                }
                retry = if ok {
                    None
                } else {
                    let failures = retry.map_or(1, |(_, n)| n + 1);
                    let delay = retry_delay(failures);
                    tracing::warn!(retry_in_ms = delay.as_millis() as u64, "render failed; outputs unchanged; will retry");
                    Some((Instant::now() + delay, failures))
                };
            }
        }
    }
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

/// Backoff before re-rendering after failures: 1s, 2s, 4s … up to a minute.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Applies one watch event to every store the watch feeds.
fn apply(stores: &mut BTreeMap<String, AnyStore>, names: &[String], event: Event) {
    for name in names {
        let Some(store) = stores.get_mut(name) else { continue };
        match &event {
            Event::Applied(object) => {
                store.apply(object.clone());
            }
            Event::Deleted(object) => {
                store.delete(object);
            }
            Event::Listed { scope, objects } => store.reset_scope(scope.as_deref(), objects.iter().cloned()),
        }
    }
}

/// One render of a live run: render off the async threads, write, and run
/// the actions if a file changed. Returns whether it succeeded.
async fn render_once(prepared: &Arc<Prepared>, snapshot: StoresSnapshot) -> bool {
    let started = Instant::now();
    let renderer = Arc::clone(prepared);
    let rendered = tokio::task::spawn_blocking(move || renderer.renderer.render_all(&snapshot)).await;
    let rendered = match rendered {
        Ok(Ok(rendered)) => rendered,
        Ok(Err(errors)) => {
            for error in &errors {
                tracing::error!(template = %error.template, error = %error.message, "render failed");
            }
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, "render task failed");
            return false;
        }
    };
    let report = match write(prepared, &rendered, None).await {
        Ok(report) => report,
        Err(error) => {
            tracing::error!(%error, "writing outputs failed; previous files kept");
            return false;
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if !report.changed() {
        tracing::info!(elapsed_ms, "render done; outputs unchanged");
        return true;
    }
    for path in &report.written {
        tracing::info!(path = %path.display(), "file written");
    }
    for path in &report.removed {
        tracing::info!(path = %path.display(), "stale file removed");
    }
    tracing::info!(elapsed_ms, templates = %report.changed_templates.join(","), "render done; outputs changed");
    action::run_all(&prepared.config.actions).await;
    true
}
