//! Local HTTP servers standing in for Grafana: reload calls received, with TLS, and content served for `.url` keys.

use super::*;

/// One HTTP request as the reload server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) request_line: String,
    pub(crate) headers: String,
    pub(crate) body: String,
}

/// A local HTTP server answering 200 to everything and keeping what it got;
/// with `tls`, an HTTPS one with the self-signed certificate of
/// `tests/support/tls/`.
pub(crate) async fn reload_server_with(tls: bool) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls { "https" } else { "http" };
    let url = format!(
        "{scheme}://{}/api/admin/provisioning/dashboards/reload",
        listener.local_addr().unwrap()
    );
    let acceptor = tls.then(tls_acceptor);
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let keep = Arc::clone(&keep);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    // A client that refuses the certificate ends the handshake.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            answer(stream, keep).await;
                        }
                    }
                    None => answer(stream, keep).await,
                }
            });
        }
    });
    (url, received)
}

pub(crate) async fn reload_server() -> (String, Arc<Mutex<Vec<Received>>>) {
    reload_server_with(false).await
}

/// Reads one request from `stream`, keeps it, and answers 200.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, keep: Arc<Mutex<Vec<Received>>>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                break (head.to_string(), body.to_string());
            }
        }
    };
    let (request_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    keep.lock().unwrap().push(Received {
        request_line: request_line.to_string(),
        headers: headers.to_ascii_lowercase(),
        body,
    });
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    let _ = stream.shutdown().await;
}

/// The DER blocks of a PEM file.
fn pem_blocks(path: &Path) -> Vec<Vec<u8>> {
    use base64::Engine;
    let text = fs::read_to_string(path).unwrap();
    text.split("-----BEGIN ")
        .skip(1)
        .map(|block| {
            let body: String = block
                .lines()
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            base64::engine::general_purpose::STANDARD.decode(body).unwrap()
        })
        .collect()
}

pub(crate) fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls");
    let certs = pem_blocks(&dir.join("cert.pem"))
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(pem_blocks(&dir.join("key.pem")).remove(0));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key.into())
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What a content server answers on one path: a status and a body.
pub(crate) type Routes = Arc<Mutex<BTreeMap<String, (u16, String)>>>;

/// A local HTTP server answering each path from `routes` (404 when absent)
/// and keeping the paths it was asked for, in order.
pub(crate) async fn content_server(routes: Routes) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&asked);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (routes, keep) = (Arc::clone(&routes), Arc::clone(&keep));
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&data).contains("\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&data).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                keep.lock().unwrap().push(path.clone());
                let (status, body) = routes.lock().unwrap().get(&path).cloned().unwrap_or((404, "no".into()));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (base, asked)
}
