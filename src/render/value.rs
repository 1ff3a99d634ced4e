//! Kubernetes objects as template values, without copying them.
//!
//! Stores keep each object as a [`Document`]. A template sees a document
//! through [`document()`]: mappings and lists are lazy views of a node of the
//! shared document, so applying an object costs no conversion and a render
//! converts only the fields it reads.

use std::sync::{Arc, OnceLock};

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use serde_json::Value as Json;

use crate::object::document::{self, Document, Table};

/// The template value of a whole document (a store loop hands each over
/// rather than cloning it again).
pub fn document(doc: Document) -> Value {
    let root = doc.root();
    if let document::Json::List(_) | document::Json::Map(_) = root.json() {
        let offset = root.offset();
        return Node::value(doc, offset);
    }
    node_value(&doc, doc.root())
}

/// The template value of a JSON value that is not part of a store (a test
/// value, a filter's result).
pub fn from_json(json: Json) -> Value {
    document(Document::from_json(&json))
}

/// A mapping or list inside a shared document.
#[derive(Debug)]
struct Node {
    doc: Document,
    offset: u32,
    /// The first mapping or list looked up by key in this mapping, and the
    /// index of its entry: a template reads `cm.metadata` again for each of
    /// `cm.metadata.name`, `cm.metadata.namespace`, … and finds it here.
    child: OnceLock<(usize, Value)>,
}

impl Node {
    /// The mapping or list at `offset` of `doc`, as a template value.
    fn value(doc: Document, offset: u32) -> Value {
        Value::from_object(Node {
            doc,
            offset,
            child: OnceLock::new(),
        })
    }

    fn table(&self) -> Option<(Table<'_>, bool)> {
        match self.doc.node(self.offset).json() {
            document::Json::Map(map) => Some((map, true)),
            document::Json::List(list) => Some((list, false)),
            _ => None,
        }
    }
}

/// Scalars become plain values; mappings and lists lazy nodes.
fn node_value(doc: &Document, node: document::Node<'_>) -> Value {
    match node.json() {
        document::Json::Null => Value::from(()),
        document::Json::Bool(b) => Value::from(b),
        document::Json::Int(i) => Value::from(i),
        document::Json::UInt(u) => Value::from(u),
        document::Json::Float(f) => Value::from(f),
        document::Json::String(s) => Value::from(s),
        document::Json::List(_) | document::Json::Map(_) => Node::value(doc.clone(), node.offset()),
    }
}

impl Object for Node {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.table() {
            Some((_, false)) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let (table, is_map) = self.table()?;
        let child = if is_map {
            table.get(key.as_str()?)?
        } else {
            let index = key.as_i64()?;
            let index = if index < 0 { table.len() as i64 + index } else { index };
            table.item(usize::try_from(index).ok()?)?
        };
        Some(node_value(&self.doc, child))
    }

    // `cm.metadata.name` looks its keys up by string: no key value to make.
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        let document::Json::Map(map) = self.doc.node(self.offset).json() else {
            return self.get_value(&Value::from(key));
        };
        if let Some((index, child)) = self.child.get()
            && map.has_key(*index, key)
        {
            return Some(child.clone());
        }
        let index = map.position(key)?;
        let value = node_value(&self.doc, map.value(index)?);
        // Only mappings and lists are objects here (see `node_value`).
        if value.as_object().is_some() {
            // Taken by the first container only; a later one is made anew.
            let _ = self.child.set((index, value.clone()));
        }
        Some(value)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.table() {
            Some((map, true)) => {
                let keys: Vec<Value> = map.entries().map(|(k, _)| Value::from(k)).collect();
                Enumerator::Iter(Box::new(keys.into_iter()))
            }
            Some((list, false)) => {
                let this = Arc::clone(self);
                Enumerator::Iter(Box::new((0..list.len()).filter_map(move |i| {
                    let (list, _) = this.table()?;
                    Some(node_value(&this.doc, list.item(i)?))
                })))
            }
            None => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.table().map_or(0, |(table, _)| table.len()))
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
