//! One turn of a live run's renders: every group due renders, one after
//! another, from one snapshot of the stores; each is rendered off the async
//! threads, written all or nothing, and reported (log, metrics, status,
//! outcome), and the actions of those whose files changed are collected.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::group::{self, Group};
use super::guard::{Allowed, Guards};
use super::{Error, Prepared, redactor, snapshot, stage, stale_reads};
use crate::action::Action;
use crate::output::{self, guard::Shrink};
use crate::redact::Redactor;
use crate::render::{self, StoresSnapshot};
use crate::store::AnyStore;
use crate::store::on_demand::BodyCache;
use crate::telemetry::metrics::{Failure, TemplateLabel};
use crate::telemetry::{RenderOutcome, Telemetry};

/// What the renders of one turn read.
pub(super) struct Due<'a> {
    pub prepared: &'a Arc<Prepared>,
    pub stores: &'a BTreeMap<String, AnyStore>,
    pub caches: &'a BTreeMap<String, Arc<BodyCache>>,
    /// Per store, the newest resourceVersion applied to it.
    pub seen: &'a BTreeMap<String, u64>,
    pub telemetry: &'a Arc<Telemetry>,
}

impl Due<'_> {
    /// Renders every group due now whose actions do not run (`busy`), one
    /// after another, from one snapshot: what they read is of one point in
    /// time. Returns the actions to run (per group whose files changed, by
    /// its index) and the Secret values of the snapshot, kept out of what
    /// the actions print.
    pub async fn render(
        &self,
        groups: &mut [group::Run],
        checksums: &mut BTreeMap<String, String>,
        busy: impl Fn(usize) -> bool,
    ) -> (Vec<(usize, Vec<Action>)>, Arc<Redactor>) {
        let now = Instant::now();
        let snapshot = snapshot(self.stores);
        let redactor = Arc::new(redactor(&self.prepared.config, &snapshot));
        let mut to_run = Vec::new();
        let mut rendered = Vec::new();
        let due: Vec<usize> = (0..groups.len())
            .filter(|&i| !busy(i) && groups[i].due().is_some_and(|due| due <= now))
            .collect();
        for i in due {
            let first = !groups[i].rendered;
            groups[i].render_started();
            let stale_before = stale_reads(self.caches);
            let started = Instant::now();
            let outcome = render_group(
                self.prepared,
                &mut groups[i],
                snapshot.clone(),
                &redactor,
                self.seen,
                self.telemetry,
                checksums,
            )
            .await;
            // A render that showed cached copies because GETs failed is done
            // again, with the same backoff, until the API answers.
            let stale = outcome.is_ok() && stale_reads(self.caches) > stale_before;
            let changed = matches!(outcome, Ok(true));
            let run = &mut groups[i];
            if let Some(delay) = run.render_ended(outcome.err(), stale) {
                let retry_in_ms = delay.as_millis() as u64;
                if stale {
                    tracing::warn!(group = %run.group.name, retry_in_ms, "render used cached copies of objects it could not fetch; will render again");
                } else {
                    tracing::warn!(group = %run.group.name, retry_in_ms, "render failed; outputs unchanged; will retry");
                }
                // A refused shrink is written when its hold ends, events or not.
                if let Some(at) = run.guards.hold_ends(&self.prepared.config).filter(|at| *at > now) {
                    run.due_by(at);
                }
            }
            rendered.push((i, started.elapsed(), changed));
            let run = &groups[i];
            if changed && (!first || run.group.actions_on_start) && !run.group.actions.is_empty() {
                to_run.push((i, run.group.actions.clone()));
            } else if changed && !run.group.actions.is_empty() {
                tracing::info!(group = %run.group.name, "first render after the start; actions skipped (actions_on_start: skip)");
            }
        }
        // Published once every group of the turn rendered, each outcome with
        // the errors of all: a follower that waits for a good render (exec
        // mode's first start) sees every group of the first render done.
        for (i, duration, changed) in rendered {
            publish(self.telemetry, groups, i, duration, changed, checksums);
        }
        (to_run, redactor)
    }
}

