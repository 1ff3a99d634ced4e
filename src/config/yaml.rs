//! A YAML tree that remembers where each node came from, so that every config
//! problem can be reported with its line and column, all at once.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A line and column in the config file (1-based; 0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One YAML node and its position.
#[derive(Debug, Clone)]
pub struct Node {
    pub position: Position,
    pub value: NodeValue,
}

/// The content of a [`Node`]. Mappings keep their order and their keys as text.
#[derive(Debug, Clone)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Sequence(Vec<Node>),
    Mapping(Vec<(String, Node)>),
}

impl Node {
    /// Parses one YAML document. Only `true` and `false` are booleans (YAML
    /// 1.2), so that `y` or `on` in a config stay strings. Duplicate keys are
    /// kept, both of them, so that validation can report each one with its
    /// path along with every other problem ([`Node::duplicate_keys`]).
    pub fn parse(text: &str) -> Result<Node, serde_saphyr::Error> {
        if text.trim().is_empty() {
            return Ok(Node {
                position: Position::default(),
                value: NodeValue::Null,
            });
        }
        serde_saphyr::from_str_with_options(
            text,
            serde_saphyr::options! {
                strict_booleans: true,
                duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
            },
        )
    }

    /// The entries of a mapping, or `None` for any other node.
    pub fn entries(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            NodeValue::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?.iter().find(|(k, _)| k == key).map(|(_, node)| node)
    }

    /// Follows a path of mapping keys and sequence indices as far as it exists and
    /// returns the deepest node reached.
    pub fn deepest<'a>(&'a self, path: &[String]) -> &'a Node {
        let mut node = self;
        for segment in path {
            let next = match &node.value {
                NodeValue::Mapping(_) => node.get(segment),
                NodeValue::Sequence(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(next) => node = next,
                None => break,
            }
        }
        node
    }

    /// The plain JSON value of this node (positions dropped).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Number(n) => Value::Number(n.clone()),
            NodeValue::String(s) => Value::String(s.clone()),
            NodeValue::Sequence(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Mapping(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    /// Every key that appears a second time in the same mapping, anywhere in
    /// the tree: its path (parent segments and the key), the repeated node, and
    /// the node of the first occurrence.
    pub fn duplicate_keys(&self) -> Vec<(Vec<String>, &Node, &Node)> {
        let mut found = Vec::new();
        let mut pending = vec![(Vec::new(), self)];
        while let Some((path, node)) = pending.pop() {
            match &node.value {
                NodeValue::Mapping(entries) => {
                    for (i, (key, value)) in entries.iter().enumerate() {
                        let mut at = path.clone();
                        at.push(key.clone());
                        match entries[..i].iter().find(|(k, _)| k == key) {
                            Some((_, first)) => found.push((at, value, first)),
                            None => pending.push((at, value)),
                        }
                    }
                }
                NodeValue::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let mut at = path.clone();
                        at.push(i.to_string());
                        pending.push((at, item));
                    }
                }
                _ => {}
            }
        }
        found
    }

    /// A short name of the node's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Number(_) => "a number",
            NodeValue::String(_) => "a string",
            NodeValue::Sequence(_) => "a list",
            NodeValue::Mapping(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<NodeValue>::deserialize(deserializer)?;
        Ok(Node {
            position: Position {
                line: spanned.referenced.line() as u32,
                column: spanned.referenced.column() as u32,
            },
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        d.deserialize_any(NodeVisitor)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeValue, E> {
        Ok(NodeValue::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeValue, E> {
        Ok(Number::from_f64(v).map_or(NodeValue::Null, NodeValue::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(NodeValue::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Value>()? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            entries.push((key, map.next_value::<Node>()?));
        }
        Ok(NodeValue::Mapping(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_nodes_carry_their_line_and_column() {
        let node = Node::parse("a:\n  b: [1, two]\n  c: {d: true}\n").unwrap();
        let b = node.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.position.line, 2);
        let NodeValue::Sequence(items) = &b.value else {
            panic!("not a list")
        };
        assert_eq!(items[1].position, Position { line: 2, column: 10 });
        let d = node.deepest(&["a".into(), "c".into(), "d".into()]);
        assert_eq!(d.position.line, 3);
        assert_eq!(
            node.to_json(),
            serde_json::json!({"a": {"b": [1, "two"], "c": {"d": true}}})
        );
        let yes = Node::parse("a: y\nb: on\n").unwrap();
        assert_eq!(yes.to_json(), serde_json::json!({"a": "y", "b": "on"}));
    }

    #[test]
    fn duplicate_keys_are_kept_and_found_at_any_depth() {
        let node = Node::parse("a:\n  b: 1\n  b: 2\nc: [{d: 1, d: 2}]\n").unwrap();
        let found: Vec<_> = node
            .duplicate_keys()
            .into_iter()
            .map(|(path, again, first)| (path.join("."), again.position.line, first.position.line))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.contains(&("a.b".to_string(), 3, 2)), "{found:?}");
        assert!(found.iter().any(|(p, _, _)| p == "c.0.d"), "{found:?}");
    }

    #[test]
    fn deepest_stops_at_the_last_existing_node() {
        let node = Node::parse("a:\n  b: 1\n").unwrap();
        let reached = node.deepest(&["a".into(), "missing".into(), "x".into()]);
        assert_eq!(reached.position.line, 2);
    }
}
