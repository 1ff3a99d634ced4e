//! The indexer: each object's composite key from its `index_by` expressions.
//!
//! Expressions are JSONPath-style paths without the leading `$.`
//! (`metadata.labels['kubernetes.io/service-name']`), parsed once at startup.
//! A key is the tuple of the values, never a joined string, so values that
//! contain `/` cannot collide.

use std::fmt;

use serde_json::Value;

use crate::config::OnMissingKey;
use crate::store::document::{Json, Node};

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Field(String),
    Index(usize),
}

/// A parsed path expression such as `spec.rules[0].host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    /// Parses `a.b['c.d'][0].e`. A leading `$.` is accepted.
    ///
    /// ```
    /// use kube_template::index::FieldPath;
    /// use serde_json::json;
    ///
    /// let path = FieldPath::parse("metadata.labels['kubernetes.io/service-name']").unwrap();
    /// let slice = json!({"metadata": {"labels": {"kubernetes.io/service-name": "web"}}});
    /// assert_eq!(path.get(&slice), Some(&json!("web")));
    /// assert!(FieldPath::parse("metadata.labels[").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let body = text.strip_prefix("$.").unwrap_or(text);
        let chars: Vec<char> = body.chars().collect();
        let mut segments = Vec::new();
        let mut i = 0;
        let mut expect_name = true;
        while i < chars.len() {
            match chars[i] {
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| p + i)
                        .ok_or_else(|| format!("`[` at position {} is never closed", i + 1))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    let quoted = inner.len() >= 2
                        && ((inner.starts_with('\'') && inner.ends_with('\''))
                            || (inner.starts_with('"') && inner.ends_with('"')));
                    if quoted {
                        segments.push(Segment::Field(inner[1..inner.len() - 1].to_string()));
                    } else if let Ok(index) = inner.parse::<usize>() {
                        segments.push(Segment::Index(index));
                    } else {
                        return Err(format!("`[{inner}]` is neither a quoted key nor a list index"));
                    }
                    i = close + 1;
                    expect_name = false;
                }
                '.' if !expect_name => {
                    i += 1;
                    expect_name = true;
                }
                c if is_name_char(c) => {
                    let start = i;
                    while i < chars.len() && is_name_char(chars[i]) {
                        i += 1;
                    }
                    segments.push(Segment::Field(chars[start..i].iter().collect()));
                    expect_name = false;
                }
                c => return Err(format!("unexpected `{c}` at position {}", i + 1)),
            }
            if expect_name && i < chars.len() && chars[i] == '[' {
                return Err(format!("unexpected `.` before `[` at position {i}"));
            }
        }
        if segments.is_empty() {
            return Err("the expression is empty".into());
        }
        if expect_name {
            return Err("the expression ends with `.`".into());
        }
        Ok(FieldPath {
            text: text.to_string(),
            segments,
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The value at this path, if every step exists.
    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(value, |v, segment| match segment {
            Segment::Field(name) => v.get(name.as_str()),
            Segment::Index(i) => v.get(*i),
        })
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// A composite key: one value per `index_by` expression.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub Vec<String>);

impl Key {
    pub fn parts(&self) -> &[String] {
        &self.0
    }
}

/// Computes keys for one watched resource.
#[derive(Debug, Clone)]
pub struct Indexer {
    paths: Vec<FieldPath>,
    on_missing: OnMissingKey,
}

impl Indexer {
    pub fn new(paths: Vec<FieldPath>, on_missing: OnMissingKey) -> Indexer {
        Indexer { paths, on_missing }
    }

    /// How a store lays out this indexer's keys: `names_in_key` when the key
    /// is exactly `[metadata.namespace, metadata.name]`.
    pub fn layout(&self) -> crate::store::Layout {
        let texts: Vec<String> = self.paths.iter().map(|p| p.to_string()).collect();
        crate::store::Layout {
            width: self.paths.len(),
            names_in_key: texts == ["metadata.namespace", "metadata.name"],
        }
    }

    /// The object's key, or `None` when a value is missing and the policy is
    /// `skip`. Strings are used as they are, numbers and booleans in their JSON
    /// form, lists and mappings as compact JSON; `null` counts as missing.
    pub fn key(&self, object: Node<'_>) -> Option<Key> {
        let mut parts = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let value = object.at_path(path);
            match value.map(Node::json) {
                Some(Json::String(s)) => parts.push(s.to_string()),
                Some(Json::Null) | None => match self.on_missing {
                    OnMissingKey::Empty => parts.push(String::new()),
                    OnMissingKey::Skip => return None,
                },
                Some(_) => parts.push(serde_json::to_string(&value).unwrap_or_default()),
            }
        }
        Some(Key(parts))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::document::Document;

    fn key_of(indexer: &Indexer, object: serde_json::Value) -> Option<Key> {
        indexer.key(Document::from_json(&object).root())
    }

    fn indexer(exprs: &[&str], on_missing: OnMissingKey) -> Indexer {
        Indexer::new(exprs.iter().map(|e| FieldPath::parse(e).unwrap()).collect(), on_missing)
    }

    #[test]
    fn bracketed_keys_may_contain_dots_and_slashes() {
        let path = FieldPath::parse("metadata.labels['kubernetes.io/service-name']").unwrap();
        let obj = json!({"metadata": {"labels": {"kubernetes.io/service-name": "web"}}});
        assert_eq!(path.get(&obj), Some(&json!("web")));
        let double = FieldPath::parse(r#"metadata.labels["a.b"]"#).unwrap();
        assert_eq!(
            double.segments(),
            &[
                Segment::Field("metadata".into()),
                Segment::Field("labels".into()),
                Segment::Field("a.b".into())
            ]
        );
    }

    #[test]
    fn list_indices_and_leading_dollar_are_understood() {
        let path = FieldPath::parse("$.spec.rules[1].host").unwrap();
        let obj = json!({"spec": {"rules": [{"host": "a"}, {"host": "b"}]}});
        assert_eq!(path.get(&obj), Some(&json!("b")));
    }

    #[test]
    fn malformed_expressions_are_rejected_with_a_reason() {
        for bad in ["", "a.", ".a", "a..b", "a[", "a[x]", "a b", "a.[0]"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn key_is_a_tuple_so_values_with_slashes_do_not_collide() {
        let ix = indexer(&["metadata.namespace", "metadata.name"], OnMissingKey::Empty);
        let a = key_of(&ix, json!({"metadata": {"namespace": "a/b", "name": "c"}})).unwrap();
        let b = key_of(&ix, json!({"metadata": {"namespace": "a", "name": "b/c"}})).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn numbers_and_booleans_use_their_json_form() {
        let ix = indexer(&["spec.port", "spec.on"], OnMissingKey::Empty);
        let key = key_of(&ix, json!({"spec": {"port": 8080, "on": true}})).unwrap();
        assert_eq!(key.parts(), ["8080", "true"]);
    }

    #[test]
    fn missing_values_follow_on_missing_key() {
        let obj = json!({"metadata": {"name": "x"}});
        let empty = indexer(&["metadata.labels.app", "metadata.name"], OnMissingKey::Empty);
        assert_eq!(key_of(&empty, obj.clone()).unwrap().parts(), ["", "x"]);
        let skip = indexer(&["metadata.labels.app", "metadata.name"], OnMissingKey::Skip);
        assert_eq!(key_of(&skip, obj.clone()), None);
        assert_eq!(
            key_of(&skip, json!({"metadata": {"name": "x", "labels": {"app": null}}})),
            None
        );
    }

    #[test]
    fn ignored_fields_prune_only_the_named_field() {
        let obj = json!({"metadata": {"name": "x", "managedFields": [1], "annotations": {"a.b/c": "1", "d": "2"}}});
        let ignored: Vec<FieldPath> = ["metadata.managedFields", "metadata.annotations['a.b/c']", "spec.absent"]
            .iter()
            .map(|e| FieldPath::parse(e).unwrap())
            .collect();
        let pruned = Document::from_json_without(&obj, &ignored).to_json();
        assert_eq!(pruned, json!({"metadata": {"name": "x", "annotations": {"d": "2"}}}));
    }
}