/// Publishes the outcome of the render of `groups[index]`: its error with
/// those of the other groups still failing, so that reporters that show
/// one result (the status ConfigMap) never hide a failing group behind
/// another's success.
fn publish(
    telemetry: &Telemetry,
    groups: &[group::Run],
    index: usize,
    duration: Duration,
    changed: bool,
    checksums: &BTreeMap<String, String>,
) {
    let errors: Vec<String> = groups
        .iter()
        .filter_map(|g| g.error.as_deref().map(|e| g.group.label(e)))
        .collect();
    telemetry.publish(RenderOutcome {
        at: std::time::SystemTime::now(),
        duration,
        group: groups[index].group.name.clone(),
        error: (!errors.is_empty()).then(|| errors.join("\n")),
        changed,
        outputs: checksums
            .iter()
            .map(|(path, sum)| (path.clone(), sum.clone()))
            .collect(),
    });
}

/// One render of a group in a live run: render off the async threads,
/// weigh its guarded shrinks (`run.guards`) and write; report it all. `checksums` holds each template output's sha256
/// between renders. `Ok(changed)`, or the error message.
async fn render_group(
    prepared: &Arc<Prepared>,
    run: &mut group::Run,
    snapshot: StoresSnapshot,
    redactor: &Arc<Redactor>,
    seen: &BTreeMap<String, u64>,
    telemetry: &Telemetry,
    checksums: &mut BTreeMap<String, String>,
) -> Result<bool, String> {
    let (group, guards) = (&run.group, &mut run.guards);
    let started = Instant::now();
    let span = tracing::info_span!("render", group = %group.name);
    // What the snapshot holds: the newest event of each store, so that an
    // output can be traced back to the cluster versions it was rendered from.
    let versions = seen
        .iter()
        .filter(|(store, _)| group.reads.includes(store))
        .map(|(store, rv)| format!("{store}={rv}"))
        .collect::<Vec<_>>();
    span.in_scope(|| tracing::debug!(versions = %versions.join(","), "render started"));
    let result = render_and_report(prepared, group, guards, snapshot, redactor, telemetry, checksums)
        .instrument(span)
        .await;
    let duration = started.elapsed();
    telemetry.metrics.render_done(
        &group.name,
        result.as_ref().map(|_| ()).map_err(|(why, _)| *why),
        duration,
    );
    let result = result.map_err(|(_, message)| message);
    telemetry
        .status
        .render_done(&group.name, duration, result.as_ref().err().cloned());
    result
}

