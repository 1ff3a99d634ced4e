//! Keeping Secret data out of what `check` commands and actions print
//! (DESIGN 5.8). A failing `nginx -t` quotes the bad line of the staged file,
//! which may hold a Secret's value; the log (below debug), errors, `/readyz`,
//! the status page, Events and the status ConfigMap get only the first line of
//! such output, with every value of a watched Secret replaced by
//! [`REDACTED`].

use std::sync::OnceLock;

use base64::Engine;

use crate::object::document::{Document, Json};
use crate::store::StoreSnapshot;

/// What a Secret's value is replaced by.
pub const REDACTED: &str = "<redacted>";

/// Values shorter than this are not searched for: replacing every `1` or `on`
/// in a check's output would make it useless, and such values are guessable.
pub const MIN_LEN: usize = 4;

/// How many characters of a first line are kept.
const SUMMARY_CHARS: usize = 240;

/// The values of the watched Secrets at one render, found when first needed
/// (only a failure or an action's output needs them).
#[derive(Debug, Default)]
pub struct Redactor {
    stores: Vec<StoreSnapshot>,
    values: OnceLock<Vec<String>>,
}

impl Redactor {
    /// A redactor over the given stores of Secrets: full stores' objects and
    /// the bodies on-demand stores have fetched.
    pub fn new(secret_stores: impl IntoIterator<Item = StoreSnapshot>) -> Redactor {
        Redactor {
            stores: secret_stores.into_iter().collect(),
            values: OnceLock::new(),
        }
    }

    /// A redactor of exactly these values, for tests.
    #[cfg(test)]
    pub fn of_values(values: &[&str]) -> Redactor {
        let redactor = Redactor::default();
        let _ = redactor.values.set(values.iter().map(|v| v.to_string()).collect());
        redactor
    }

    /// `text` with every Secret value in it replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in self.values() {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), REDACTED);
            }
        }
        text
    }

    /// What errors and logs may show of a program's output: its first
    /// non-blank line, redacted, at most `SUMMARY_CHARS` (240) characters.
    /// Redaction comes first, so that a cut never leaves part of a value.
    pub fn summary(&self, output: &str) -> String {
        let redacted = self.redact(output);
        let line = redacted.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        match line.char_indices().nth(SUMMARY_CHARS) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line.to_owned(),
        }
    }

    /// Every value to hide, longest first (so that a value containing another
    /// is replaced whole).
    fn values(&self) -> &[String] {
        self.values.get_or_init(|| {
            let mut values = Vec::new();
            for store in &self.stores {
                match store {
                    StoreSnapshot::Full(snapshot) => {
                        for (_, object) in snapshot.iter() {
                            secret_values(object, &mut values);
                        }
                    }
                    StoreSnapshot::OnDemand { cache, .. } => {
                        for body in cache.bodies() {
                            secret_values(&body, &mut values);
                        }
                    }
                }
            }
            values.retain(|v| v.chars().count() >= MIN_LEN);
            values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            values.dedup();
            values
        })
    }
}

/// The values of a Secret's `data`, as sent (base64) and decoded, and each
/// line of a decoded value on its own (a check quotes one line of a file).
fn secret_values(object: &Document, out: &mut Vec<String>) {
    let Some(Json::Map(data)) = object.root().get("data").map(|n| n.json()) else {
        return;
    };
    for (_, value) in data.entries() {
        let Some(encoded) = value.as_str() else { continue };
        out.push(encoded.to_owned());
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        let decoded = String::from_utf8_lossy(&decoded);
        out.push(decoded.trim().to_owned());
        out.extend(decoded.lines().map(|l| l.trim().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::index::Indexer;
    use crate::index::OnMissingKey;
    use crate::object::FieldPath;
    use crate::store::AnyStore;
    use crate::store::full::FullStore;

    fn secrets(values: &[&str]) -> Redactor {
        let name = FieldPath::parse("metadata.name").unwrap();
        let mut store = FullStore::new(Indexer::new(vec![name], OnMissingKey::Empty), Vec::new());
        for (i, value) in values.iter().enumerate() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            store.apply(Document::from_json(&json!({
                "metadata": {"namespace": "default", "name": format!("s{i}"), "uid": format!("u{i}")},
                "data": {"k": encoded},
            })));
        }
        Redactor::new([AnyStore::Full(store).snapshot()])
    }

    #[test]
    fn values_decoded_encoded_and_each_line_are_replaced() {
        let redactor = secrets(&["hunter22", "line-one\nline-two\n"]);
        assert_eq!(redactor.redact("pw hunter22 ok"), "pw <redacted> ok");
        let encoded = base64::engine::general_purpose::STANDARD.encode("hunter22");
        assert_eq!(redactor.redact(&format!("x {encoded}")), "x <redacted>");
        assert_eq!(
            redactor.redact("bad line: line-two"),
            "bad line: <redacted>",
            "one line of a multi-line value"
        );
    }

    #[test]
    fn short_values_are_left_alone() {
        let redactor = secrets(&["on"]);
        assert_eq!(redactor.redact("config is on"), "config is on");
    }

    #[test]
    fn the_summary_is_the_first_line_redacted_before_it_is_cut() {
        let long = "s".repeat(300);
        let redactor = secrets(&[&long]);
        let output = format!("\n  error near {long}\nsecond line\n");
        assert_eq!(redactor.summary(&output), "error near <redacted>");
        assert_eq!(Redactor::default().summary("a\nb"), "a");
    }
}
