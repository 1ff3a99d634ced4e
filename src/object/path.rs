//! Field paths: JSONPath-style expressions without the leading `$.`
//! (`metadata.labels['kubernetes.io/service-name']`), parsed once at startup
//! and used by `index_by`, `ignore_fields` and field selectors.

use std::fmt;

use serde_json::Value;

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
    /// use kube_template::object::FieldPath;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::object::Document;

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
