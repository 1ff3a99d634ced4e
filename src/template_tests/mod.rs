//! `kube-template test`: template tests kept beside the config (DESIGN 6).
//!
//! Each folder `tests/NAME/` beside the config is one case: `manifests/` holds
//! the objects (as `--from` takes them), and either `expect/` holds the files
//! the render must produce, re-rooted as `render --out` does
//! (`expect/out/haproxy.cfg` for `path: out/haproxy.cfg`), or `expect_error`
//! lists fragments, one per line, that the error must contain. A case renders
//! into a scratch directory, never into the configured paths.

pub mod diff;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::pipeline::{self, Prepared};
use crate::source::manifests;

/// Folder of test cases, beside the config.
pub const CASES_DIR: &str = "tests";

/// Why the cases could not be run at all (as opposed to a failing case).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's folder has no `tests/` folder.
    #[error("no test cases: {} does not exist (each case is a folder tests/NAME/ with manifests/ and expect/ or expect_error)", .0.display())]
    NoCases(PathBuf),
    /// A case named on the command line does not exist.
    #[error("no test case `{name}` in {} (cases: {})", dir.display(), known.join(", "))]
    UnknownCase {
        name: String,
        dir: PathBuf,
        known: Vec<String>,
    },
    /// The cases folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One test case folder.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
}

/// What running a case found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Why the case failed, each a self-contained message (diffs included);
    /// empty when it passed.
    pub failures: Vec<String>,
    /// With `--update`: the expected files written or removed.
    pub updated: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn fail(message: impl Into<String>) -> Outcome {
        Outcome {
            failures: vec![message.into()],
            updated: Vec::new(),
        }
    }
}

/// The cases beside `config_dir`, by name; only those in `names` when given.
pub fn discover(config_dir: &Path, names: &[String]) -> Result<Vec<Case>> {
    let dir = config_dir.join(CASES_DIR);
    if !dir.is_dir() {
        return Err(Error::NoCases(dir));
    }
    let entries = fs::read_dir(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let mut cases = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        if entry.path().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            cases.insert(
                name.clone(),
                Case {
                    name,
                    dir: entry.path(),
                },
            );
        }
    }
    if names.is_empty() {
        return Ok(cases.into_values().collect());
    }
    names
        .iter()
        .map(|name| {
            cases.get(name).cloned().ok_or_else(|| Error::UnknownCase {
                name: name.clone(),
                dir: dir.clone(),
                known: cases.keys().cloned().collect(),
            })
        })
        .collect()
}

/// Renders `case` and compares the result with what it expects; with
/// `update`, rewrites `expect/` from the render instead of failing on a
/// difference.
pub async fn run(prepared: &Prepared, case: &Case, update: bool) -> Outcome {
    let manifests_dir = case.dir.join("manifests");
    let expect_dir = case.dir.join("expect");
    let expect_error = case.dir.join("expect_error");
    if !manifests_dir.is_dir() {
        return Outcome::fail(format!("{}: no manifests/ folder", case.dir.display()));
    }
    if expect_dir.exists() && expect_error.exists() {
        return Outcome::fail(format!(
            "{}: has both expect/ and expect_error; keep one",
            case.dir.display()
        ));
    }
    let rendered = render(prepared, &manifests_dir).await;
    if expect_error.exists() {
        return match fs::read_to_string(&expect_error) {
            Ok(text) => compare_error(&expect_error, &text, rendered),
            Err(e) => Outcome::fail(format!("cannot read {}: {e}", expect_error.display())),
        };
    }
    let files = match rendered {
        Ok(files) => files,
        Err(error) => return Outcome::fail(format!("the render failed: {error}")),
    };
    if update {
        return write_expected(&expect_dir, &files);
    }
    if !expect_dir.is_dir() {
        return Outcome::fail(format!(
            "{}: no expect/ folder or expect_error file (`test --update` writes expect/ from the render)",
            case.dir.display()
        ));
    }
    match read_tree(&expect_dir) {
        Ok(expected) => compare_files(&expected, &files),
        Err(e) => Outcome::fail(format!("cannot read {}: {e}", expect_dir.display())),
    }
}

/// Renders the manifests in `dir` into a scratch directory and reads back
/// what was written, by path relative to it; the error text otherwise.
async fn render(prepared: &Prepared, dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let objects = manifests::load(&[dir.to_owned()]).map_err(|e| e.to_string())?;
    let stores = pipeline::stores_from(&prepared.config, &objects);
    let scratch = tempfile::tempdir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    pipeline::render_and_write(prepared, &pipeline::snapshot(&stores), Some(scratch.path()))
        .await
        .map_err(|e| e.to_string())?;
    read_tree(scratch.path()).map_err(|e| format!("cannot read the rendered files: {e}"))
}

