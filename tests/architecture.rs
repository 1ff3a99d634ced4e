//! The layout keeps its directions: every `crate::…` path in `src/` names a
//! module its own module may import, by the table below.
//!
//! Imports point one way, down the pipeline: `config` (what the user wrote)
//! builds the plain domain types of the stages below it, `pipeline` and
//! `source` convert, and the object representation (`object`) is shared by
//! all. A module missing from the table fails the test too, so a new one is
//! placed on purpose.
//!
//! Test code (a `tests.rs` file, or what follows a file's `#[cfg(test)]`) is
//! not checked: a test may build its input with a higher stage.

use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/`, and the modules it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("object", &[]),
    ("telemetry", &[]),
    ("index", &["object"]),
    ("store", &["object", "index", "telemetry"]),
    ("redact", &["object", "index", "store"]),
    ("command", &["redact"]),
    ("render", &["object", "index", "store"]),
    ("output", &["render", "command", "redact", "telemetry"]),
    ("action", &["command", "redact", "telemetry"]),
    ("exec", &["action", "telemetry"]),
    ("report", &["telemetry"]),
    ("admin", &["telemetry"]),
    (
        "config",
        &["object", "index", "store", "render", "output", "action", "report"],
    ),
    ("source", &["config", "object", "index", "store", "telemetry"]),
    (
        "pipeline",
        &[
            "config",
            "source",
            "object",
            "index",
            "store",
            "render",
            "output",
            "action",
            "report",
            "redact",
            "command",
            "telemetry",
        ],
    ),
    ("template_tests", &["pipeline", "source", "config", "render", "object"]),
    // Makes config text from k8s-sidecar's variables: it knows the config's
    // YAML, none of its types.
    ("k8s_sidecar", &[]),
    // The command line ties every stage together, as the binary did.
    (
        "cli",
        &[
            "config",
            "source",
            "pipeline",
            "admin",
            "report",
            "exec",
            "telemetry",
            "k8s_sidecar",
            "template_tests",
        ],
    ),
];

/// The crate root and the binary see everything.
const ROOTS: &[&str] = &["lib.rs", "main.rs"];

fn allowed(module: &str) -> Option<&'static [&'static str]> {
    ALLOWED.iter().find(|(name, _)| *name == module).map(|(_, may)| *may)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to: `src/store/full.rs` and
/// `src/store/mod.rs` are `store`, `src/index.rs` is `index`.
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().expect("a path below src/");
    let first = first.as_os_str().to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// The modules a line names as `crate::name`, or inside `crate::{a, b::c}`.
fn imported(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    let mut found = Vec::new();
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        found.push(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found
}

#[test]
fn every_module_imports_only_what_the_table_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("a file below src/");
        if ROOTS.iter().any(|root| relative == Path::new(root)) || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let module = module_of(relative);
        let Some(may) = allowed(&module) else {
            wrong.push(format!(
                "src/{}: module `{module}` is not in the table of tests/architecture.rs",
                relative.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for (number, line) in text.lines().enumerate() {
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            for target in imported(line) {
                if target != module && !may.contains(&target.as_str()) {
                    wrong.push(format!(
                        "src/{}:{}: `{module}` imports `{target}`, which it must not (it may import: {})",
                        relative.display(),
                        number + 1,
                        may.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        files.len() > 20,
        "only {} files found under {}",
        files.len(),
        src.display()
    );
    assert!(wrong.is_empty(), "imports against the layout:\n{}", wrong.join("\n"));
}

#[test]
fn the_table_has_no_cycle() {
    fn visit<'a>(module: &'a str, path: &mut Vec<&'a str>) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("the table has a cycle: {} -> {module}", path[at..].join(" -> "));
        }
        path.push(module);
        for next in allowed(module).unwrap_or_else(|| panic!("`{module}` is allowed but not in the table")) {
            visit(next, path);
        }
        path.pop();
    }
    for (module, _) in ALLOWED {
        visit(module, &mut Vec::new());
    }
}

#[test]
fn imports_are_read_in_every_form() {
    assert_eq!(imported("use crate::store::{AnyStore, Meta};"), ["store"]);
    assert_eq!(imported("use crate::{config, index::Key};"), ["config", "index"]);
    assert_eq!(imported("    let x = crate::render::value::from_json(y);"), ["render"]);
    assert_eq!(imported("// crate::pipeline in a comment"), Vec::<String>::new());
    assert_eq!(imported("use super::Thing;"), Vec::<String>::new());
}
