//! Logging: text or JSON, level from `--log-level` or `RUST_LOG`. Text lines
//! put the fields first and the message last, quoted:
//! `2026-11-22T04:45:43.984Z  INFO store=ingresses objects=1200 "initial list done"`.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A log filter (`--log-level`, `RUST_LOG`, `LOG_LEVEL`) that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{origin} `{directives}` is not a log level or filter ({reason}); e.g. `debug` or `info,kube_template=trace`")]
pub struct BadFilter {
    origin: &'static str,
    directives: String,
    reason: String,
}

/// Installs the global subscriber. `level` (e.g. `info`, `kube_template=debug`)
/// wins over `RUST_LOG`; logs go to stderr so stdout stays clean. A filter
/// that does not parse is an error rather than a silent `info`.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), BadFilter> {
    let (origin, directives) = match level {
        Some(level) => ("--log-level", level.to_string()),
        None => match std::env::var(EnvFilter::DEFAULT_ENV) {
            Ok(directives) => (EnvFilter::DEFAULT_ENV, directives),
            Err(_) => ("the default", "info".into()),
        },
    };
    let filter = EnvFilter::try_new(quiet_kube(&directives)).map_err(|e| BadFilter {
        origin,
        directives: directives.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .event_format(FieldsFirst {
                color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            })
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
    Ok(())
}

/// The crates whose own log lines say again, without naming the watch, what
/// kube-template logs itself: a certificate not verified (once per client,
/// so once per watch: said once at start instead), failed requests and
/// streams (logged per watch, once per lasting error).
const KUBE_CRATES: [&str; 2] = ["kube_client", "kube_runtime"];

/// `directives`, with kube's own log lines off unless they name a kube
/// crate themselves (`kube_runtime=debug` to see them again).
fn quiet_kube(directives: &str) -> String {
    let mut filter = directives.trim().to_string();
    for krate in KUBE_CRATES {
        if !directives.contains(krate) {
            if !filter.is_empty() {
                filter.push(',');
            }
            filter.push_str(krate);
            filter.push_str("=off");
        }
    }
    filter
}

/// The text format: time, level, `key=value` fields, then the message.
struct FieldsFirst {
    color: bool,
}

impl<S, N> FormatEvent<S, N> for FieldsFirst
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let level = *event.metadata().level();
        let (start, end) = match (self.color, level) {
            (false, _) => ("", ""),
            (true, tracing::Level::ERROR) => ("\x1b[31m", "\x1b[0m"),
            (true, tracing::Level::WARN) => ("\x1b[33m", "\x1b[0m"),
            (true, _) => ("\x1b[2m", "\x1b[0m"),
        };
        write!(writer, "{now} {start}{level:>5}{end}")?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        for (name, value) in &fields.pairs {
            write!(writer, " {name}={value}")?;
        }
        writeln!(writer, " {:?}", fields.message)
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs.push((field.name(), quote_if_needed(value)));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((field.name(), quote_if_needed(&text)));
        }
    }
}

/// Values with spaces or quotes are quoted, so lines stay parseable.
fn quote_if_needed(value: &str) -> String {
    if value.is_empty() || value.contains([' ', '"', '=']) {
        format!("{value:?}")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_crates_are_quiet_unless_named() {
        assert_eq!(quiet_kube("info"), "info,kube_client=off,kube_runtime=off");
        assert_eq!(quiet_kube(""), "kube_client=off,kube_runtime=off");
        assert_eq!(
            quiet_kube("debug,kube_runtime=debug"),
            "debug,kube_runtime=debug,kube_client=off"
        );
    }
}
