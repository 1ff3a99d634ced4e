//! Kubernetes objects as template values, without copying them.
//!
//! Stores keep each object as a shared JSON document. A template sees a
//! document through [`document`]: mappings and lists are lazy views that
//! reach into the shared JSON when a template reads them, so applying an
//! object costs no conversion and a render converts only the fields it reads.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use serde_json::Value as Json;

/// An object as stores keep it.
pub type Document = Arc<Json>;

/// The template value of a whole document.
pub fn document(root: &Document) -> Value {
    node_value(root, Vec::new(), root)
}

/// The template value of a JSON value that is not part of a store (a
/// fetched body, a test value).
pub fn from_json(json: Json) -> Value {
    document(&Arc::new(json))
}

/// One step from a node to its child.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A mapping or list inside a shared document.
#[derive(Debug)]
struct Node {
    root: Document,
    path: Vec<Step>,
}

impl Node {
    /// The JSON this node stands for (walked from the root: documents are
    /// shallow, and a walk is cheaper than copying every object up front).
    fn json(&self) -> &Json {
        self.path.iter().fold(&*self.root, |json, step| match step {
            Step::Key(key) => json.get(key.as_str()).unwrap_or(&Json::Null),
            Step::Index(i) => json.get(*i).unwrap_or(&Json::Null),
        })
    }

    fn child(&self, step: Step, json: &Json) -> Value {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend(self.path.iter().cloned());
        path.push(step);
        node_value(&self.root, path, json)
    }
}

/// Scalars become plain values; mappings and lists lazy nodes.
fn node_value(root: &Document, path: Vec<Step>, json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(_) | Json::Object(_) => Value::from_object(Node {
            root: Arc::clone(root),
            path,
        }),
    }
}

impl Object for Node {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.json() {
            Json::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.json() {
            Json::Object(map) => {
                let key = key.as_str()?;
                let child = map.get(key)?;
                Some(self.child(Step::Key(key.to_string()), child))
            }
            Json::Array(items) => {
                let index = key.as_i64()?;
                let index = if index < 0 { items.len() as i64 + index } else { index };
                let index = usize::try_from(index).ok()?;
                let child = items.get(index)?;
                Some(self.child(Step::Index(index), child))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let this = Arc::clone(self);
        match self.json() {
            Json::Object(map) => {
                let keys: Vec<Value> = map.keys().map(|k| Value::from(k.as_str())).collect();
                Enumerator::Iter(Box::new(keys.into_iter()))
            }
            Json::Array(items) => {
                let len = items.len();
                Enumerator::Iter(Box::new((0..len).filter_map(move |i| {
                    let child = this.json().get(i)?;
                    Some(this.child(Step::Index(i), child))
                })))
            }
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.json() {
            Json::Object(map) => Some(map.len()),
            Json::Array(items) => Some(items.len()),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn objects_keep_every_field_and_type() {
        let value = from_json(json!({"a": [1, 2.5, "x", null, true], "b": {"c": u64::MAX}}));
        assert_eq!(value.get_attr("a").unwrap().len(), Some(5));
        let a = value.get_attr("a").unwrap();
        assert_eq!(a.get_item(&Value::from(1)).unwrap(), Value::from(2.5));
        assert!(a.get_item(&Value::from(3)).unwrap().is_none());
        assert_eq!(a.get_item(&Value::from(-1)).unwrap(), Value::from(true));
        let c = value.get_attr("b").unwrap().get_attr("c").unwrap();
        assert_eq!(c, Value::from(u64::MAX));
        assert!(value.get_attr("missing").unwrap().is_undefined());
    }

    #[test]
    fn templates_iterate_filter_and_serialize_documents() {
        let env = minijinja::Environment::new();
        let doc = from_json(
            json!({"metadata": {"name": "x", "labels": {"b": "2", "a": "1"}}, "items": [{"n": 1}, {"n": 2}]}),
        );
        let render = |source: &str| {
            env.render_str(source, minijinja::context! { o => doc.clone() })
                .unwrap()
        };
        assert_eq!(
            render("{% for k, v in o.metadata.labels|items %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;"
        );
        assert_eq!(render("{{ o['items'] | map(attribute='n') | join(',') }}"), "1,2");
        assert_eq!(render("{{ o.metadata.labels | tojson }}"), r#"{"a": "1", "b": "2"}"#);
        assert_eq!(
            render("{{ o.metadata | length }} {{ o['items'] | length }} {{ o['items'] | last | tojson }}"),
            r#"2 2 {"n": 2}"#
        );
        assert_eq!(
            render("{{ 'labels' in o.metadata }} {{ o.metadata.labels is mapping }}"),
            "True True"
        );
    }
}