/// Renders, weighs the shrinks of guarded templates, writes and logs;
/// `Ok(changed)`, or why it failed and the error message.
async fn render_and_report(
    prepared: &Arc<Prepared>,
    group: &Group,
    guards: &mut Guards,
    snapshot: StoresSnapshot,
    redactor: &Arc<Redactor>,
    telemetry: &Telemetry,
    checksums: &mut BTreeMap<String, String>,
) -> Result<bool, (Failure, String)> {
    let started = Instant::now();
    let allowed = guards.allowed(&prepared.config, &group.templates, started);
    let may_shrink: BTreeSet<String> = allowed.keys().cloned().collect();
    let job = Arc::clone(prepared);
    let redactor = Arc::clone(redactor);
    let runtime = tokio::runtime::Handle::current();
    let known: HashSet<String> = checksums.keys().cloned().collect();
    let templates = group.templates.clone();
    // Rendering, file I/O and checksums are blocking work: off the runtime's
    // thread, so that watches and the admin server go on meanwhile. `check`
    // commands still run on the runtime.
    let written = tokio::task::spawn_blocking(move || {
        let rendering = Instant::now();
        let staged = stage(&job, &snapshot, |t| templates.contains(t), None).map_err(|e| match e {
            Error::Render(errors) => Failed::Render(errors),
            other => Failed::Write(Box::new(other), None),
        })?;
        let render_ms = rendering.elapsed().as_millis() as u64;
        let shrinks = guard_shrinks(&job, &staged).map_err(|e| Failed::Write(Box::new(e.into()), None))?;
        if shrinks.iter().any(|s| !may_shrink.contains(&s.template)) {
            return Err(Failed::Guard(shrinks));
        }
        let sums: Vec<(String, String, String)> = staged
            .iter()
            .map(|s| {
                let path = job.config.templates[s.template()].output.path().display().to_string();
                (path, s.template().to_owned(), s.checksum().to_owned())
            })
            .collect();
        let report = runtime
            .block_on(output::write_staged(staged, &redactor))
            .map_err(|e| Failed::Write(Box::new(e.into()), Some(shrinks.clone())))?;
        let sums: Vec<(String, String, String)> = sums
            .into_iter()
            .filter(|(path, template, _)| report.changed_templates.contains(template) || !known.contains(path))
            .collect();
        Ok((report, sums, render_ms, shrinks))
    })
    .await
    .map_err(|e| (Failure::Template, format!("the render task failed: {e}")))?;
    let (report, sums, render_ms, shrinks) = match written {
        Ok(written) => written,
        Err(Failed::Render(errors)) => {
            for error in &errors {
                tracing::error!(template = %error.template, error = %error.message, "render failed");
            }
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return Err((Failure::Template, message));
        }
        Err(Failed::Guard(shrinks)) => {
            guards.measured(&group.templates, &shrinks, started);
            let refused: Vec<String> = shrinks
                .iter()
                .filter(|s| !allowed.contains_key(&s.template))
                .map(|s| {
                    let message = refusal(prepared, s);
                    tracing::error!(template = %s.template, path = %s.path.display(), old = s.old, new = s.new, "shrink refused by the guard; previous files kept");
                    message
                })
                .collect();
            return Err((Failure::Guard, refused.join("; ")));
        }
        Err(Failed::Write(error, shrinks)) => {
            if let Some(shrinks) = shrinks {
                guards.measured(&group.templates, &shrinks, started);
            }
            tracing::error!(%error, "writing outputs failed; previous files kept");
            return Err((Failure::Output, error.to_string()));
        }
    };
    guards.written();
    for s in &shrinks {
        let why = match allowed.get(&s.template) {
            Some(Allowed::Accepted) => "accepted by an operator",
            _ => "it lasted the guard's hold",
        };
        tracing::warn!(template = %s.template, path = %s.path.display(), old = s.old, new = s.new, why, "shrink written");
    }
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

/// Why a render wrote nothing. The shrinks measured (of guarded templates,
/// past their `max_shrink`) go with the failures that come after the guard;
/// a write that failed measuring has none.
enum Failed {
    Render(Vec<render::Error>),
    Guard(Vec<Shrink>),
    Write(Box<Error>, Option<Vec<Shrink>>),
}

/// The shrinks past their `max_shrink` of the guarded templates staged,
/// measured against what is on disk now.
fn guard_shrinks(prepared: &Prepared, staged: &[output::Staged]) -> Result<Vec<Shrink>, output::Error> {
    let mut shrinks = Vec::new();
    for s in staged {
        let template = &prepared.config.templates[s.template()];
        if let Some(guard) = &template.guard
            && let Some(shrink) = output::guard::measure(guard, s.template(), &template.output, s.size())?
        {
            shrinks.push(shrink);
        }
    }
    Ok(shrinks)
}

/// What a refused shrink tells the operator: what it would lose, and the
/// two ways to let it through.
fn refusal(prepared: &Prepared, shrink: &Shrink) -> String {
    let hold = prepared.config.templates[&shrink.template]
        .guard
        .map(|g| humantime::format_duration(g.hold).to_string())
        .unwrap_or_default();
    format!(
        "{shrink}; refused: to write it, run `kube-template accept -c {} {}` in the pod, or it is written once it lasted {hold}",
        prepared.config.file.display(),
        shrink.template
    )
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
