//! `templates`: what to render, and where each output goes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

use crate::output::{Guard, OutputTarget, Owner, Template, ValidateFormat};
use crate::render::{Syntax, TemplateSource};

use super::humane::{self, DurationText};
use super::validate::Validator;

/// A `templates` entry as the user writes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("allOf" = [
    { "oneOf": [{ "required": ["source"] }, { "required": ["inline"] }] },
    { "oneOf": [{ "required": ["path"] }, { "required": ["directory"] }] },
]))]
pub struct TemplateEntry {
    /// Template file, relative to the config file.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Template text given in the config itself.
    #[serde(default)]
    pub inline: Option<String>,
    /// Single-file output.
    #[serde(default)]
    // Not blank, and not ending with `/` (a directory).
    #[schemars(pattern(r"^(.*\S.*[^/]|\s*[^\s/])$"))]
    pub path: Option<PathBuf>,
    /// Directory output: the files the template emits with `file(name, content)`.
    #[serde(default)]
    #[schemars(pattern(r"\S"))]
    pub directory: Option<PathBuf>,
    /// File mode of written files, octal (`"0644"`).
    #[serde(default, deserialize_with = "mode_text")]
    #[schemars(with = "Option<ModeText>")]
    pub mode: Option<String>,
    /// fsync each staged file and the directory before renaming (durable writes).
    #[serde(default)]
    pub fsync: bool,
    /// Command that validates a staged file; `{file}` is replaced by its path.
    #[serde(default)]
    #[schemars(extend("prefixItems" = [{ "type": "string", "pattern": "\\S" }]))]
    pub check: Vec<String>,
    /// How long `check` may run.
    #[serde(
        default = "default_check_timeout",
        deserialize_with = "humane::duration::deserialize"
    )]
    #[schemars(with = "DurationText")]
    pub check_timeout: Duration,
    /// The `groups` entry it belongs to; none: the default group.
    #[serde(default)]
    pub group: Option<String>,
    /// Parse the output (each file of a directory output) as `json`, `yaml`
    /// or `toml` before it replaces the old one; `none` (the default) does not.
    #[serde(default)]
    #[schemars(with = "Option<ValidateName>")]
    pub validate: Option<String>,
    /// Numeric `UID:GID` of the written files and of the directories created
    /// for them.
    #[serde(default, deserialize_with = "owner_text")]
    #[schemars(pattern(r"^[0-9]+:[0-9]+$"))]
    pub owner: Option<String>,
    /// Delimiters of this template's own, for outputs that hold `{{ }}`.
    #[serde(default)]
    pub syntax: Option<SyntaxEntry>,
    /// Refuse a render that would lose more than `max_shrink` of the output
    /// at once (DESIGN 5.10).
    #[serde(default)]
    pub guard: Option<GuardEntry>,
}

/// `guard:` as the user writes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardEntry {
    /// The largest loss written at once, `N%` of the old bytes (a file) or
    /// files (a directory).
    #[serde(deserialize_with = "percent_text")]
    // What `Guard::parse_max_shrink` reads: a whole 0 to 100, then `%`.
    #[schemars(pattern(r"^\s*0*([0-9]|[1-9][0-9]|100)\s*%\s*$"))]
    pub max_shrink: String,
    /// How long a refused shrink must last to be written anyway.
    #[serde(default = "default_hold", deserialize_with = "humane::duration::deserialize")]
    #[schemars(with = "DurationText")]
    pub hold: Duration,
}

/// A percentage is `N%` text; a bare number is kept as written, for the
/// validation to name.
fn percent_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(D::Error::custom(format!(
            "bad max_shrink {other}: expected a percentage such as \"50%\""
        ))),
    }
}

fn default_hold() -> Duration {
    Duration::from_secs(600)
}

/// `syntax:` as the user writes it: each a `[start, end]` pair.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyntaxEntry {
    /// Statement delimiters; Jinja's `{%` `%}` when absent.
    #[serde(default)]
    #[schemars(length(equal = 2))]
    pub block: Option<Vec<String>>,
    /// Expression delimiters; Jinja's `{{` `}}` when absent.
    #[serde(default)]
    #[schemars(length(equal = 2))]
    pub variable: Option<Vec<String>>,
    /// Comment delimiters; Jinja's `{#` `#}` when absent.
    #[serde(default)]
    #[schemars(length(equal = 2))]
    pub comment: Option<Vec<String>>,
}

/// An owner is `UID:GID` text; a bare number (`owner: 99`) is kept as
/// written, for the validation to name.
fn owner_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Ok(Some(text)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        serde_json::Value::Null => Ok(None),
        other => Err(D::Error::custom(format!(
            "bad owner {other}: expected numeric \"UID:GID\" in quotes, e.g. \"101:101\""
        ))),
    }
}

