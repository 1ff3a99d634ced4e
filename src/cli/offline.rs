//! The commands without a cluster: `check`, `render` and `test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_CONFIG, config_failure};
use crate::pipeline;
use crate::source::manifests;
use crate::template_tests;

/// `check`: the config and its templates, and which stores each group reads.
pub fn check(config: &Path) -> ExitCode {
    match pipeline::prepare(config) {
        Ok(prepared) => {
            println!(
                "{}: ok ({} watched resources, {} templates)",
                config.display(),
                prepared.config.watched_resources.len(),
                prepared.config.templates.len()
            );
            // Which stores re-render which group, and where that cannot
            // be narrowed (every change then re-renders the group).
            for group in pipeline::group::plan(&prepared.config, &prepared.renderer) {
                let templates = group.templates.iter().cloned().collect::<Vec<_>>().join(", ");
                println!(
                    "  group {}: templates {templates}; reads {}",
                    group.name,
                    group.describe_reads()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

/// `render`: once, from manifests.
pub async fn render(config: &Path, from: &[PathBuf], out: Option<&Path>) -> ExitCode {
    let prepared = match pipeline::prepare(config) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let objects = match manifests::load(from) {
        Ok(objects) => objects,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stores = pipeline::stores_from(&prepared.config, &objects);
    for (name, store) in &stores {
        tracing::info!(store = %name, objects = store.len(), skipped = store.skipped(), "store loaded");
    }
    match pipeline::render_and_write(&prepared, &pipeline::snapshot(&stores), out).await {
        Ok(report) => {
            for path in &report.written {
                tracing::info!(path = %path.display(), "file written");
            }
            for path in &report.removed {
                tracing::info!(path = %path.display(), "stale file removed");
            }
            if !report.changed() {
                tracing::info!("outputs unchanged");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `test`: runs the template test cases and prints one line per case, the
/// diffs of failing ones, and a closing count.
pub async fn test(config: &Path, names: &[String], update: bool) -> ExitCode {
    let prepared = match pipeline::prepare(config) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let dir = config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let cases = match template_tests::discover(dir, names) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        let outcome = template_tests::run(&prepared, case, update).await;
        for line in &outcome.updated {
            println!("  {line}");
        }
        if outcome.passed() {
            passed += 1;
            println!("ok   {}", case.name);
        } else {
            failed += 1;
            println!("FAIL {}", case.name);
            for failure in &outcome.failures {
                println!("{}", failure.trim_end());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
