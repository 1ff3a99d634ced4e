//! `syntax:` a template's own delimiters, for outputs that hold `{{ }}`
//! themselves (Grafana dashboards, Prometheus and Alertmanager templates,
//! Helm charts).

use minijinja::syntax::SyntaxConfig;

/// A start and an end delimiter.
pub type Pair = (String, String);

/// The delimiters a template sets; the ones it leaves out stay Jinja's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Syntax {
    pub block: Option<Pair>,
    pub variable: Option<Pair>,
    pub comment: Option<Pair>,
}

impl Syntax {
    /// Every delimiter, Jinja's where none is set, with its key.
    fn all(&self) -> [(&'static str, (&str, &str)); 3] {
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
                if start_a.is_empty() || start_b.is_empty() {
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

    /// The minijinja syntax: these delimiters on top of `base` (which keeps
    /// its whitespace rules).
    pub fn apply(&self, base: &SyntaxConfig) -> Result<SyntaxConfig, String> {
        if let Some(problem) = self.problems().into_iter().next() {
            return Err(problem);
        }
        let [(_, block), (_, variable), (_, comment)] = self.all();
        base.to_builder()
            .block_delimiters(block.0.to_string(), block.1.to_string())
            .variable_delimiters(variable.0.to_string(), variable.1.to_string())
            .comment_delimiters(comment.0.to_string(), comment.1.to_string())
            .build()
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &str, e: &str) -> Option<Pair> {
        Some((s.into(), e.into()))
    }

    #[test]
    fn distinct_delimiters_have_no_problems() {
        let syntax = Syntax {
            variable: pair("[[", "]]"),
            block: pair("[%", "%]"),
            comment: None,
        };
        assert!(syntax.problems().is_empty());
        assert!(syntax.apply(&SyntaxConfig::default()).is_ok());
    }

    #[test]
    fn colliding_and_empty_delimiters_are_named() {
        let same = Syntax {
            variable: pair("{%", "%}"),
            ..Syntax::default()
        };
        assert_eq!(
            same.problems(),
            ["`block` starts with `{%` and `variable` with `{%`: they collide; give each its own start"]
        );
        let prefix = Syntax {
            variable: pair("[", "]"),
            block: pair("[%", "%]"),
            ..Syntax::default()
        };
        assert_eq!(prefix.problems().len(), 1, "{:?}", prefix.problems());
        let empty = Syntax {
            comment: pair("", "#]"),
            ..Syntax::default()
        };
        assert_eq!(empty.problems(), ["`comment` delimiters must not be empty or blank"]);
        assert!(empty.apply(&SyntaxConfig::default()).is_err());
    }
}
