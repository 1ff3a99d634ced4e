//! The pipeline that ties the stages together: sources → indexer → stores →
//! snapshot → renderer → outputs (→ actions).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::config::{self, Config, OutputTarget};
use crate::output::{self, Job};
use crate::render::{self, Renderer, StoresSnapshot};
use crate::source;
use crate::store::full::FullStore;

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

/// Fills one full store per `watched_resources` entry from a set of objects,
/// each object going to every entry that selects it.
pub fn stores_from(config: &Config, objects: &[Value]) -> BTreeMap<String, FullStore> {
    config
        .watched_resources
        .iter()
        .map(|(name, resource)| {
            let mut store = FullStore::for_resource(resource);
            store.reset(objects.iter().filter(|o| source::selects(resource, o)).cloned());
            (name.clone(), store)
        })
        .collect()
}

/// One consistent snapshot of all stores.
pub fn snapshot(stores: &BTreeMap<String, FullStore>) -> StoresSnapshot {
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
