//! Full history and slow GETs, for consistency checks (tests/races.rs).

use super::*;

/// One change in [`FakeApiServer::full_history`].
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    /// The resourceVersion the change made.
    pub rv: u64,
    pub api_version: String,
    pub kind: String,
    /// `""` for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The object after the change; `None` for a delete.
    pub object: Option<Value>,
}

impl FakeApiServer {
    /// Every create, update and delete since the server started, in
    /// resourceVersion order, whatever was compacted for watches since: the
    /// server's state at any resourceVersion can be replayed from it.
    pub fn full_history(&self) -> Vec<HistoryEntry> {
        let st = self.shared.lock();
        st.journal
            .iter()
            .map(|change| {
                let kind = &st.kinds[change.kind];
                let last = change.new.as_deref().or(change.old.as_deref());
                let text = |field: &str| {
                    last.and_then(|o| o["metadata"][field].as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                HistoryEntry {
                    rv: change.rv,
                    api_version: kind.api_version(),
                    kind: kind.kind.clone(),
                    namespace: text("namespace"),
                    name: text("name"),
                    object: change.new.as_deref().cloned(),
                }
            })
            .collect()
    }

    /// Delays every GET of one object of `plural` by `delay` before it is
    /// served (the object is read after the delay); zero removes the delay.
    pub fn set_get_delay(&self, plural: &str, delay: Duration) {
        let mut st = self.shared.lock();
        if delay.is_zero() {
            st.get_delays.remove(plural);
        } else {
            st.get_delays.insert(plural.to_owned(), delay);
        }
    }
}

pub(super) fn get_delay(shared: &Shared, kind: usize) -> Option<Duration> {
    let st = shared.lock();
    st.get_delays.get(&st.kinds[kind].plural).copied()
}
