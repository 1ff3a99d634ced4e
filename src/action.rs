//! Actions: what runs, in order, after a render that changed at least one
//! file — a command (argv, no shell unless the user writes one) or an HTTP
//! request. A failing action is logged and reported, never fatal, and never
//! rolls files back.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::command;
use crate::config::{Action, HttpAction};
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
    /// The command exited unsuccessfully.
    #[error("command {argv:?} failed ({status}){}", stderr_suffix(stderr))]
    Exit {
        argv: Vec<String>,
        status: String,
        stderr: String,
    },
    /// The command ran past its timeout and was killed.
    #[error("command {argv:?} did not finish within {}; killed", humantime::format_duration(*timeout))]
    Timeout { argv: Vec<String>, timeout: Duration },
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

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// What running the actions did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub succeeded: usize,
    pub failed: Vec<Error>,
}

impl Action {
    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            Action::Command { argv, .. } => format!("command {argv:?}"),
            Action::Http(http) => format!("{} {}", http.method, http.url),
        }
    }
}

/// Runs every action in order; failures are logged, counted and collected,
/// and the following actions still run.
pub async fn run_all(actions: &[Action], metrics: &Metrics) -> Outcome {
    let mut outcome = Outcome::default();
    for action in actions {
        let started = std::time::Instant::now();
        let result = match action {
            Action::Command { argv, timeout } => run_command(argv, *timeout).await,
            Action::Http(http) => run_http(http).await,
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

async fn run_command(argv: &[String], timeout: Duration) -> Result<(), Error> {
    command::run(argv, timeout).await.map_err(|failure| match failure {
        command::Failure::Spawn(source) => Error::Spawn {
            argv: argv.to_vec(),
            source,
        },
        command::Failure::Timeout(timeout) => Error::Timeout {
            argv: argv.to_vec(),
            timeout,
        },
        command::Failure::Exit { status, output } => Error::Exit {
            argv: argv.to_vec(),
            status,
            stderr: output,
        },
    })
}

/// Backoff before attempt `n` (1-based) of an HTTP action.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

async fn run_http(http: &HttpAction) -> Result<(), Error> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let attempts = http.retries + 1;
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let request = hyper::Request::builder()
            .method(http.method.as_str())
            .uri(http.url.as_str())
            .header("user-agent", concat!("kube-template/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new());
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                last = e.to_string();
                break;
            }
        };
        match tokio::time::timeout(http.timeout, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body = String::from_utf8_lossy(&body[..body.len().min(512)]).trim().to_string();
                last = format!("HTTP {status}{}", stderr_suffix(&body));
            }
            Ok(Err(e)) => last = with_sources(&e),
            Err(_) => last = format!("no answer within {}", humantime::format_duration(http.timeout)),
        }
        tracing::warn!(action = %format!("{} {}", http.method, http.url), attempt, error = %last, "action attempt failed");
    }
    Err(Error::Http {
        method: http.method.clone(),
        url: http.url.clone(),
        attempts,
        last,
    })
}

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
        let outcome = run_all(&actions, &Metrics::new()).await;
        assert_eq!(outcome.succeeded, 2);
        assert_eq!(outcome.failed.len(), 2);
        let first = outcome.failed[0].to_string();
        assert!(first.contains("exit status: 4") && first.contains("broken"), "{first}");
        assert!(matches!(outcome.failed[1], Error::Spawn { .. }));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let outcome = run_all(&[command(&["sleep", "30"], 100)], &Metrics::new()).await;
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

    fn http(url: &str, retries: u32) -> Action {
        Action::Http(HttpAction {
            url: url.into(),
            method: "POST".into(),
            timeout: Duration::from_secs(5),
            retries,
        })
    }

    #[tokio::test]
    async fn http_actions_retry_until_success() {
        let (url, count) = flaky_server(2).await;
        let outcome = run_all(&[http(&url, 3)], &Metrics::new()).await;
        assert_eq!((outcome.succeeded, outcome.failed.len()), (1, 0));
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http_actions_report_the_last_failure_after_all_retries() {
        let (url, count) = flaky_server(10).await;
        let outcome = run_all(&[http(&url, 1)], &Metrics::new()).await;
        let error = outcome.failed[0].to_string();
        assert!(error.contains("after 2 attempt(s)") && error.contains("500"), "{error}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