/// A file mode is written as a quoted string: unquoted, YAML reads `0644` as
/// the decimal number 644.
fn mode_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => Ok(Some(text)),
        serde_json::Value::Null => Ok(None),
        // YAML may read `0644` as a float; show it as written.
        serde_json::Value::Number(n) => Err(D::Error::custom(format!(
            "bad file mode {}: quote it, e.g. \"0644\" (unquoted, YAML reads 0644 as the decimal number 644)",
            n.as_f64()
                .filter(|f| f.fract() == 0.0)
                .map_or(n.to_string(), |f| format!("{f:.0}"))
        ))),
        other => Err(D::Error::custom(format!(
            "bad file mode {other}: expected octal in quotes such as \"0644\""
        ))),
    }
}

/// The schema of `mode`: octal text up to `7777`, quoted.
struct ModeText;

impl JsonSchema for ModeText {
    fn schema_name() -> Cow<'static, str> {
        "FileMode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An octal file mode in quotes, e.g. \"0644\" (unquoted, YAML reads 0644 as the decimal number 644).",
            "type": "string",
            "pattern": "^(0o)?0*[0-7]{1,4}$",
            "examples": ["0644", "0600"],
        })
    }
}

/// The schema of `validate`: `none` or a format name.
struct ValidateName;

