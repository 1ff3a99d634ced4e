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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answering `/r` with a redirect to `/x`, `/x` with `x`,
    /// `/boom` with a 500 and anything else with a 404; it counts requests.
    async fn server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = match head.split_whitespace().nth(1).unwrap_or("") {
                    "/r" => "HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n",
                    "/x" => "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
                    "/boom" => "HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\nboom",
                    _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                };
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (base, requests)
    }

    fn fetcher(retries: u32, server_error_bodies: bool) -> Fetcher {
        Fetcher {
            timeout: Duration::from_secs(5),
            retries,
            headers: BTreeMap::new(),
            insecure_skip_tls_verify: false,
            server_error_bodies,
            max_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn redirects_are_followed_a_404_is_not_retried_and_a_500_is() {
        let (base, requests) = server().await;
        assert_eq!(fetcher(0, false).get(&format!("{base}/r")).await.unwrap(), b"x");
        assert_eq!(requests.swap(0, Ordering::SeqCst), 2);
        let error = fetcher(3, false).get(&format!("{base}/none")).await.unwrap_err();
        assert_eq!(error.to_string(), "HTTP 404 Not Found");
        assert_eq!(requests.swap(0, Ordering::SeqCst), 1);
        let error = fetcher(1, false).get(&format!("{base}/boom")).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed after 2 attempt(s): HTTP 500 Internal Server Error"
        );
        assert_eq!(requests.swap(0, Ordering::SeqCst), 2);
        assert_eq!(fetcher(1, true).get(&format!("{base}/boom")).await.unwrap(), b"boom");
        assert!(matches!(fetcher(0, false).get("ftp://x/y").await, Err(Error::Url)));
    }

    #[test]
    fn redirects_resolve_absolute_and_relative_locations() {
        assert_eq!(join("http://a:1/x/y?q", "https://b/z"), "https://b/z");
        assert_eq!(join("http://a:1/x/y?q", "/z"), "http://a:1/z");
        assert_eq!(join("http://a:1/x/y?q", "z"), "http://a:1/x/z");
    }
}
