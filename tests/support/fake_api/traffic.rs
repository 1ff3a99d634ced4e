//! Traffic: what a client costs the server.

use super::*;

/// What the server sent and served since it started, for measuring what clients
/// cost it (see [`FakeApiServer::traffic`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    /// TCP connections accepted.
    pub connections: u64,
    /// TCP connections open now.
    pub open_connections: u64,
    /// HTTP requests received, discovery included.
    pub requests: u64,
    /// Bytes written to clients: status lines, headers, chunk framing and bodies.
    pub bytes_sent: u64,
    /// Periodic bookmarks sent on watches, and their bytes (event lines only).
    pub bookmarks: u64,
    pub bookmark_bytes: u64,
}

impl std::ops::Sub for TrafficSnapshot {
    type Output = TrafficSnapshot;

    /// What happened between two snapshots (`open_connections` is the later one's).
    fn sub(self, earlier: TrafficSnapshot) -> TrafficSnapshot {
        TrafficSnapshot {
            connections: self.connections - earlier.connections,
            open_connections: self.open_connections,
            requests: self.requests - earlier.requests,
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bookmarks: self.bookmarks - earlier.bookmarks,
            bookmark_bytes: self.bookmark_bytes - earlier.bookmark_bytes,
        }
    }
}

/// Counters shared by every connection; atomics, so that counting bytes never
/// waits on the state lock.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    pub(super) connections: AtomicU64,
    pub(super) open_connections: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) bookmarks: AtomicU64,
    pub(super) bookmark_bytes: AtomicU64,
}

impl Traffic {
    pub(super) fn note_bookmark(&self, bytes: usize) {
        self.bookmarks.fetch_add(1, Ordering::Relaxed);
        self.bookmark_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bookmarks: self.bookmarks.load(Ordering::Relaxed),
            bookmark_bytes: self.bookmark_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A client connection that counts the bytes written to it, and itself while open.
pub(super) struct CountingStream {
    pub(super) inner: tokio::net::TcpStream,
    pub(super) traffic: Arc<Traffic>,
}

impl CountingStream {
    pub(super) fn new(inner: tokio::net::TcpStream, traffic: Arc<Traffic>) -> Self {
        traffic.connections.fetch_add(1, Ordering::Relaxed);
        traffic.open_connections.fetch_add(1, Ordering::Relaxed);
        Self { inner, traffic }
    }

    pub(super) fn count(
        &self,
        written: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let std::task::Poll::Ready(Ok(n)) = written {
            self.traffic.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }
}

impl Drop for CountingStream {
    fn drop(&mut self) {
        self.traffic.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(written)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl FakeApiServer {
    /// Connections, requests and bytes served so far; subtract two snapshots for
    /// what happened between them.
    pub fn traffic(&self) -> TrafficSnapshot {
        self.shared.lock().traffic.snapshot()
    }
}
