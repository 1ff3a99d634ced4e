//! GETs of the URLs that templates fetch (`fetch_url()`): a URL's body, with
//! a timeout per attempt and retries with the backoff of HTTP actions.
//!
//! Templates render synchronously, on an async thread (`render`, `test`) or
//! a blocking one (`run`), so [`Fetcher::get_blocking`] runs each GET on a
//! thread and runtime of its own rather than on the caller's.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{backoff, tls, with_sources};

/// Redirects followed at most, as browsers and Python's `requests` do.
const MAX_REDIRECTS: usize = 10;

/// Why a URL's body could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not `http://` or `https://`, or cannot be parsed.
    #[error("not an http:// or https:// URL")]
    Url,
    /// TLS could not be set up (the system's roots cannot be read).
    #[error("{0}")]
    Tls(String),
    /// An answer that is not content and is not retried (4xx, too many redirects).
    #[error("{0}")]
    Refused(String),
    /// Every attempt failed; the last one's reason.
    #[error("failed after {attempts} attempt(s): {last}")]
    Attempts { attempts: u32, last: String },
}

/// How URLs are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetcher {
    /// Timeout of one attempt, body included.
    pub timeout: Duration,
    /// Further attempts after a connection error, a timeout or a 5xx answer.
    pub retries: u32,
    /// Request headers, e.g. `Authorization`.
    pub headers: BTreeMap<String, String>,
    /// With an `https://` URL: accept any certificate.
    pub insecure_skip_tls_verify: bool,
    /// A 5xx answer's body is the content instead of a failure
    /// (k8s-sidecar's `ENABLE_5XX`).
    pub server_error_bodies: bool,
    /// Largest body accepted.
    pub max_bytes: usize,
}

/// What one attempt gave.
enum Attempt {
    Body(Vec<u8>),
    Redirect(String),
    Retry(String),
    Refused(String),
}

impl Fetcher {
    /// The body of `url`, from the calling thread whatever runtime it is in.
    pub fn get_blocking(&self, url: &str) -> Result<Vec<u8>, Error> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Tls(format!("cannot start a runtime: {e}")))?;
                    runtime.block_on(self.get(url))
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The body of `url`, following redirects; connection errors, timeouts
    /// and 5xx answers are retried with backoff.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, Error> {
        let mut url = url.to_string();
        let mut redirects = 0;
        let attempts = self.retries + 1;
        let mut attempt = 1;
        loop {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<hyper::Uri>().is_err() {
                return Err(Error::Url);
            }
            let last = match self.attempt(&url).await? {
                Attempt::Body(body) => return Ok(body),
                Attempt::Refused(why) => return Err(Error::Refused(why)),
                Attempt::Redirect(to) => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(Error::Refused(format!("more than {MAX_REDIRECTS} redirects")));
                    }
                    url = to;
                    continue;
                }
                Attempt::Retry(why) => why,
            };
            if attempt == attempts {
                return Err(Error::Attempts { attempts, last });
            }
            tracing::debug!(attempt, error = %last, "fetch attempt failed");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, url: &str) -> Result<Attempt, Error> {
        let connector = tls::connector(url, self.insecure_skip_tls_verify).map_err(Error::Tls)?;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let mut request =
            hyper::Request::get(url).header("user-agent", concat!("kube-template/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Empty::new()).map_err(|_| Error::Url)?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| with_sources(&e))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok());
                return Ok(match location {
                    Some(location) => Attempt::Redirect(join(url, location)),
                    None => Attempt::Refused(format!("HTTP {status} without a Location")),
                });
            }
            let content = status.is_success() || (status.is_server_error() && self.server_error_bodies);
            if !content && !status.is_server_error() {
                return Ok(Attempt::Refused(format!("HTTP {status}")));
            }
            let body = Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(if content {
                Attempt::Body(body.to_vec())
            } else {
                Attempt::Retry(format!("HTTP {status}"))
            })
        };
        Ok(match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(why)) => Attempt::Retry(why),
            Err(_) => Attempt::Retry(format!(
                "no complete answer within {}",
                humantime::format_duration(self.timeout)
            )),
        })
    }
}

/// Where a redirect's `Location` points, relative to `url`.
fn join(url: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let Ok(base) = url.parse::<hyper::Uri>() else {
        return location.to_string();
    };
    let origin = format!(
        "{}://{}",
        base.scheme_str().unwrap_or("http"),
        base.authority().map_or("", |a| a.as_str())
    );
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{origin}{dir}/{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_absolute_and_relative_locations() {
        assert_eq!(join("http://a:1/x/y?q", "https://b/z"), "https://b/z");
        assert_eq!(join("http://a:1/x/y?q", "/z"), "http://a:1/z");
        assert_eq!(join("http://a:1/x/y?q", "z"), "http://a:1/x/z");
    }
}
