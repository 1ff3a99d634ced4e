//! Which stores a template reads, known from its source before any render
//! (DESIGN 2.1): the `resources.NAME` it names, in itself and in the
//! templates it includes, imports or extends. A group is rendered again only
//! when one of those stores changed.
//!
//! Where the answer cannot be known statically — `resources` used other than
//! as `resources.NAME` (`resources[x]`, `resources | items`, `set r =
//! resources`), or a template name computed at render time — the template
//! reads every store, and [`Reads::All`] says why.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use minijinja::Environment;
use regex::Regex;

/// The stores a template reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// These stores (by `watched_resources` name), and no other.
    Stores(BTreeSet<String>),
    /// Every store; why it cannot be narrowed, naming the template file.
    All { why: String },
}

impl Reads {
    /// Both together.
    pub fn union(self, other: Reads) -> Reads {
        match (self, other) {
            (all @ Reads::All { .. }, _) | (_, all @ Reads::All { .. }) => all,
            (Reads::Stores(mut a), Reads::Stores(b)) => {
                a.extend(b);
                Reads::Stores(a)
            }
        }
    }

    /// Whether a change of `store` concerns a reader of these.
    pub fn includes(&self, store: &str) -> bool {
        match self {
            Reads::All { .. } => true,
            Reads::Stores(stores) => stores.contains(store),
        }
    }
}

/// The stores the template `name` of `env` reads, following the templates it
/// names in `include`, `import`, `from` and `extends`; `block` are the
/// environment's statement delimiters (`{%` `%}`, or a template's `syntax:`).
pub fn of(env: &Environment<'_>, name: &str, block: (&str, &str)) -> Reads {
    let tag = Regex::new(&format!(
        r"{}[-+]?\s*(?:include|import|from|extends)\s+(.*?)\s*[-+]?{}",
        regex::escape(block.0),
        regex::escape(block.1)
    ))
    .expect("escaped delimiters make a valid pattern");
    let mut seen = BTreeSet::new();
    let mut pending = vec![name.to_string()];
    let mut reads = Reads::Stores(BTreeSet::new());
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        // A template that does not load fails the render (or is an
        // `ignore missing` include): it reads nothing that could change that.
        let Ok(template) = env.get_template(&name) else {
            continue;
        };
        reads = reads.union(variables(&name, template.undeclared_variables(true)));
        match referenced(&tag, &name, template.source()) {
            Ok(names) => pending.extend(names),
            Err(why) => reads = reads.union(Reads::All { why }),
        }
    }
    reads
}

/// The stores named by the nested variables of one template
/// (`resources.cms.get` reads `cms`).
fn variables(template: &str, nested: impl IntoIterator<Item = String>) -> Reads {
    let mut stores = BTreeSet::new();
    for variable in nested {
        match variable.split('.').collect::<Vec<_>>().as_slice() {
            ["resources"] => {
                return Reads::All {
                    why: format!("{template} uses `resources` other than as `resources.NAME` (e.g. `resources[x]`)"),
                };
            }
            ["resources", store, ..] => {
                stores.insert((*store).to_string());
            }
            _ => {}
        }
    }
    Reads::Stores(stores)
}

/// The names of the templates `source` includes, imports or extends, joined
/// to `parent`'s directory as the environment joins them; an error when one
/// is computed at render time.
fn referenced(tag: &Regex, parent: &str, source: &str) -> Result<Vec<String>, String> {
    static LITERAL: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"^(?:"([^"\\]*)"|'([^'\\]*)')"#).expect("the pattern is valid"));
    let mut names = Vec::new();
    for tag in tag.captures_iter(source) {
        let argument = tag[1].trim();
        // `"a.j2"`, or a list of them: `["a.j2", "b.j2"]`.
        let mut rest = argument.strip_prefix('[').unwrap_or(argument).trim_start();
        let list = argument.starts_with('[');
        loop {
            let Some(literal) = LITERAL.captures(rest) else {
                return Err(format!(
                    "{parent} names a template computed at render time (`{argument}`)"
                ));
            };
            let name = literal.get(1).or(literal.get(2)).map_or("", |m| m.as_str());
            names.push(super::join_path(name, parent));
            rest = rest[literal[0].len()..].trim_start();
            match rest.strip_prefix(',') {
                Some(more) if list => rest = more.trim_start(),
                _ => break,
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(templates: &[(&'static str, &'static str)]) -> Environment<'static> {
        let mut env = Environment::new();
        env.set_path_join_callback(|name, parent| super::super::join_path(name, parent).into());
        for (name, text) in templates {
            env.add_template(name, text).unwrap();
        }
        env
    }

    const JINJA: (&str, &str) = ("{%", "%}");

    fn stores(names: &[&str]) -> Reads {
        Reads::Stores(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn named_stores_are_found_through_includes_imports_and_macros() {
        let env = env(&[
            (
                "t/main.j2",
                "{% import 'macros.j2' as m %}{% for s in resources.services %}{{ m.one(s) }}{% endfor %}{% include \"parts/secrets.j2\" %}",
            ),
            (
                "t/macros.j2",
                "{% macro one(s) %}{{ resources.endpoints.get(s.name) }}{% endmacro %}",
            ),
            ("t/parts/secrets.j2", "{{ resources.secrets | length }}"),
        ]);
        assert_eq!(
            of(&env, "t/main.j2", JINJA),
            stores(&["endpoints", "secrets", "services"])
        );
    }

    #[test]
    fn a_template_without_resources_reads_no_store() {
        let env = env(&[("a.j2", "static {{ 1 + 1 }}")]);
        assert_eq!(of(&env, "a.j2", JINJA), stores(&[]));
    }

    #[test]
    fn resources_by_subscript_or_as_a_whole_reads_every_store() {
        for text in [
            "{{ resources[name] }}",
            "{% for n, s in resources | items %}{% endfor %}",
            "{% set r = resources %}{{ r.cms }}",
        ] {
            let env = env(&[("a.j2", text)]);
            let Reads::All { why } = of(&env, "a.j2", JINJA) else {
                panic!("{text} read only some stores")
            };
            assert!(why.starts_with("a.j2 uses `resources`"), "{why}");
        }
    }

    #[test]
    fn a_computed_include_reads_every_store() {
        let env = env(&[("a.j2", "{{ resources.cms }}{% include name ~ '.j2' %}")]);
        assert_eq!(
            of(&env, "a.j2", JINJA),
            Reads::All {
                why: "a.j2 names a template computed at render time (`name ~ '.j2'`)".into()
            }
        );
    }

    #[test]
    fn includes_are_found_with_the_templates_own_block_delimiters() {
        let mut env = env(&[]);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .block_delimiters("[%", "%]")
                .build()
                .unwrap(),
        );
        env.add_template("a.j2", "{% include 'x.j2' %}[% include 'b.j2' %]")
            .unwrap();
        env.add_template("b.j2", "{{ resources.cms }}").unwrap();
        assert_eq!(of(&env, "a.j2", ("[%", "%]")), stores(&["cms"]));
    }

    #[test]
    fn a_list_of_includes_and_a_cycle_are_followed_once() {
        let env = env(&[
            ("a.j2", "{% include ['b.j2', 'c.j2'] ignore missing %}"),
            ("b.j2", "{{ resources.b }}{% if false %}{% include 'a.j2' %}{% endif %}"),
            ("c.j2", "{% from 'a.j2' import x %}{{ resources.c }}"),
        ]);
        assert_eq!(of(&env, "a.j2", JINJA), stores(&["b", "c"]));
    }
}
