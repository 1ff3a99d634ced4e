//! Label and field selectors of LISTs and WATCHes.

use super::*;

/// The namespace, label selector and field selector of a LIST or WATCH.
pub(super) struct Filter {
    pub(super) namespace: Option<String>,
    pub(super) labels: Vec<LabelRequirement>,
    pub(super) fields: Vec<FieldRequirement>,
}

impl Filter {
    pub(super) fn new(namespace: Option<String>, query: &Query) -> Result<Self, ApiError> {
        let selector = |key: &str| query.get(key).map(String::as_str).unwrap_or_default();
        let labels = parse_label_selector(selector("labelSelector")).map_err(ApiError::bad_request)?;
        let fields = parse_field_selector(selector("fieldSelector")).map_err(ApiError::bad_request)?;
        Ok(Self {
            namespace,
            labels,
            fields,
        })
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        let labels = meta["labels"].as_object();
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.iter().all(|r| r.matches(labels))
            && self
                .fields
                .iter()
                .all(|r| (meta[r.field].as_str().unwrap_or_default() == r.value) == r.equal)
    }
}

pub(super) struct LabelRequirement {
    pub(super) key: String,
    pub(super) op: LabelOp,
}

pub(super) enum LabelOp {
    /// `k=v`, `k==v`, `k in (v1,v2)`.
    In(Vec<String>),
    /// `k!=v`, `k notin (v1,v2)`: also true when the label is absent.
    NotIn(Vec<String>),
    /// `k`.
    Exists,
    /// `!k`.
    DoesNotExist,
}

impl LabelRequirement {
    pub(super) fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key)).and_then(Value::as_str);
        match &self.op {
            LabelOp::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            LabelOp::NotIn(values) => value.is_none_or(|v| values.iter().all(|x| x != v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
        }
    }
}

pub(super) fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    let invalid = || format!("unable to parse requirement: invalid label selector {selector:?}");
    let mut requirements = Vec::new();
    for part in split_outside_parens(selector) {
        let part = part.trim();
        let (key, op) = if let Some(key) = part.strip_prefix('!') {
            (key, LabelOp::DoesNotExist)
        } else if let Some((key, value)) = part.split_once("!=") {
            (key, LabelOp::NotIn(vec![label_value(value).ok_or_else(invalid)?]))
        } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (key, LabelOp::In(vec![label_value(value).ok_or_else(invalid)?]))
        } else if let Some((head, tail)) = part.split_once('(') {
            let values = tail.strip_suffix(')').ok_or_else(invalid)?;
            let values = values
                .split(',')
                .map(label_value)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)?;
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [key, "in"] => (*key, LabelOp::In(values)),
                [key, "notin"] => (*key, LabelOp::NotIn(values)),
                _ => return Err(invalid()),
            }
        } else {
            (part, LabelOp::Exists)
        };
        let key = key.trim();
        let key_chars_ok = key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if key.is_empty() || !key_chars_ok {
            return Err(invalid());
        }
        requirements.push(LabelRequirement {
            key: key.to_owned(),
            op,
        });
    }
    Ok(requirements)
}

pub(super) fn label_value(value: &str) -> Option<String> {
    let value = value.trim();
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        .then(|| value.to_owned())
}

pub(super) fn split_outside_parens(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

pub(super) struct FieldRequirement {
    /// The `metadata` field compared.
    pub(super) field: &'static str,
    pub(super) value: String,
    pub(super) equal: bool,
}

pub(super) fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut requirements = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: {part:?}; can't understand it"));
        };
        let field = match field.trim() {
            "metadata.name" => "name",
            "metadata.namespace" => "namespace",
            other => return Err(format!("field label not supported: {other}")),
        };
        requirements.push(FieldRequirement {
            field,
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(requirements)
}
