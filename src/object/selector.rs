//! Kubernetes label and field selectors: parsed to validate the config, sent
//! as written to the API server, and evaluated locally for `--from` manifests.

use serde_json::Value;

use crate::object::FieldPath;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`app=web,tier in (a,b),!canary`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err("empty requirement (two commas in a row?)".into());
            }
            requirements.push(parse_label_requirement(part)?);
        }
        Ok(LabelSelector {
            text: text.trim().to_string(),
            requirements,
        })
    }

    /// The selector as the user wrote it (what the API server is sent).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// One spelling for every way of writing the same selector: requirements
    /// and `in` values sorted, duplicates dropped, `==` as `=`.
    pub fn canonical(&self) -> String {
        let mut parts: Vec<String> = self
            .requirements
            .iter()
            .map(|req| match req {
                LabelRequirement::Equals(k, v) => format!("{k}={v}"),
                LabelRequirement::NotEquals(k, v) => format!("{k}!={v}"),
                LabelRequirement::In(k, vs) => format!("{k} in ({})", sorted(vs)),
                LabelRequirement::NotIn(k, vs) => format!("{k} notin ({})", sorted(vs)),
                LabelRequirement::Exists(k) => k.clone(),
                LabelRequirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        parts.sort();
        parts.dedup();
        parts.join(",")
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
        };
        self.requirements.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        })
    }
}

fn sorted(values: &[String]) -> String {
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    values.join(",")
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_label_requirement(part: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(label_key(key.trim())?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            label_key(key.trim())?,
            label_value(value.trim())?,
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(LabelRequirement::Equals(
            label_key(key.trim())?,
            label_value(value.trim())?,
        ));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = label_key(words[0])?;
        let rest = words[1].trim();
        let (op, list) = if let Some(list) = rest.strip_prefix("notin") {
            ("notin", list)
        } else if let Some(list) = rest.strip_prefix("in") {
            ("in", list)
        } else {
            return Err(format!("`{part}`: expected `in (…)` or `notin (…)` after `{key}`"));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("`{part}`: the values of `{op}` go in parentheses"))?;
        let values = inner
            .split(',')
            .map(|v| label_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if op == "in" {
            LabelRequirement::In(key, values)
        } else {
            LabelRequirement::NotIn(key, values)
        });
    }
    Ok(LabelRequirement::Exists(label_key(part)?))
}

fn label_key(key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && key.matches('/').count() <= 1;
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("`{key}` is not a valid label key"))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!("`{value}` is not a valid label value"))
    }
}

/// A parsed field selector (`metadata.name=web,status.phase!=Failed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    text: String,
    requirements: Vec<(FieldPath, bool, String)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err("empty requirement (two commas in a row?)".into());
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "`{part}`: expected `field=value`, `field==value` or `field!=value`"
                ));
            };
            let path = FieldPath::parse(field.trim()).map_err(|e| format!("`{part}`: {e}"))?;
            requirements.push((path, equal, value.trim().to_string()));
        }
        Ok(FieldSelector {
            text: text.trim().to_string(),
            requirements,
        })
    }

    /// The selector as the user wrote it (what the API server is sent).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// One spelling for every way of writing the same selector: requirements
    /// sorted, duplicates dropped, `==` as `=`, no leading `$.`.
    pub fn canonical(&self) -> String {
        let mut parts: Vec<String> = self
            .requirements
            .iter()
            .map(|(path, equal, value)| {
                let path = path.to_string();
                let path = path.strip_prefix("$.").unwrap_or(&path);
                format!("{path}{}{value}", if *equal { "=" } else { "!=" })
            })
            .collect();
        parts.sort();
        parts.dedup();
        parts.join(",")
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the object's fields satisfy every requirement; a missing field
    /// compares as `""`, as the API server does.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(path, equal, value)| {
            let actual = match path.get(object) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selector_supports_every_operator() {
        let sel = LabelSelector::parse("app=web, tier in (front, edge),env!=prod,!canary,team,zone notin (a)").unwrap();
        assert!(sel.matches(&labelled(json!({"app": "web", "tier": "edge", "team": "t"}))));
        assert!(!sel.matches(&labelled(json!({"app": "web", "tier": "back", "team": "t"}))));
        assert!(!sel.matches(&labelled(
            json!({"app": "web", "tier": "edge", "team": "t", "canary": "1"})
        )));
        assert!(!sel.matches(&labelled(
            json!({"app": "web", "tier": "edge", "team": "t", "env": "prod"})
        )));
        assert!(!sel.matches(&labelled(json!({"app": "web", "tier": "edge"}))));
        assert!(!sel.matches(&labelled(
            json!({"app": "web", "tier": "edge", "team": "t", "zone": "a"})
        )));
        assert!(
            LabelSelector::parse("app==web")
                .unwrap()
                .matches(&labelled(json!({"app": "web"})))
        );
    }

    #[test]
    fn equivalent_selectors_have_one_canonical_spelling() {
        let canonical = |text: &str| LabelSelector::parse(text).unwrap().canonical();
        assert_eq!(canonical("a=1,b=2"), canonical("b=2, a==1"));
        assert_eq!(canonical("t in (y, x),!c"), canonical("!c,t in (x,y,x)"));
        assert_ne!(canonical("a=1"), canonical("a!=1"));
        assert_ne!(canonical("t in (x)"), canonical("t notin (x)"));
        let fields = |text: &str| FieldSelector::parse(text).unwrap().canonical();
        assert_eq!(
            fields("metadata.name=a,metadata.namespace!=b"),
            fields("$.metadata.namespace!=b, metadata.name==a")
        );
        assert_ne!(fields("metadata.name=a"), fields("metadata.name!=a"));
    }

    #[test]
    fn empty_selectors_match_everything() {
        assert!(LabelSelector::parse("").unwrap().matches(&json!({})));
        assert!(FieldSelector::parse(" ").unwrap().matches(&json!({})));
    }

    #[test]
    fn bad_selectors_are_rejected() {
        for bad in ["app in a,b", "a,,b", "app=we b", "tier foo (a)", "a/b/c"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn field_selector_compares_fields_and_missing_is_empty() {
        let obj = json!({"metadata": {"name": "web", "namespace": "prod"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=web,metadata.namespace!=dev")
                .unwrap()
                .matches(&obj)
        );
        assert!(!FieldSelector::parse("status.phase==Failed").unwrap().matches(&obj));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&obj));
    }
}
