//! The JSON Schema (draft 2020-12) of the config file, for editors and
//! `kube-template schema`. It is derived from the entry types the validator
//! reads each section into, so a field added there shows up here.
//!
//! The schema catches what a single entry shows: unknown keys, wrong types,
//! unknown names, malformed durations, sizes, modes and names, and the
//! either-or fields of a template or an action. What needs the whole file or
//! the disk (overlapping outputs, groups no template names, selectors,
//! index expressions, templates that do not compile) only `check` sees.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde_json::Value;

use super::{
    ActionEntry, ActionsOnStart, AdminSettings, ExecEntry, GroupEntry, RenderSettings, StatusSettings, TemplateEntry,
    WatchedResource,
};

/// A kube-template config: what to watch, how to index it, what to render,
/// and what to run when a file changed.
// Never built: the validator walks the sections itself, to report every
// problem at once. The schema test keeps these fields equal to its sections.
#[derive(JsonSchema)]
#[schemars(title = "kube-template config", deny_unknown_fields)]
#[allow(dead_code)]
struct ConfigFile {
    /// The Kubernetes resources to watch, by name: `resources.<name>` in templates.
    watched_resources: Option<BTreeMap<String, WatchedResource>>,
    /// The templates to render, by name; at least one.
    #[schemars(extend("minProperties" = 1))]
    templates: BTreeMap<String, TemplateEntry>,
    /// Run in order after a render of the default group (the templates
    /// without `group:`) that changed one of its files.
    actions: Option<Vec<ActionEntry>>,
    /// Whether the default group's first render after the start runs its actions.
    actions_on_start: Option<ActionsOnStart>,
    /// Independent sets of templates, each rendered, written and reloaded on its own.
    /// `default` is the name of the templates without `group:`.
    #[schemars(extend("propertyNames" = { "not": { "const": "default" } }))]
    groups: Option<BTreeMap<String, GroupEntry>>,
    /// How exec mode (`run -- CMD`) reloads and stops its command.
    exec: Option<ExecEntry>,
    /// How and when templates are rendered.
    render: Option<RenderSettings>,
    /// The admin HTTP server: metrics, health and readiness.
    admin: Option<AdminSettings>,
    /// A ConfigMap whose annotations carry the last render's result.
    status: Option<StatusSettings>,
}

