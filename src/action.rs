//! Actions: what runs, in order, after a render that changed at least one
//! file — a command (argv, no shell unless the user writes one), an HTTP
//! request, or a signal to a process ([`signal`]). A failing action is logged and reported, never fatal, and never
//! rolls files back. What an action prints is logged in full at debug level
//! only; elsewhere as its first line, redacted (DESIGN 5.8).

pub mod fetch;
pub mod signal;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::command;
use crate::redact::Redactor;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::{ActionLabel, ActionLabels, Metrics};

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be started.
    #[error("command {argv:?} could not start: {source}")]
    Spawn {
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// The command exited unsuccessfully; `first_line` is of its output, redacted.
    #[error("command {argv:?} failed ({status}){}", suffix(first_line))]
    Exit {
        argv: Vec<String>,
        status: String,
        first_line: String,
    },
    /// The command ran past its timeout and was killed.
    #[error("command {argv:?} did not finish within {}; killed", humantime::format_duration(*timeout))]
    Timeout { argv: Vec<String>, timeout: Duration },
    /// The signal could not be sent; says what was looked for.
    #[error("signal {}: {source}", signal::name(*sig))]
    Signal {
        sig: nix::sys::signal::Signal,
        #[source]
        source: signal::Error,
    },
    /// The HTTP request failed on every attempt.
    #[error("{method} {url} failed after {attempts} attempt(s): {last}")]
    Http {
        method: String,
        url: String,
        attempts: u32,
        last: String,
    },
}

/// An error and its causes, `a: b: c`.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

fn suffix(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// What running the actions did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub succeeded: usize,
    pub failed: Vec<Error>,
}

/// A validated action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    Http(HttpAction),
    Signal {
        signal: nix::sys::signal::Signal,
        target: signal::SignalTarget,
    },
}

/// An HTTP action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAction {
    /// `http://` or `https://` URL to call (a reload endpoint).
    pub url: String,
    /// HTTP method.
    pub method: String,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Further attempts after a failure, with backoff.
    pub retries: u32,
    /// Request headers, e.g. `Authorization` or `Content-Type`.
    pub headers: BTreeMap<String, String>,
    /// Request body; none when absent.
    pub body: Option<String>,
    /// With an `https://` URL: accept any certificate (a daemon's self-signed one).
    pub insecure_skip_tls_verify: bool,
}

impl Action {
    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            Action::Command { argv, .. } => format!("command {argv:?}"),
            Action::Http(http) => format!("{} {}", http.method, http.url),
            Action::Signal { signal, target } => format!("signal {} to {target}", signal::name(*signal)),
        }
    }
}

/// Runs every action in order; failures are logged, counted and collected,
/// and the following actions still run. `redactor` holds the Secret values of
/// the render the actions follow.
pub async fn run_all(actions: &[Action], metrics: &Metrics, redactor: &Redactor) -> Outcome {
    let mut outcome = Outcome::default();
    for action in actions {
        let started = std::time::Instant::now();
        let result = match action {
            Action::Command { argv, timeout } => run_command(argv, *timeout, redactor).await,
            Action::Http(http) => run_http(http, redactor).await,
            Action::Signal { signal, target } => run_signal(*signal, target),
        };
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        let name = action.describe();
        metrics
            .action_duration
            .get_or_create(&ActionLabel { action: name.clone() })
            .observe(elapsed.as_secs_f64());
        let result_label = if result.is_ok() { "success" } else { "failure" };
        metrics
            .actions
            .get_or_create(&ActionLabels {
                action: name,
                result: result_label.into(),
            })
            .inc();
        match result {
            Ok(()) => {
                tracing::info!(action = %action.describe(), elapsed_ms, "action done");
                outcome.succeeded += 1;
            }
            Err(error) => {
                tracing::error!(action = %action.describe(), elapsed_ms, %error, "action failed");
                outcome.failed.push(error);
            }
        }
    }
    outcome
}

/// The actions of each group's last render that changed a file, each group's
/// on a task of its own, so that the pipeline goes on (events, signals, the
/// renders of other groups) while they run; its owner starts no render of a
/// group while that group's actions run, and joins them all at shutdown.
/// Dropping this aborts them.
#[derive(Debug, Default)]
pub struct Running {
    tasks: tokio::task::JoinSet<(usize, Outcome)>,
    /// The groups (by index) whose actions run.
    groups: BTreeSet<usize>,
}

