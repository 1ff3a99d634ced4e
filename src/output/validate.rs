//! `validate:` a template's output must parse as JSON, YAML or TOML before it
//! replaces the old one — a check that needs no external program, for
//! images that have none.

/// A format rendered outputs are parsed as (`validate:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateFormat {
    Json,
    Yaml,
    Toml,
}

impl ValidateFormat {
    /// The names a config may write.
    pub const NAMES: &'static [&'static str] = &["json", "yaml", "toml"];

    /// The format a config names; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<ValidateFormat> {
        match name {
            "json" => Some(ValidateFormat::Json),
            "yaml" => Some(ValidateFormat::Yaml),
            "toml" => Some(ValidateFormat::Toml),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValidateFormat::Json => "json",
            ValidateFormat::Yaml => "yaml",
            ValidateFormat::Toml => "toml",
        }
    }
}

/// Why rendered bytes are not valid in their format: the parser's own
/// words, with the line and column it gives. Never the content itself, which
/// may hold Secret values.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Error {
    pub reason: String,
}

/// Parses `content` as `format` (YAML: every document of a stream).
pub fn check(format: ValidateFormat, content: &[u8]) -> Result<(), Error> {
    let text = std::str::from_utf8(content).map_err(|e| Error {
        reason: format!("not UTF-8 text: {e}"),
    })?;
    let reason = match format {
        ValidateFormat::Json => serde_json::from_str::<serde::de::IgnoredAny>(text)
            .err()
            .map(|e| e.to_string()),
        ValidateFormat::Yaml => serde_saphyr::from_multiple::<serde::de::IgnoredAny>(text)
            .err()
            .map(|e| e.to_string()),
        ValidateFormat::Toml => toml_edit::Document::parse(text).err().map(|e| e.to_string()),
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error {
            reason: first_line(&reason),
        }),
    }
}

/// Parsers quote the offending line on the lines after the message; that
/// line may hold a Secret value.
fn first_line(reason: &str) -> String {
    reason
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(reason)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_outputs_pass_in_each_format() {
        check(ValidateFormat::Json, br#"{"a": [1, 2, {"b": null}]}"#).unwrap();
        check(
            ValidateFormat::Yaml,
            b"apiVersion: 1\ndatasources:\n  - name: x\n---\nsecond: doc\n",
        )
        .unwrap();
        check(ValidateFormat::Yaml, b"").unwrap();
        check(ValidateFormat::Toml, b"[server]\nport = 8080\nhosts = [\"a\", \"b\"]\n").unwrap();
    }

    #[test]
    fn invalid_outputs_fail_with_the_parsers_position() {
        let json = check(ValidateFormat::Json, b"{\"a\": 1,\n}").unwrap_err().to_string();
        assert!(json.contains("line 2"), "{json}");
        let yaml = check(ValidateFormat::Yaml, b"a: 1\nb: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(yaml.contains("line"), "{yaml}");
        let toml = check(ValidateFormat::Toml, b"a = 1\na = 2\n").unwrap_err().to_string();
        assert!(!toml.is_empty(), "{toml}");
        assert!(check(ValidateFormat::Toml, b"key = \n").is_err());
    }

    #[test]
    fn a_failure_does_not_quote_the_content() {
        let secret = b"password: [s3cr3t-value\n";
        let error = check(ValidateFormat::Yaml, secret).unwrap_err().to_string();
        assert!(!error.contains("s3cr3t"), "{error}");
        let toml = check(ValidateFormat::Toml, b"password = s3cr3t-value\n")
            .unwrap_err()
            .to_string();
        assert!(!toml.contains("s3cr3t"), "{toml}");
    }
}