fn compare_error(path: &Path, fragments: &str, rendered: Result<BTreeMap<String, Vec<u8>>, String>) -> Outcome {
    let fragments: Vec<&str> = fragments.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if fragments.is_empty() {
        return Outcome::fail(format!("{}: lists no fragment of the expected error", path.display()));
    }
    let error = match rendered {
        Ok(_) => {
            return Outcome::fail(format!(
                "expected an error containing {fragments:?}, but the render succeeded"
            ));
        }
        Err(error) => error,
    };
    let missing: Vec<&str> = fragments.iter().copied().filter(|f| !error.contains(f)).collect();
    if missing.is_empty() {
        Outcome::default()
    } else {
        Outcome::fail(format!("the error does not contain {missing:?}; it was:\n{error}"))
    }
}

fn compare_files(expected: &BTreeMap<String, Vec<u8>>, rendered: &BTreeMap<String, Vec<u8>>) -> Outcome {
    let mut outcome = Outcome::default();
    for (path, want) in expected {
        match rendered.get(path) {
            None => outcome
                .failures
                .push(format!("expect/{path}: expected, but the render did not produce it")),
            Some(got) if got != want => outcome.failures.push(file_diff(path, want, got)),
            Some(_) => {}
        }
    }
    for path in rendered.keys().filter(|p| !expected.contains_key(*p)) {
        outcome.failures.push(format!(
            "{path}: rendered, but not in expect/ (run `test --update` to accept it)"
        ));
    }
    outcome
}

fn file_diff(path: &str, want: &[u8], got: &[u8]) -> String {
    match (std::str::from_utf8(want), std::str::from_utf8(got)) {
        (Ok(want), Ok(got)) => diff::unified(&format!("expect/{path}"), &format!("rendered/{path}"), want, got),
        _ => format!(
            "expect/{path}: binary files differ ({} bytes expected, {} rendered)",
            want.len(),
            got.len()
        ),
    }
}

/// Makes `expect_dir` hold exactly `files`, listing what changed.
fn write_expected(expect_dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Outcome {
    let mut outcome = Outcome::default();
    let old = if expect_dir.is_dir() {
        match read_tree(expect_dir) {
            Ok(old) => old,
            Err(e) => return Outcome::fail(format!("cannot read {}: {e}", expect_dir.display())),
        }
    } else {
        BTreeMap::new()
    };
    let mut step = |result: std::io::Result<()>, what: String| match result {
        Ok(()) => outcome.updated.push(what),
        Err(e) => outcome.failures.push(format!("{what}: {e}")),
    };
    for (path, bytes) in files {
        let target = expect_dir.join(path);
        let verb = match old.get(path) {
            Some(previous) if previous == bytes => continue,
            Some(_) => "changed",
            None => "added",
        };
        let written = target
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&target, bytes));
        step(written, format!("{verb} {}", target.display()));
    }
    for path in old.keys().filter(|p| !files.contains_key(*p)) {
        let target = expect_dir.join(path);
        step(fs::remove_file(&target), format!("removed {}", target.display()));
    }
    outcome
}

/// Every regular file below `root`, by `/`-separated relative path.
fn read_tree(root: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.insert(name, fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn equal_trees_pass_and_each_difference_is_one_failure() {
        let expected = tree(&[("out/a", "1\n"), ("out/b", "2\n")]);
        assert!(compare_files(&expected, &expected).passed());
        let rendered = tree(&[("out/a", "one\n"), ("out/c", "3\n")]);
        let outcome = compare_files(&expected, &rendered);
        assert_eq!(outcome.failures.len(), 3, "{:?}", outcome.failures);
        assert!(outcome.failures[0].contains("-1\n+one\n"));
        assert!(outcome.failures[1].contains("expect/out/b: expected, but the render did not produce it"));
        assert!(outcome.failures[2].contains("out/c: rendered, but not in expect/"));
    }

    #[test]
    fn every_fragment_of_an_expected_error_must_appear() {
        let path = Path::new("expect_error");
        let failed = || Err("template `x` line 3: undefined value".to_string());
        assert!(compare_error(path, "template `x`\nline 3\n", failed()).passed());
        let outcome = compare_error(path, "line 3\nline 4\n", failed());
        assert!(outcome.failures[0].contains("[\"line 4\"]"), "{:?}", outcome.failures);
        let outcome = compare_error(path, "line 3\n", Ok(BTreeMap::new()));
        assert!(outcome.failures[0].contains("but the render succeeded"));
        assert!(!compare_error(path, "\n \n", failed()).passed());
    }

    #[test]
    fn update_writes_changes_and_removes_files_no_longer_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let expect = dir.path().join("expect");
        let first = write_expected(&expect, &tree(&[("out/a", "1\n"), ("out/b", "2\n")]));
        assert_eq!(first.updated.len(), 2);
        let second = write_expected(
            &expect,
            &tree(&[("out/a", "1\n"), ("out/b", "two\n"), ("out/c/d", "4\n")]),
        );
        assert!(second.passed());
        assert_eq!(second.updated.len(), 2, "{:?}", second.updated);
        let third = write_expected(&expect, &tree(&[("out/c/d", "4\n")]));
        assert_eq!(third.updated.len(), 2, "{:?}", third.updated);
        assert_eq!(read_tree(&expect).unwrap(), tree(&[("out/c/d", "4\n")]));
    }
}
