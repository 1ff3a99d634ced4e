use std::path::Path;

use serde_json::{Value as Json, json};

use super::*;
use crate::config::Config;
use crate::pipeline;

fn setup(templates: &str, objects: &[Json]) -> (Renderer, StoresSnapshot) {
    let text = format!(
        "watched_resources:\n  cms:\n    api_version: v1\n    kind: ConfigMap\n    index_by: [\"metadata.labels.app\"]\ntemplates:\n{templates}"
    );
    let config = Config::parse(&text, Path::new("config.yaml"), Path::new(".")).unwrap();
    let renderer = pipeline::renderer(&config).unwrap();
    let stores = pipeline::stores_from(&config, objects);
    (renderer, pipeline::snapshot(&stores))
}

fn cm(name: &str, app: &str) -> Json {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "ns", "name": name, "labels": {"app": app}}, "data": {"v": "<&>"}})
}

fn single(template: &str, objects: &[Json]) -> Result<String, String> {
    let yaml = serde_json::to_string(template).unwrap();
    let (renderer, snapshot) = setup(&format!("  t:\n    inline: {yaml}\n    path: t.txt\n"), objects);
    match renderer.render_all(&snapshot) {
        Ok(mut rendered) => match rendered.remove(0).content {
            Content::File(bytes) => Ok(String::from_utf8(bytes).unwrap()),
            Content::Directory(_) => unreachable!(),
        },
        Err(errors) => Err(errors[0].to_string()),
    }
}

#[test]
fn the_same_objects_in_any_order_render_the_same_bytes() {
    let objects: Vec<Json> = (0..40)
        .map(|i| cm(&format!("n{i:02}"), ["a", "b", "c"][i % 3]))
        .collect();
    let template = "{% for c in resources.cms %}{{ c.metadata.name }} {{ c.metadata.labels.app }}\n{% endfor %}";
    let expected = single(template, &objects).unwrap();
    let mut shuffled = objects.clone();
    for seed in 1..20usize {
        // A deterministic shuffle: rotate and interleave by a different stride each time.
        let len = shuffled.len();
        shuffled.rotate_left(seed % len);
        let stride = 1 + seed % 7;
        let mut reordered: Vec<Json> = (0..stride)
            .flat_map(|s| shuffled.iter().skip(s).step_by(stride).cloned())
            .collect();
        std::mem::swap(&mut shuffled, &mut reordered);
        assert_eq!(single(template, &shuffled).unwrap(), expected, "order {seed}");
    }
    assert!(expected.starts_with("n00 a\nn03 a\n"), "{expected}");
}

#[test]
fn the_final_newline_is_kept_and_nothing_is_escaped() {
    assert_eq!(
        single("{{ resources.cms[0].data.v }}\n", &[cm("x", "a")]).unwrap(),
        "<&>\n"
    );
    assert_eq!(single("no newline", &[]).unwrap(), "no newline");
}

#[test]
fn undefined_is_an_error_but_defined_tests_and_default_work() {
    let objects = [cm("x", "a")];
    let err = single("{{ resources.cms[0].data.missing }}", &objects).unwrap_err();
    assert!(err.contains("undefined"), "{err}");
    let ok = single(
        "{{ resources.cms[0].data.missing is defined }} {{ resources.cms[0].data.missing | default('d') }}",
        &objects,
    );
    assert_eq!(ok.unwrap(), "False d");
    let err = single("{{ nothing_at_all }}", &objects).unwrap_err();
    assert!(err.contains("templates.t.inline line 1"), "{err}");
}

#[test]
fn get_with_a_non_scalar_key_names_the_store() {
    let err = single("{{ resources.cms.get([1]) }}", &[]).unwrap_err();
    assert!(err.contains("resources.cms.get(): key value 1 is"), "{err}");
}

#[test]
fn iterating_the_resources_mapping_lists_store_names() {
    assert_eq!(
        single("{% for name in resources %}{{ name }}{% endfor %}", &[]).unwrap(),
        "cms"
    );
}

#[test]
fn a_render_reads_only_its_snapshot() {
    let text = "watched_resources:\n  cms:\n    api_version: v1\n    kind: ConfigMap\ntemplates:\n  t:\n    inline: \"{{ resources.cms | length }}\"\n    path: t.txt\n";
    let config = Config::parse(text, Path::new("c.yaml"), Path::new(".")).unwrap();
    let renderer = pipeline::renderer(&config).unwrap();
    let mut stores = pipeline::stores_from(&config, &[cm("a", "x")]);
    let before = pipeline::snapshot(&stores);
    stores.get_mut("cms").unwrap().apply(cm("b", "x").into());
    let rendered = renderer.render_all(&before).unwrap();
    assert_eq!(rendered[0].content, Content::File(b"1".to_vec()));
}

