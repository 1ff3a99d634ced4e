//! Fault-matrix controls: short list pages, failing continued lists, watch events cut mid-JSON, and the server going away and coming back, possibly with a fresh resourceVersion history.

use super::*;

/// State of the fault-matrix controls.
#[derive(Default)]
pub(super) struct FaultMatrix {
    /// Most items a LIST page holds, whatever `limit` asked for (a real server
    /// may answer with fewer items than `limit`).
    pub(super) page_cap: Option<usize>,
    /// Codes for the next LISTs that carry a `continue` token, in order.
    pub(super) page_faults: VecDeque<u16>,
    /// Watch chunks still to cut in the middle of their last event.
    pub(super) cuts_pending: usize,
    /// Watch chunks cut so far.
    pub(super) cuts_done: usize,
    /// While down: the server's address, bound but not listening, so that
    /// connections are refused and no other server takes the port meanwhile.
    pub(super) held_port: Option<tokio::net::TcpSocket>,
}

impl FaultMatrix {
    pub(super) fn take_page_fault(&mut self, verb: Verb, query: &Query) -> Option<u16> {
        if verb != Verb::List || query.get("continue").is_none_or(|c| c.is_empty()) {
            return None;
        }
        self.page_faults.pop_front()
    }
}

impl FakeApiServer {
    /// LIST pages hold at most `cap` items (at least one), even when the client
    /// asked for more: initial lists of a few objects then take several pages.
    pub fn cap_list_pages(&self, cap: usize) {
        self.shared.lock().matrix.page_cap = Some(cap.max(1));
    }

    /// The next `n` LISTs that carry a `continue` token (a second or later page)
    /// fail with `code` (410 is what an expired token gets).
    pub fn fail_continued_lists(&self, n: usize, code: u16) {
        let faults = &mut self.shared.lock().matrix.page_faults;
        faults.extend(std::iter::repeat_n(code, n));
    }

    /// The next `n` watch chunks that end with an object event (not a bookmark
    /// or an error) are cut: each is sent up to the middle of its last event
    /// line, and then its stream ends.
    pub fn cut_next_watch_events(&self, n: usize) {
        self.shared.lock().matrix.cuts_pending += n;
    }

    /// Watch chunks cut so far by [`Self::cut_next_watch_events`].
    pub fn cut_watch_events(&self) -> usize {
        self.shared.lock().matrix.cuts_done
    }

    /// Stops serving, as when the API server process dies: the listener closes
    /// and every connection, open watches included, is cut without a clean end.
    /// Clients get "connection refused" until [`Self::come_back`]; the objects
    /// and the controls stay as they are.
    pub async fn go_down(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr).expect("hold the address while down");
        self.shared.lock().matrix.held_port = Some(socket);
    }

    /// Serves again at the same address, after [`Self::go_down`].
    pub async fn come_back(&mut self) {
        let held = self.shared.lock().matrix.held_port.take();
        let listener = match held {
            Some(socket) => socket.listen(1024),
            None => TcpListener::bind(self.addr).await,
        };
        let listener = listener.expect("listen at the same address again");
        self.task = tokio::spawn(serve(listener, self.shared.clone()));
    }

    /// The storage restored from a backup, as an etcd restore does: every object
    /// keeps its content and uid but gets a new, low resourceVersion (1, 2, …
    /// in their old order), and the history and list snapshots are gone. A watch
    /// from a version of the old history waits for that version, as the real
    /// server does for a version it has not reached yet (its bookmarks repeat
    /// that version).
    pub fn restart_history(&self) {
        {
            let mut st = self.shared.lock();
            let mut all: Vec<(u64, usize, (String, String))> = Vec::new();
            for (index, kind) in st.kinds.iter().enumerate() {
                for (key, object) in &kind.objects {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|rv| rv.parse().ok());
                    all.push((rv.unwrap_or(0), index, key.clone()));
                }
            }
            all.sort();
            for (n, (_, index, key)) in all.iter().enumerate() {
                let objects = &mut st.kinds[*index].objects;
                if let Some(object) = objects.get_mut(key) {
                    *object = Arc::new(with_resource_version(object, n as u64 + 1));
                }
            }
            st.rv = all.len() as u64;
            st.history.clear();
            st.floor = 0;
            st.snapshots.clear();
        }
        self.shared.wake_watches();
    }
}
