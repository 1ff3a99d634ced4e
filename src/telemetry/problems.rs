//! What `/readyz` weighs: the problems of a run, each one line of
//! `/readyz?verbose`, and which of them keep the pod out of its Service
//! (DESIGN section 7).
//!
//! Parts of the pipeline with problems of their own (a failing group, a guard
//! holding back a loss) add a variant here and report it with
//! [`super::status::Status::report`] under a key of their own; the probe, the
//! status page and `?verbose` then show it with no further change.

use std::fmt;
use std::time::SystemTime;

/// What `/readyz` means (`admin.readiness`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Readiness {
    /// Ready once every watch listed and a good render is on disk, and ready
    /// from then on: the daemon serves its last good config through render
    /// failures and API outages, which are reported instead.
    #[default]
    Serving,
    /// Ready only while the last render succeeded and every watch is
    /// connected, for users who prefer no traffic to stale config.
    Strict,
}

/// One current problem of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A watch has not finished its initial list.
    ListPending { watch: String, error: Option<String> },
    /// The sources have not started: why (an API server out of reach).
    NotStarted { why: String },
    /// No render of this run succeeded, and none was on disk when it started.
    NoGoodRender,
    /// The last render failed; `since` is the first failure of this streak.
    RenderFailing { error: String, since: SystemTime },
    /// A watch is not connected to the API server: it lost its connection,
    /// or the server answers it with errors.
    WatchDisconnected {
        watch: String,
        since: SystemTime,
        error: Option<String>,
    },
    /// The last render read cached copies of on-demand objects because their
    /// GETs failed.
    StaleReads,
    /// A stage stopped; the process is exiting.
    Stopped { why: String },
}

impl Problem {
    /// Whether this problem makes `/readyz` answer 503 under `readiness`.
    pub fn blocks(&self, readiness: Readiness) -> bool {
        match self {
            Problem::NotStarted { .. }
            | Problem::ListPending { .. }
            | Problem::NoGoodRender
            | Problem::Stopped { .. } => true,
            Problem::RenderFailing { .. } | Problem::WatchDisconnected { .. } => readiness == Readiness::Strict,
            Problem::StaleReads => false,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotStarted { why } => write!(f, "{why}"),
            Problem::ListPending { watch, error: None } => write!(f, "watch {watch}: initial list not done"),
            Problem::ListPending {
                watch,
                error: Some(error),
            } => write!(f, "watch {watch}: initial list not done: {error}"),
            Problem::NoGoodRender => write!(f, "no good render on disk yet"),
            Problem::RenderFailing { error, since } => {
                write!(f, "last render failed (failing since {}): {error}", time(*since))
            }
            Problem::WatchDisconnected { watch, since, error } => {
                write!(f, "watch {watch}: not connected since {}", time(*since))?;
                match error {
                    Some(error) => write!(f, ": {error}"),
                    None => Ok(()),
                }
            }
            Problem::StaleReads => write!(
                f,
                "stale on-demand copies in use: the last render read cached objects it could not fetch"
            ),
            Problem::Stopped { why } => write!(f, "stopped: {why}"),
        }
    }
}

fn time(at: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(at)
}

/// The readiness verdict: every current problem, and whether any of them
/// keeps the pod out of its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub problems: Vec<Problem>,
}

impl Verdict {
    pub fn new(problems: Vec<Problem>, readiness: Readiness) -> Verdict {
        Verdict {
            ready: !problems.iter().any(|p| p.blocks(readiness)),
            problems,
        }
    }

    /// One line per problem.
    pub fn lines(&self) -> Vec<String> {
        self.problems.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_failures_and_disconnected_watches_block_only_strict_readiness() {
        let failing = Problem::RenderFailing {
            error: "template `t`: boom".into(),
            since: SystemTime::UNIX_EPOCH,
        };
        let disconnected = Problem::WatchDisconnected {
            watch: "v1/Secret".into(),
            since: SystemTime::UNIX_EPOCH,
            error: None,
        };
        for problem in [failing, disconnected] {
            assert!(!problem.blocks(Readiness::Serving), "{problem}");
            assert!(problem.blocks(Readiness::Strict), "{problem}");
        }
        for problem in [
            Problem::ListPending {
                watch: "w".into(),
                error: None,
            },
            Problem::NoGoodRender,
        ] {
            assert!(problem.blocks(Readiness::Serving), "{problem}");
        }
        assert!(!Problem::StaleReads.blocks(Readiness::Strict));
    }

    #[test]
    fn each_problem_reads_as_one_line_naming_its_part() {
        let line = Problem::WatchDisconnected {
            watch: "v1/Secret".into(),
            since: SystemTime::UNIX_EPOCH,
            error: Some("cannot reach the API server".into()),
        }
        .to_string();
        assert_eq!(
            line,
            "watch v1/Secret: not connected since 1970-01-01T00:00:00Z: cannot reach the API server"
        );
    }
}
