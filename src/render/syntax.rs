//! `syntax:` a template's own delimiters, for outputs that hold `{{ }}`
//! themselves (Grafana dashboards, Prometheus and Alertmanager templates,
//! Helm charts), as a minijinja syntax.

use minijinja::syntax::SyntaxConfig;

use crate::config::Syntax;

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
