//! Acceptances of shrinks the loss guard refused (`kube-template accept`):
//! the admin server takes an operator's request, the live pipeline answers
//! it. Here because both stages share [`super::Telemetry`] and nothing else.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// The admin server's route for acceptances.
pub const PATH: &str = "/guard/accept";

/// How long the admin server waits for the pipeline, which answers between
/// renders (a render with its `check` may take a while).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// `template` as the query value of [`PATH`]: every byte but ASCII
/// letters, digits and `-._~` percent-encoded.
pub fn encode(template: &str) -> String {
    template
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A query value back to text (`%XX` and `+`); bad escapes are kept as written.
pub fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request to accept the pending shrink of a template, or of every
/// guarded template (`None`).
#[derive(Debug)]
pub struct Request {
    pub template: Option<String>,
    pub reply: oneshot::Sender<Reply>,
}

/// The pipeline's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// These templates' pending shrinks will be written by the render that
    /// starts now.
    Accepted(Vec<String>),
    /// No guarded template (or not the one named) has a refused shrink.
    NothingPending,
    /// The template named is not in the config, or has no `guard:`.
    Unknown(String),
}

/// The channel from the admin server to the live pipeline.
#[derive(Debug)]
pub struct Accepts {
    requests: mpsc::Sender<Request>,
    /// Taken by the live pipeline when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Request>>>,
}

impl Default for Accepts {
    fn default() -> Self {
        let (requests, receiver) = mpsc::channel(16);
        Accepts {
            requests,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Accepts {
    /// Asks the live pipeline to accept; `None` when no pipeline answers
    /// within [`ANSWER_WITHIN`].
    pub async fn ask(&self, template: Option<String>) -> Option<Reply> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.requests.send(Request { template, reply }).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(ANSWER_WITHIN, asked).await.ok().flatten()
    }

    /// The requests, for the live pipeline; `None` once taken.
    pub fn follow(&self) -> Option<mpsc::Receiver<Request>> {
        self.receiver.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_survive_the_query() {
        for name in ["haproxy", "grafana dashboards", "a&b=c/%", "ünï"] {
            assert_eq!(decode(&encode(name)), name);
        }
        assert_eq!(encode("a b"), "a%20b");
    }
}
