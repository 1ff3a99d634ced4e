//! `kube-template accept`: tells the sidecar running in this pod to write
//! the shrinks its loss guard refused, once. It reads the config for
//! `admin.listen` and asks the admin server over loopback, which is the
//! only peer the server takes an acceptance from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{self, Config};
use crate::telemetry::accept;

/// Why nothing was accepted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config could not be loaded.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The template named is not in the config.
    #[error("no template `{template}` in {}", file.display())]
    UnknownTemplate { template: String, file: PathBuf },
    /// The template named has no `guard:`, so nothing of it is ever refused.
    #[error("template `{template}` has no `guard:`; nothing of it is ever refused")]
    NotGuarded { template: String },
    /// No template of the config has a `guard:`.
    #[error("no template in {} has a `guard:`; nothing is ever refused", file.display())]
    NoGuard { file: PathBuf },
    /// `admin.listen` gives no address this pod's loopback reaches.
    #[error("admin.listen `{listen}`: {why}; accept talks to the admin server over 127.0.0.1")]
    NoLoopback { listen: String, why: &'static str },
    /// The admin server could not be reached.
    #[error("cannot reach the sidecar's admin server at {addr} (is it running in this pod?): {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The sidecar has no refused shrink to accept.
    #[error("{0}")]
    NothingPending(String),
    /// The sidecar answered something else (refused, busy, not a sidecar).
    #[error("the admin server at {addr} answered {status}: {body}")]
    Answer {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The exit status: 64 for what the config or the arguments got wrong,
    /// 1 when there was nothing to accept or no sidecar to ask.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::UnknownTemplate { .. }
            | Error::NotGuarded { .. }
            | Error::NoGuard { .. }
            | Error::NoLoopback { .. } => super::EXIT_CONFIG,
            Error::Unreachable { .. } | Error::NothingPending(_) | Error::Answer { .. } => 1,
        }
    }
}

/// `kube-template accept`: prints what was accepted, or why nothing was,
/// and gives the exit status.
pub async fn main(config_path: &Path, template: Option<&str>) -> ExitCode {
    match accept(config_path, template).await {
        Ok(accepted) => {
            println!("accepted: {}; rendering now", accepted.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Asks the sidecar running with `config_path` to accept the refused shrink
/// of `template` (every guarded template when `None`); returns the
/// templates accepted, which it renders at once.
pub async fn accept(config_path: &Path, template: Option<&str>) -> Result<Vec<String>> {
    let config = Config::load(config_path)?;
    match template {
        Some(name) => match config.templates.get(name) {
            None => {
                return Err(Error::UnknownTemplate {
                    template: name.to_string(),
                    file: config_path.to_owned(),
                });
            }
            Some(t) if t.guard.is_none() => {
                return Err(Error::NotGuarded {
                    template: name.to_string(),
                });
            }
            Some(_) => {}
        },
        None if config.templates.values().all(|t| t.guard.is_none()) => {
            return Err(Error::NoGuard {
                file: config_path.to_owned(),
            });
        }
        None => {}
    }
    let addr = loopback(&config.admin.listen)?;
    let target = match template {
        Some(name) => format!("{}?template={}", accept::PATH, accept::encode(name)),
        None => accept::PATH.to_string(),
    };
    let (status, body) = post(addr, &target).await?;
    let body = body.trim().to_string();
    match status {
        200 => Ok(body
            .strip_prefix("accepted:")
            .unwrap_or(&body)
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()),
        409 => Err(Error::NothingPending(body)),
        status => Err(Error::Answer { addr, status, body }),
    }
}

/// Where this pod reaches the admin server listening on `listen`.
fn loopback(listen: &str) -> Result<SocketAddr> {
    let no = |why| Error::NoLoopback {
        listen: listen.to_string(),
        why,
    };
    let (host, port) = listen.rsplit_once(':').ok_or(no("not host:port"))?;
    let port: u16 = port.parse().map_err(|_| no("not host:port"))?;
    if port == 0 {
        return Err(no("port 0 is chosen at random at each start"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => ip,
        Ok(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(_) => return Err(no("the server listens on that address only, not on loopback")),
        Err(_) if host == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) => return Err(no("give an IP address (0.0.0.0 or 127.0.0.1) to use accept")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// One `POST` with no body; the status and the body of the answer.
async fn post(addr: SocketAddr, target: &str) -> Result<(u16, String)> {
    let unreachable = |source| Error::Unreachable { addr, source };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request =
            format!("POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    // The server waits for the pipeline up to its own limit; a little longer here.
    let answer = tokio::time::timeout(accept::ANSWER_WITHIN + Duration::from_secs(5), exchange)
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| unreachable(std::io::Error::other("not an HTTP answer")))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_server_is_reached_over_loopback() {
        let at = |listen: &str| loopback(listen).map(|a| a.to_string()).map_err(|e| e.exit_code());
        assert_eq!(at("0.0.0.0:9090"), Ok("127.0.0.1:9090".into()));
        assert_eq!(at("[::]:9090"), Ok("127.0.0.1:9090".into()));
        assert_eq!(at("127.0.0.1:8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(at("[::1]:8080"), Ok("[::1]:8080".into()));
        assert_eq!(at("localhost:8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(at("10.1.2.3:9090"), Err(64));
        assert_eq!(at("0.0.0.0:0"), Err(64));
    }
}