/// The schema of the config file, as pretty-printed JSON with a final newline.
pub fn json() -> String {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<ConfigFile>();
    let mut schema = schema.to_value();
    humane_defaults(&mut schema);
    sort_keys(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is plain JSON");
    text.push('\n');
    text
}

/// Sorts every object's keys, so that the text is the same whether or not
/// some dependency turns on serde_json's `preserve_order`.
fn sort_keys(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, value) in &mut entries {
                sort_keys(value);
            }
            *map = entries.into_iter().collect();
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// Writes the defaults of duration fields as a config writes them (`30s`):
/// schemars serialises `Duration` as `{secs, nanos}`.
fn humane_defaults(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_duration = map.get("$ref").and_then(Value::as_str) == Some("#/$defs/Duration");
            if is_duration && let Some(default) = map.get_mut("default") {
                let secs = default["secs"].as_u64().unwrap_or_default();
                let nanos = default["nanos"].as_u64().unwrap_or_default() as u32;
                let duration = std::time::Duration::new(secs, nanos);
                *default = Value::String(humantime::format_duration(duration).to_string());
            }
            map.values_mut().for_each(humane_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(humane_defaults),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TOP_LEVEL_KEYS, humane, validate};
    use super::*;

    fn schema() -> Value {
        serde_json::from_str(&json()).unwrap()
    }

    fn matches(pattern: &str, text: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(text)
    }

    #[test]
    fn top_level_properties_are_the_sections_the_validator_reads() {
        let schema = schema();
        let mut properties: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sections = TOP_LEVEL_KEYS.to_vec();
        properties.sort();
        sections.sort();
        assert_eq!(properties, sections);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], serde_json::json!(["templates"]));
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }

    #[test]
    fn doc_comments_become_descriptions() {
        let schema = schema();
        let api_version = &schema["$defs"]["WatchedResource"]["properties"]["api_version"];
        assert!(
            api_version["description"]
                .as_str()
                .unwrap()
                .contains("networking.k8s.io/v1"),
            "{api_version}"
        );
    }

    #[test]
    fn duration_defaults_are_written_as_in_a_config() {
        let schema = schema();
        let check_timeout = &schema["$defs"]["TemplateEntry"]["properties"]["check_timeout"];
        assert_eq!(check_timeout["default"], "30s");
        let wait_min = &schema["$defs"]["Wait"]["properties"]["min"];
        assert_eq!(wait_min["default"], "200ms");
    }

    #[test]
    fn the_duration_pattern_accepts_what_the_parser_accepts() {
        let pattern = humane::duration::pattern();
        for text in ["500ms", "2s", "1m", "1h 30m", "1m30s", "1.5s", " 2 s ", "1day", "3µs"] {
            assert!(humane::duration::parse(text).is_ok(), "{text}");
            assert!(matches(&pattern, text), "{text} against {pattern}");
        }
        for text in ["", "200", "-2s", "5 parsecs", "s", "2 s x", "1.s"] {
            assert!(humane::duration::parse(text).is_err(), "{text}");
            assert!(!matches(&pattern, text), "{text} against {pattern}");
        }
    }

    #[test]
    fn the_size_pattern_accepts_what_the_parser_accepts() {
        let schema = schema();
        let pattern = schema["$defs"]["ByteSize"]["anyOf"][1]["pattern"].as_str().unwrap();
        for text in ["64MiB", "10 KB", "4096", "1B", " 2GiB "] {
            assert!(humane::ByteSize::parse(text).is_ok(), "{text}");
            assert!(matches(pattern, text), "{text} against {pattern}");
        }
        for text in ["12XB", "MiB", "", "-1", "1.5MiB", "64mib"] {
            assert!(humane::ByteSize::parse(text).is_err(), "{text}");
            assert!(!matches(pattern, text), "{text} against {pattern}");
        }
    }

    #[test]
    fn the_percentage_pattern_accepts_what_the_guard_accepts() {
        let schema = schema();
        let pattern = schema["$defs"]["GuardEntry"]["properties"]["max_shrink"]["pattern"]
            .as_str()
            .unwrap();
        let parse = crate::output::Guard::parse_max_shrink;
        for text in ["0%", "50%", "100%", " 7 % ", "050%"] {
            assert!(parse(text).is_some(), "{text}");
            assert!(matches(pattern, text), "{text} against {pattern}");
        }
        for text in ["50", "101%", "-1%", "%", "1.5%", "fifty%"] {
            assert!(parse(text).is_none(), "{text}");
            assert!(!matches(pattern, text), "{text} against {pattern}");
        }
    }

    #[test]
    fn name_patterns_agree_with_the_validator() {
        type Case<'a> = (&'a str, fn(&str) -> bool, &'a [&'a str]);
        let cases: [Case; 5] = [
            (
                validate::DNS_LABEL,
                validate::dns_label,
                &[
                    "default",
                    "a",
                    "kube-system",
                    "",
                    "-a",
                    "a-",
                    "Kube_System",
                    &"a".repeat(64),
                ],
            ),
            (
                validate::DNS_SUBDOMAIN,
                validate::dns_subdomain,
                &["a.b", "web-1", "a..b", ".a", "Kube Template"],
            ),
            (
                validate::API_VERSION,
                validate::api_version_shape,
                &["v1", "apps/v1", "networking.k8s.io/v1", "/v1", "a/b/v1", "1v", "v1/"],
            ),
            (
                validate::KIND,
                validate::kind_shape,
                &["Ingress", "ConfigMap", "Config Map", "1x", ""],
            ),
            (
                validate::LISTEN,
                validate::listen_shape,
                &[
                    "0.0.0.0:9090",
                    "[::]:9090",
                    "localhost:0",
                    "0.0.0.0",
                    ":80",
                    "a:65535",
                    "a:65536",
                    "a:99999",
                ],
            ),
        ];
        for (pattern, shape, texts) in cases {
            for text in texts {
                assert_eq!(matches(pattern, text), shape(text), "`{text}` against {pattern}");
            }
        }
        let status = &schema()["$defs"]["StatusSettings"]["properties"];
        assert_eq!(status["config_map"]["pattern"], validate::DNS_SUBDOMAIN);
        assert_eq!(status["namespace"]["pattern"], validate::DNS_LABEL);
    }
}