impl Running {
    /// Whether the actions of `group` run.
    pub fn is_running(&self, group: usize) -> bool {
        self.groups.contains(&group)
    }

    /// Whether any actions run.
    pub fn any(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Starts the `actions` of `group`; `redactor` holds the Secret values
    /// of the render they follow.
    pub fn start(&mut self, group: usize, actions: Vec<Action>, telemetry: Arc<Telemetry>, redactor: Arc<Redactor>) {
        let span = tracing::info_span!("actions");
        let task = async move { (group, run_all(&actions, &telemetry.metrics, &redactor).await) };
        self.groups.insert(group);
        self.tasks.spawn(tracing::Instrument::instrument(task, span));
    }

    /// Resolves when the actions of one group are done (never, when none
    /// run), having logged a summary, with that group; an error is a panic
    /// of a task.
    pub async fn finished(&mut self) -> Result<usize, tokio::task::JoinError> {
        let Some(result) = self.tasks.join_next().await else {
            return std::future::pending().await;
        };
        match result {
            Ok((group, outcome)) => {
                self.groups.remove(&group);
                if !outcome.failed.is_empty() {
                    tracing::warn!(
                        failed = outcome.failed.len(),
                        "some actions failed; the files stay as rendered"
                    );
                }
                Ok(group)
            }
            Err(e) => {
                tracing::error!(error = %e, "the actions task failed");
                Err(e)
            }
        }
    }

    /// Waits for all running actions: the renders they follow are finished
    /// with them. Each is bounded by its timeout.
    pub async fn finish(&mut self) {
        if self.any() {
            tracing::info!("waiting for the running actions before shutting down");
            while self.any() {
                if self.finished().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run_command(argv: &[String], timeout: Duration, redactor: &Redactor) -> Result<(), Error> {
    match command::run(argv, timeout).await {
        Ok(output) => {
            if !output.is_empty() {
                tracing::debug!(action = ?argv, %output, "action output");
            }
            Ok(())
        }
        Err(command::Failure::Spawn(source)) => Err(Error::Spawn {
            argv: argv.to_vec(),
            source,
        }),
        Err(command::Failure::Timeout(timeout)) => Err(Error::Timeout {
            argv: argv.to_vec(),
            timeout,
        }),
        Err(command::Failure::Exit { status, output }) => {
            tracing::debug!(action = ?argv, %output, "action output");
            Err(Error::Exit {
                argv: argv.to_vec(),
                status,
                first_line: redactor.summary(&output),
            })
        }
    }
}

fn run_signal(sig: nix::sys::signal::Signal, target: &signal::SignalTarget) -> Result<(), Error> {
    let pids =
        signal::send(sig, target, std::path::Path::new("/proc")).map_err(|source| Error::Signal { sig, source })?;
    tracing::debug!(signal = signal::name(sig), %target, ?pids, "signal sent");
    Ok(())
}

/// Backoff before attempt `n` (1-based) of an HTTP action.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// How much of an error response's body is read.
const MAX_BODY: usize = 4096;

async fn run_http(http: &HttpAction, redactor: &Redactor) -> Result<(), Error> {
    let connector = match tls::connector(&http.url, http.insecure_skip_tls_verify) {
        Ok(connector) => connector,
        Err(e) => {
            return Err(Error::Http {
                method: http.method.clone(),
                url: http.url.clone(),
                attempts: 0,
                last: e,
            });
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let body = Bytes::from(http.body.clone().unwrap_or_default());
    let name = format!("{} {}", http.method, http.url);
    let attempts = http.retries + 1;
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let mut request = hyper::Request::builder()
            .method(http.method.as_str())
            .uri(http.url.as_str())
            .header("user-agent", concat!("kube-template/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &http.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Full::new(body.clone()));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                last = e.to_string();
                break;
            }
        };
        // The timeout covers the whole exchange: a server that sends its
        // headers and then stalls in the body is no answer either.
        let exchange = async {
            let response = client.request(request).await?;
            let status = response.status();
            let body = if status.is_success() {
                Vec::new()
            } else {
                body_start(response.into_body()).await
            };
            Ok::<_, hyper_util::client::legacy::Error>((status, body))
        };
        match tokio::time::timeout(http.timeout, exchange).await {
            Ok(Ok((status, _))) if status.is_success() => return Ok(()),
            Ok(Ok((status, body))) => {
                let body = String::from_utf8_lossy(&body);
                tracing::debug!(action = %name, %status, %body, "action response");
                last = format!("HTTP {status}{}", suffix(&redactor.summary(&body)));
            }
            Ok(Err(e)) => last = with_sources(&e),
            Err(_) => last = format!("no complete answer within {}", humantime::format_duration(http.timeout)),
        }
        tracing::warn!(action = %name, attempt, error = %last, "action attempt failed");
    }
    Err(Error::Http {
        method: http.method.clone(),
        url: http.url.clone(),
        attempts,
        last,
    })
}

/// The first [`MAX_BODY`] bytes of a response body; a body that breaks off
/// gives what came before.
async fn body_start(mut body: Incoming) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(&data[..data.len().min(MAX_BODY - kept.len())]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    kept
}

mod tls;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn command(args: &[&str], timeout_ms: u64) -> Action {
        Action::Command {
            argv: args.iter().map(|a| a.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn commands_run_in_order_and_failures_do_not_stop_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let append = |word: &str| command(&["sh", "-c", &format!("echo {word} >> {}", log.display())], 5000);
        let actions = [
            append("one"),
            command(&["sh", "-c", "echo broken >&2; exit 4"], 5000),
            command(&["/nonexistent/reload"], 5000),
            append("two"),
        ];
        let outcome = run_all(&actions, &Metrics::new(), &Redactor::default()).await;
        assert_eq!(outcome.succeeded, 2);
        assert_eq!(outcome.failed.len(), 2);
        let first = outcome.failed[0].to_string();
        assert!(first.contains("exit status: 4") && first.contains("broken"), "{first}");
        assert!(matches!(outcome.failed[1], Error::Spawn { .. }));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let outcome = run_all(&[command(&["sleep", "30"], 100)], &Metrics::new(), &Redactor::default()).await;
        assert!(
            matches!(outcome.failed[..], [Error::Timeout { .. }]),
            "{:?}",
            outcome.failed
        );
    }

    /// A one-connection-per-request HTTP server answering 500 `failures` times,
    /// then 200; returns its URL and request counter.
    async fn flaky_server(failures: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/reload", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let status = if n < failures {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        (url, count)
    }

    /// An HTTP server that answers `500` with `Content-Length: 100`, sends
    /// part of the body, then stalls with the connection open.
    async fn stalling_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/reload", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100\r\n\r\nhalf a bo";
                let _ = socket.write_all(head.as_bytes()).await;
                open.push(socket);
            }
        });
        url
    }

    #[tokio::test]
    async fn the_http_timeout_covers_a_body_that_stalls() {
        let url = stalling_server().await;
        let mut action = http(&url, 0);
        if let Action::Http(http) = &mut action {
            http.timeout = Duration::from_millis(300);
        }
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            run_all(&[action], &Metrics::new(), &Redactor::default()),
        )
        .await
        .expect("the action gave up at its timeout");
        let error = outcome.failed[0].to_string();
        assert!(error.contains("no complete answer within 300ms"), "{error}");
    }

    #[tokio::test]
    async fn action_output_shows_its_first_line_with_secret_values_redacted() {
        let redactor = Redactor::of_values(&["hunter22"]);
        let script = "echo 'bad password hunter22' >&2; echo more >&2; exit 1";
        let outcome = run_all(&[command(&["sh", "-c", script], 5000)], &Metrics::new(), &redactor).await;
        let error = outcome.failed[0].to_string();
        assert!(
            error.ends_with("failed (exit status: 1): bad password <redacted>"),
            "{error}"
        );
    }

    fn http(url: &str, retries: u32) -> Action {
        Action::Http(HttpAction {
            url: url.into(),
            method: "POST".into(),
            timeout: Duration::from_secs(5),
            retries,
            headers: Default::default(),
            body: None,
            insecure_skip_tls_verify: false,
        })
    }

    #[tokio::test]
    async fn http_actions_retry_until_success() {
        let (url, count) = flaky_server(2).await;
        let outcome = run_all(&[http(&url, 3)], &Metrics::new(), &Redactor::default()).await;
        assert_eq!((outcome.succeeded, outcome.failed.len()), (1, 0));
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http_actions_report_the_last_failure_after_all_retries() {
        let (url, count) = flaky_server(10).await;
        let outcome = run_all(&[http(&url, 1)], &Metrics::new(), &Redactor::default()).await;
        let error = outcome.failed[0].to_string();
        assert!(error.contains("after 2 attempt(s)") && error.contains("500"), "{error}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
