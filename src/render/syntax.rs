//! `syntax:` a template's own delimiters, for outputs that hold `{{ }}`
//! themselves (Grafana dashboards, Prometheus and Alertmanager templates,
//! Helm charts), as a minijinja syntax.

use minijinja::syntax::SyntaxConfig;

/// A start and an end delimiter.
pub type Pair = (String, String);

/// The delimiters a template sets (`syntax:`); the ones it leaves out stay
/// Jinja's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Syntax {
    pub block: Option<Pair>,
    pub variable: Option<Pair>,
    pub comment: Option<Pair>,
}

impl Syntax {
    /// Every delimiter pair, Jinja's where none is set, with its key:
    /// block, variable, comment.
    pub fn all(&self) -> [(&'static str, (&str, &str)); 3] {
        fn or<'a>(pair: &'a Option<Pair>, default: (&'static str, &'static str)) -> (&'a str, &'a str) {
            pair.as_ref().map_or(default, |(s, e)| (s.as_str(), e.as_str()))
        }
        [
            ("block", or(&self.block, ("{%", "%}"))),
            ("variable", or(&self.variable, ("{{", "}}"))),
            ("comment", or(&self.comment, ("{#", "#}"))),
        ]
    }

    /// Why these delimiters cannot work together, naming them; one message
    /// per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let all = self.all();
        for (key, (start, end)) in all {
            if start.trim().is_empty() || end.trim().is_empty() {
                problems.push(format!("`{key}` delimiters must not be empty or blank"));
            }
        }
        // The start decides what a tag is: one start that begins another
        // would read every tag of the other as its own.
        for (i, (a, (start_a, _))) in all.iter().enumerate() {
            for (b, (start_b, _)) in &all[i + 1..] {
                if start_a.trim().is_empty() || start_b.trim().is_empty() {
                    continue;
                }
                if start_a.starts_with(start_b) || start_b.starts_with(start_a) {
                    problems.push(format!(
                        "`{a}` starts with `{start_a}` and `{b}` with `{start_b}`: they collide; give each its own start"
                    ));
                }
            }
        }
        problems
    }
}

/// The minijinja syntax of `syntax`: its delimiters on top of `base`, which
/// keeps its whitespace rules. An error names the delimiters.
pub fn apply(syntax: &Syntax, base: &SyntaxConfig) -> Result<SyntaxConfig, String> {
    if let Some(problem) = syntax.problems().into_iter().next() {
        return Err(problem);
    }
    let [(_, block), (_, variable), (_, comment)] = syntax.all();
    base.to_builder()
        .block_delimiters(block.0.to_string(), block.1.to_string())
        .variable_delimiters(variable.0.to_string(), variable.1.to_string())
        .comment_delimiters(comment.0.to_string(), comment.1.to_string())
        .build()
        .map_err(|e| format!("delimiters {:?}: {e}", syntax.all()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &str, e: &str) -> Option<(String, String)> {
        Some((s.into(), e.into()))
    }

    #[test]
    fn distinct_delimiters_make_a_syntax_and_colliding_ones_do_not() {
        let distinct = Syntax {
            variable: pair("[[", "]]"),
            block: pair("[%", "%]"),
            comment: None,
        };
        assert!(apply(&distinct, &SyntaxConfig::default()).is_ok());
        let colliding = Syntax {
            variable: pair("{%", "%}"),
            ..Syntax::default()
        };
        let error = apply(&colliding, &SyntaxConfig::default()).unwrap_err();
        assert!(error.contains("they collide"), "{error}");
    }
}
