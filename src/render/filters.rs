//! Filters beyond minijinja's built-ins (DESIGN section 4).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use sha2::{Digest, Sha256};

/// Registers every kube-template filter on `env`.
pub fn register(env: &mut Environment<'static>) {
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("sha256", sha256);
    env.add_filter("to_yaml", to_yaml);
    env.add_filter("dig", dig);
    env.add_filter("glob_match", glob_match);
    let regexes = RegexCache::default();
    let cache = regexes.clone();
    env.add_filter("regex_replace", move |value: &str, pattern: &str, replacement: &str| {
        let re = cache.get(pattern)?;
        Ok::<_, Error>(re.replace_all(value, replacement).into_owned())
    });
    env.add_filter("regex_search", move |value: &str, pattern: &str| {
        let re = regexes.get(pattern)?;
        Ok::<_, Error>(re.find(value).map_or(Value::from(()), |m| Value::from(m.as_str())))
    });
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// The bytes of a string or bytes value.
fn bytes_of(value: &Value, filter: &str) -> Result<Vec<u8>, Error> {
    if let Some(s) = value.as_str() {
        Ok(s.as_bytes().to_vec())
    } else if let Some(b) = value.as_bytes() {
        Ok(b.to_vec())
    } else {
        Err(invalid(format!(
            "{filter} expects a string or bytes, got {}",
            value.kind()
        )))
    }
}

fn b64encode(value: Value) -> Result<String, Error> {
    Ok(STANDARD.encode(bytes_of(&value, "b64encode")?))
}

/// Decodes base64 (as in a Secret's `data`): a string when the bytes are
/// UTF-8, bytes otherwise (which `file()` writes as they are).
fn b64decode(value: &str) -> Result<Value, Error> {
    let cleaned: String = value.split_whitespace().collect();
    let bytes = STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| invalid(format!("b64decode: not valid base64 ({e})")))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Value::from(text),
        Err(e) => Value::from_bytes(e.into_bytes()),
    })
}

fn sha256(value: Value) -> Result<String, Error> {
    let digest = Sha256::digest(bytes_of(&value, "sha256")?);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn to_yaml(value: Value) -> Result<String, Error> {
    serde_saphyr::to_string(&value).map_err(|e| invalid(format!("to_yaml: {e}")))
}

/// `obj | dig('a', 'b', 0)`: nested lookup that is `none` as soon as a step is
/// missing.
fn dig(value: Value, path: minijinja::value::Rest<Value>) -> Result<Value, Error> {
    let mut current = value;
    for step in path.iter() {
        if current.is_undefined() || current.is_none() {
            return Ok(Value::from(()));
        }
        let next = match current.kind() {
            ValueKind::Map | ValueKind::Seq | ValueKind::Iterable | ValueKind::Plain => {
                current.get_item(step).unwrap_or(Value::UNDEFINED)
            }
            _ => Value::UNDEFINED,
        };
        current = next;
    }
    Ok(if current.is_undefined() {
        Value::from(())
    } else {
        current
    })
}

fn glob_match(value: &str, pattern: &str) -> Result<bool, Error> {
    let pattern =
        glob::Pattern::new(pattern).map_err(|e| invalid(format!("glob_match: bad pattern `{pattern}` ({e})")))?;
    Ok(pattern.matches(value))
}

/// Compiled regexes by pattern, so a filter in a loop over 10k objects
/// compiles its pattern once.
#[derive(Clone, Default)]
struct RegexCache(Arc<Mutex<HashMap<String, regex::Regex>>>);

impl RegexCache {
    const LIMIT: usize = 256;

    fn get(&self, pattern: &str) -> Result<regex::Regex, Error> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(re) = cache.get(pattern) {
            return Ok(re.clone());
        }
        let re = regex::Regex::new(pattern).map_err(|e| invalid(format!("bad regular expression `{pattern}`: {e}")))?;
        if cache.len() >= Self::LIMIT {
            cache.clear();
        }
        cache.insert(pattern.to_string(), re.clone());
        Ok(re)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str) -> Result<String, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        register(&mut env);
        let obj = crate::render::value::from_json(
            serde_json::json!({"a": {"b": [10, {"c": "deep"}]}, "s": "web-01.example.com"}),
        );
        env.render_str(source, minijinja::context! { o => obj })
    }

    #[test]
    fn base64_round_trips_and_binary_stays_bytes() {
        assert_eq!(render("{{ 'hello' | b64encode }}").unwrap(), "aGVsbG8=");
        assert_eq!(render("{{ 'aGVsbG8=' | b64decode }}").unwrap(), "hello");
        let mut env = Environment::new();
        register(&mut env);
        let v = env.compile_expression("'/w==' | b64decode").unwrap().eval(()).unwrap();
        assert_eq!(v.as_bytes(), Some(&[0xff][..]));
        assert!(
            render("{{ '***' | b64decode }}")
                .unwrap_err()
                .to_string()
                .contains("base64")
        );
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            render("{{ 'abc' | sha256 }}").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn dig_returns_none_for_any_missing_step() {
        assert_eq!(render("{{ o | dig('a', 'b', 1, 'c') }}").unwrap(), "deep");
        assert_eq!(render("{{ o | dig('a', 'x', 'y') is none }}").unwrap(), "True");
        assert_eq!(render("{{ o | dig('a', 'b', 7) is none }}").unwrap(), "True");
        assert_eq!(render("{{ o | dig('s', 'x') is none }}").unwrap(), "True");
    }

    #[test]
    fn regex_and_glob_filters() {
        assert_eq!(
            render(r"{{ o.s | regex_replace('\\.example\\.com$', '') }}").unwrap(),
            "web-01"
        );
        assert_eq!(render(r"{{ o.s | regex_search('[0-9]+') }}").unwrap(), "01");
        assert_eq!(render(r"{{ o.s | regex_search('zzz') is none }}").unwrap(), "True");
        assert_eq!(render("{{ o.s | glob_match('web-*.com') }}").unwrap(), "True");
        assert!(
            render("{{ o.s | regex_search('(') }}")
                .unwrap_err()
                .to_string()
                .contains("regular expression")
        );
    }

    #[test]
    fn to_yaml_and_tojson_serialize_objects() {
        assert_eq!(render("{{ {'k': [1, 2]} | to_yaml }}").unwrap(), "k:\n- 1\n- 2\n");
        assert_eq!(render("{{ o.a.b | tojson }}").unwrap(), r#"[10, {"c": "deep"}]"#);
    }
}