#[test]
fn many_templates_render_in_their_order_and_each_error_names_its_template() {
    let mut templates = String::new();
    for i in 0..12 {
        let body = if i % 5 == 3 {
            "{{ missing_name }}".to_string()
        } else {
            format!("{i}:{{{{ resources.cms|length }}}}")
        };
        templates.push_str(&format!("  t{i:02}:\n    inline: \"{body}\"\n    path: t{i:02}.txt\n"));
    }
    let (renderer, snapshot) = setup(&templates, &[cm("x", "a"), cm("y", "b")]);
    let errors = renderer.render_all(&snapshot).unwrap_err();
    let failed: Vec<&str> = errors.iter().map(|e| e.template.as_str()).collect();
    assert_eq!(failed, ["t03", "t08"]);

    let good: String = (0..12).filter(|i| i % 5 != 3).fold(String::new(), |mut text, i| {
        text.push_str(&format!(
            "  t{i:02}:\n    inline: \"{i}:{{{{ resources.cms|length }}}}\"\n    path: t{i:02}.txt\n"
        ));
        text
    });
    let (renderer, snapshot) = setup(&good, &[cm("x", "a"), cm("y", "b")]);
    let rendered = renderer.render_all(&snapshot).unwrap();
    let texts: Vec<String> = rendered
        .iter()
        .map(|r| match &r.content {
            Content::File(bytes) => format!("{}={}", r.template, String::from_utf8_lossy(bytes)),
            Content::Directory(_) => unreachable!(),
        })
        .collect();
    let expected: Vec<String> = (0..12)
        .filter(|i| i % 5 != 3)
        .map(|i| format!("t{i:02}={i}:2"))
        .collect();
    assert_eq!(texts, expected);
}

#[test]
fn output_larger_than_a_chunk_arrives_whole_and_the_limit_still_holds() {
    let objects: Vec<Json> = (0..9000).map(|i| cm(&format!("n{i:04}"), "a")).collect();
    let template = "{% for c in resources.cms %}{{ c.metadata.name }} {{ c.data.v }}\n{% endfor %}";
    let text = single(template, &objects).unwrap();
    let expected: String = (0..9000).map(|i| format!("n{i:04} <&>\n")).collect();
    assert_eq!(text, expected);

    let yaml = serde_json::to_string(template).unwrap();
    let limited = format!("  t:\n    inline: {yaml}\n    path: t.txt\nrender:\n  max_output_bytes: 80000\n");
    let (renderer, snapshot) = setup(&limited, &objects);
    let errors = renderer.render_all(&snapshot).unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .contains("larger than render.max_output_bytes (80000 bytes)"),
        "{}",
        errors[0]
    );
}

#[test]
fn strings_print_as_they_are_unless_a_block_turns_escaping_on() {
    let objects = [cm("x", "a")];
    assert_eq!(
        single(
            "{{ resources.cms[0].data.v }} {% autoescape true %}{{ resources.cms[0].data.v }}{% endautoescape %} {{ 1.5 }} {{ none }}",
            &objects
        )
        .unwrap(),
        "<&> &lt;&amp;&gt; 1.5 None"
    );
}

#[test]
fn a_mapping_read_by_several_keys_gives_each_its_own_value() {
    let objects = [cm("x", "a")];
    let template = "{% set c = resources.cms[0] %}{{ c.metadata.name }} {{ c.data.v }} {{ c.metadata.labels.app }} {{ c.data | length }} {{ c.metadata.namespace }}";
    assert_eq!(single(template, &objects).unwrap(), "x <&> a 1 ns");
}

#[test]
fn entries_sharing_a_watch_each_leave_out_their_own_ignore_fields() {
    // One watch feeds both: it omits what both ignore (managedFields), and
    // each store still prunes what only it ignores.
    let text = "watched_resources:
  a: {api_version: v1, kind: ConfigMap, ignore_fields: [metadata.managedFields, metadata.annotations]}
  b: {api_version: v1, kind: ConfigMap, ignore_fields: [metadata.managedFields, data]}
templates:
  t:
    inline: \"{% for s in ['a', 'b'] %}{% for o in resources[s] %}{{ s }}: {{ o.metadata | list | join(',') }} {{ 'data' in o }}\\n{% endfor %}{% endfor %}\"
    path: t.txt
";
    let config = Config::parse(text, Path::new("config.yaml"), Path::new(".")).unwrap();
    let object = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "ns", "name": "x", "annotations": {"k": "v"}, "managedFields": [{"manager": "m"}]},
        "data": {"v": "1"}
    });
    let stores = pipeline::stores_from(&config, &[object]);
    let renderer = pipeline::renderer(&config).unwrap();
    let rendered = renderer.render_all(&pipeline::snapshot(&stores)).unwrap();
    let Content::File(bytes) = &rendered[0].content else {
        unreachable!()
    };
    assert_eq!(
        String::from_utf8_lossy(bytes),
        "a: name,namespace True\nb: annotations,name,namespace False\n"
    );
}
