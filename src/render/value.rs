//! Conversion of Kubernetes objects (JSON) into template values, done once when
//! an object is stored so that renders share it without copying.

use minijinja::Value;
use serde_json::Value as Json;

/// Converts a JSON value into a template value.
pub fn from_json(json: Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s),
        Json::Array(items) => Value::from(items.into_iter().map(from_json).collect::<Vec<_>>()),
        Json::Object(map) => Value::from_object(
            map.into_iter()
                .map(|(k, v)| (k, from_json(v)))
                .collect::<std::collections::BTreeMap<String, Value>>(),
        ),
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
        let c = value.get_attr("b").unwrap().get_attr("c").unwrap();
        assert_eq!(c, Value::from(u64::MAX));
    }
}