impl JsonSchema for ValidateName {
    fn schema_name() -> Cow<'static, str> {
        "ValidateFormat".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = std::iter::once("none")
            .chain(ValidateFormat::NAMES.iter().copied())
            .collect();
        json_schema!({ "type": "string", "enum": names })
    }
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Validator<'_> {
    /// The `templates` section: each valid entry by name, outputs checked
    /// against each other and against the inputs.
    pub(super) fn templates(&mut self, file: &Path, base_dir: &Path) -> BTreeMap<String, Template> {
        let mut templates = BTreeMap::new();
        let entries = self.named_entries("templates");
        if entries.is_empty() && !self.issues.iter().any(|i| i.path.starts_with("templates")) {
            self.issue(&["templates".into()], "at least one template is required");
        }
        for (name, entry) in entries {
            let path = vec!["templates".to_string(), name.clone()];
            if let Some(spec) = self.typed::<TemplateEntry>(&path, &entry, &["syntax", "guard"])
                && let Some(template) = self.template(&path, name.clone(), spec, base_dir)
            {
                templates.insert(name, template);
            }
        }
        self.outputs_do_not_overlap(&templates);
        self.outputs_spare_inputs(file, &templates);
        templates
    }

    fn template(&mut self, path: &[String], name: String, spec: TemplateEntry, base_dir: &Path) -> Option<Template> {
        let before = self.issues.len();
        let source = match (&spec.source, &spec.inline) {
            (Some(file), None) => Some(TemplateSource::File {
                name: file.to_string_lossy().replace('\\', "/"),
                path: base_dir.join(file),
            }),
            (None, Some(text)) => Some(TemplateSource::Inline {
                name: format!("templates.{name}.inline"),
                text: text.clone(),
            }),
            (Some(_), Some(_)) => {
                self.issue(path, "has both `source` and `inline`; give one");
                None
            }
            (None, None) => {
                self.issue(path, "needs `source` (a template file) or `inline` (template text)");
                None
            }
        };
        let output = match (&spec.path, &spec.directory) {
            (Some(file), None) => Some(OutputTarget::File {
                path: base_dir.join(file),
                written: file.clone(),
            }),
            (None, Some(dir)) => Some(OutputTarget::Directory {
                path: base_dir.join(dir),
                written: dir.clone(),
            }),
            (Some(_), Some(_)) => {
                self.issue(path, "has both `path` and `directory`; give one");
                None
            }
            (None, None) => {
                self.issue(
                    path,
                    "needs `path` (one output file) or `directory` (files emitted with file())",
                );
                None
            }
        };
        if let Some(file) = &spec.path {
            let at = [path, &["path".to_string()]].concat();
            let text = file.to_string_lossy();
            if text.trim().is_empty() {
                self.issue(&at, "must not be empty");
            } else if text.ends_with('/') {
                self.issue(
                    &at,
                    format!(
                        "`{text}` names a directory: give a file name, or use `directory` for files emitted with file()"
                    ),
                );
            }
        }
        if let Some(dir) = &spec.directory
            && dir.to_string_lossy().trim().is_empty()
        {
            self.issue(&[path, &["directory".to_string()]].concat(), "must not be empty");
        }
        let mode = match &spec.mode {
            None => Some(0o644),
            Some(text) => match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
                Ok(mode) if mode <= 0o7777 => Some(mode),
                _ => {
                    let at = [path, &["mode".to_string()]].concat();
                    self.issue(&at, format!("bad file mode `{text}`: expected octal such as \"0644\""));
                    None
                }
            },
        };
        if let Some(first) = spec.check.first()
            && first.trim().is_empty()
        {
            self.issue(&[path, &["check".to_string()]].concat(), "the command is empty");
        }
        let validate = match spec.validate.as_deref() {
            None | Some("none") => None,
            Some(name) => {
                let format = ValidateFormat::parse(name);
                if format.is_none() {
                    self.issue(
                        &[path, &["validate".to_string()]].concat(),
                        format!(
                            "unknown format `{name}`: expected none, {}",
                            ValidateFormat::NAMES.join(", ")
                        ),
                    );
                }
                format
            }
        };
        let owner = spec.owner.as_deref().and_then(|text| {
            let owner = Owner::parse(text);
            if owner.is_none() {
                self.issue(
                    &[path, &["owner".to_string()]].concat(),
                    format!("`{text}` is not a numeric \"UID:GID\" such as \"101:101\" (names cannot be looked up in images without a user database)"),
                );
            }
            owner
        });
        let syntax = spec.syntax.as_ref().and_then(|entry| self.syntax(path, entry));
        let guard = spec.guard.as_ref().and_then(|entry| {
            let max_shrink = Guard::parse_max_shrink(&entry.max_shrink);
            if max_shrink.is_none() {
                self.issue(
                    &[path, &["guard".to_string(), "max_shrink".to_string()]].concat(),
                    format!(
                        "`{}` is not a percentage: expected N% with N a whole number from 0 to 100, e.g. \"50%\"",
                        entry.max_shrink
                    ),
                );
            }
            Some(Guard {
                max_shrink: max_shrink?,
                hold: entry.hold,
            })
        });
        if self.issues.len() > before {
            return None;
        }
        Some(Template {
            name,
            source: source?,
            output: output?,
            mode: mode?,
            fsync: spec.fsync,
            check: spec.check,
            check_timeout: spec.check_timeout,
            group: spec.group,
            validate,
            owner,
            syntax,
            guard,
        })
    }

    /// `syntax:`, each key a `[start, end]` pair, the three not colliding.
    fn syntax(&mut self, path: &[String], entry: &SyntaxEntry) -> Option<Syntax> {
        let before = self.issues.len();
        let mut pair = |key: &str, given: &Option<Vec<String>>| match given.as_deref() {
            None => None,
            Some([start, end]) => Some((start.clone(), end.clone())),
            Some(other) => {
                let at = [path, &["syntax".to_string(), key.to_string()]].concat();
                self.issue(
                    &at,
                    format!("expected a pair [start, end], found {} item(s)", other.len()),
                );
                None
            }
        };
        let syntax = Syntax {
            block: pair("block", &entry.block),
            variable: pair("variable", &entry.variable),
            comment: pair("comment", &entry.comment),
        };
        for problem in syntax.problems() {
            self.issue(&[path, &["syntax".to_string()]].concat(), problem);
        }
        (self.issues.len() == before).then_some(syntax)
    }

    fn outputs_do_not_overlap(&mut self, templates: &BTreeMap<String, Template>) {
        let all: Vec<_> = templates.values().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                // `out/x`, `./out/x` and `out/../out/x` are one file.
                let (pa, pb) = (lexical(a.output.path()), lexical(b.output.path()));
                let clash = pa == pb
                    || matches!(a.output, OutputTarget::Directory { .. }) && pb.starts_with(&pa)
                    || matches!(b.output, OutputTarget::Directory { .. }) && pa.starts_with(&pb);
                if clash {
                    let field = match b.output {
                        OutputTarget::File { .. } => "path",
                        OutputTarget::Directory { .. } => "directory",
                    };
                    self.issue(
                        &["templates".into(), b.name.clone(), field.into()],
                        format!(
                            "output {} overlaps the output of template `{}` ({})",
                            b.output.path().display(),
                            a.name,
                            a.output.path().display()
                        ),
                    );
                }
            }
        }
    }

    /// No output may replace the config file or a template, and no directory
    /// output may hold them: it removes every file it did not render.
    fn outputs_spare_inputs(&mut self, file: &Path, templates: &BTreeMap<String, Template>) {
        let absolute = |p: &Path| lexical(&std::path::absolute(p).unwrap_or_else(|_| p.to_owned()));
        let mut inputs = vec![("the config file".to_string(), absolute(file))];
        for t in templates.values() {
            if let TemplateSource::File { name, path } = &t.source {
                inputs.push((format!("template `{name}`"), absolute(path)));
            }
        }
        for t in templates.values() {
            let out = absolute(t.output.path());
            let (field, hit) = match t.output {
                OutputTarget::File { .. } => ("path", inputs.iter().find(|(_, input)| *input == out)),
                OutputTarget::Directory { .. } => {
                    ("directory", inputs.iter().find(|(_, input)| input.starts_with(&out)))
                }
            };
            if let Some((what, input)) = hit {
                let message = match t.output {
                    OutputTarget::File { .. } => format!("output {} would replace {what}", out.display()),
                    OutputTarget::Directory { .. } => format!(
                        "directory output {} holds {what} ({}), which it would remove as a stale file",
                        out.display(),
                        input.display()
                    ),
                };
                self.issue(&["templates".into(), t.name.clone(), field.into()], message);
            }
        }
    }
}

/// `path` with `.` dropped and `..` applied to the parts before it, without
/// looking at the file system (outputs need not exist yet).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
