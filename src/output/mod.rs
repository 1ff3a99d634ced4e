//! Outputs: rendered bytes into files, atomically and only when they change
//! (DESIGN sections 1 and 5.6–5.7).
//!
//! A write goes in three steps over all templates of a render: stage every
//! changed file as a temp file beside its target (`stage`: while the render
//! produces it), run each template's `validate` and `check` on its files,
//! then — only if every one passed — rename them into place and remove stale
//! files of directory outputs. A failure at any step before the renames
//! leaves every previous file untouched; a failed rename puts back the files
//! already replaced (`commit`), and stale files are removed only after every
//! rename succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempPath;

use self::commit::Commit;
use crate::command;
use crate::redact::Redactor;
use crate::render::{Content, Sink, Syntax, TemplateSource};
pub use anonymous::grow_open_files_table;
pub use guard::Guard;
pub use owner::Owner;
pub use stage::Stage;
pub use validate::ValidateFormat;

/// A validated template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub source: TemplateSource,
    pub output: OutputTarget,
    /// File mode, e.g. `0o644`.
    pub mode: u32,
    pub fsync: bool,
    pub check: Vec<String>,
    pub check_timeout: Duration,
    /// Its named group; `None`: the default group.
    pub group: Option<String>,
    /// The format the output must parse as, if any.
    pub validate: Option<ValidateFormat>,
    /// The owner of written files, if set.
    pub owner: Option<Owner>,
    /// Custom delimiters, if set.
    pub syntax: Option<Syntax>,
    /// The loss guard, if set.
    pub guard: Option<Guard>,
}

/// Where a template's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// One file. `written` is the path as the config has it (for `--out`).
    File { path: PathBuf, written: PathBuf },
    /// A directory holding exactly the files the render emitted.
    Directory { path: PathBuf, written: PathBuf },
}

impl OutputTarget {
    pub fn path(&self) -> &Path {
        match self {
            OutputTarget::File { path, .. } | OutputTarget::Directory { path, .. } => path,
        }
    }

    /// The same target moved under `root`, as `render --out` does: an absolute
    /// `/etc/x` becomes `root/etc/x`, a relative `out/x` becomes `root/out/x`,
    /// and `../x` becomes `root/x`.
    pub fn rerooted(&self, root: &Path) -> OutputTarget {
        // `..` climbs no higher than `root`: every output stays below it.
        let move_under = |written: &Path| {
            let mut relative = PathBuf::new();
            for part in written.components() {
                match part {
                    std::path::Component::Normal(name) => relative.push(name),
                    std::path::Component::ParentDir => {
                        relative.pop();
                    }
                    _ => {}
                }
            }
            root.join(relative)
        };
        match self {
            OutputTarget::File { written, .. } => OutputTarget::File {
                path: move_under(written),
                written: written.clone(),
            },
            OutputTarget::Directory { written, .. } => OutputTarget::Directory {
                path: move_under(written),
                written: written.clone(),
            },
        }
    }
}

/// Prefix of staged files; such files in an output directory are never outputs.
const STAGING_PREFIX: &str = ".kube-template-";

/// Why outputs could not be written. Previous files are in place, unless a
/// stale file could not be removed or a restore after a failed rename failed
/// too (logged).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("template `{template}`: {action} {}: {source}", path.display())]
    Io {
        template: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The template's `check` command rejected the staged new version of
    /// `file`; `first_line` is of its output, redacted.
    #[error("template `{template}`: check {command:?} rejected the new {} ({status}){}", file.display(), output_suffix(first_line))]
    CheckFailed {
        template: String,
        command: Vec<String>,
        file: PathBuf,
        status: String,
        first_line: String,
    },
    /// The new version of `file` does not parse as the template's
    /// `validate:` format; `reason` is the parser's, without the content.
    #[error("template `{template}`: the new {} is not valid {format}: {reason}", file.display())]
    Invalid {
        template: String,
        file: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// A directory output's render emitted `file` and a file inside it.
    #[error("template `{template}`: {} is emitted both as a file and as the directory of {}", file.display(), inner.display())]
    FileAndDirectory {
        template: String,
        file: PathBuf,
        inner: PathBuf,
    },
    /// The `check` command could not be started.
    #[error("template `{template}`: cannot run check {command:?}: {source}")]
    CheckSpawn {
        template: String,
        command: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// The `check` command ran longer than `check_timeout`.
    #[error("template `{template}`: check {command:?} did not finish within {}", humantime::format_duration(*timeout))]
    CheckTimeout {
        template: String,
        command: Vec<String>,
        timeout: Duration,
    },
}

fn output_suffix(first_line: &str) -> String {
    if first_line.is_empty() {
        String::new()
    } else {
        format!(": {first_line}")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files replaced or created.
    pub written: Vec<PathBuf>,
    /// Stale files removed from directory outputs.
    pub removed: Vec<PathBuf>,
    /// Templates at least one of whose files changed.
    pub changed_templates: Vec<String>,
}

impl Report {
    /// Whether any file changed (actions run only then).
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

/// One template's rendered content, in memory, and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub template: &'a Template,
    pub target: &'a OutputTarget,
    pub content: &'a Content,
}

/// A template's changes, staged but not yet in place: what a [`Stage`]
/// gives once its render is over. Dropping it removes its temp files.
pub struct Staged {
    /// Its template (re-rooted, as it was staged): its checks.
    template: Template,
    fsync_dirs: BTreeSet<PathBuf>,
    files: Vec<StagedFile>,
    /// Files whose new bytes are those already in place.
    unchanged: Vec<PathBuf>,
    /// Targets renamed into place by the commit.
    written: Vec<PathBuf>,
    stale: Vec<PathBuf>,
    /// Directories (inside a directory output) that may be empty afterwards.
    root: Option<PathBuf>,
    size: u64,
    checksum: String,
    /// Last: dropped after the staged files.
    made: MadeDirs,
}

impl Staged {
    /// The template it is the output of.
    pub fn template(&self) -> &str {
        &self.template.name
    }

    /// The new size: bytes of a single-file output, files of a directory
    /// output (what the loss guard weighs).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 of the new output: of the file, or of every file's name,
    /// length and sha256 of a directory output, by name.
    pub fn checksum(&self) -> &str {
        &self.checksum
    }
}

/// A temp file beside the target it is to replace.
struct StagedFile {
    file: Staging,
    target: PathBuf,
    /// Nothing was at `target` when the file was staged.
    new: bool,
}

/// A staged file's bytes: a closed temp file under a staging name, or (a new
/// file) an open anonymous one, which has no name until the commit.
enum Staging {
    Named(TempPath),
    Anonymous(anonymous::Anonymous),
}

impl Staging {
    /// Its whole content.
    fn read_back(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Staging::Named(path) => fs::read(path),
            Staging::Anonymous(file) => file.read_back(),
        }
    }
}

/// Writes all outputs of one render held in memory, or none of them.
/// `redactor` holds the Secret values of the render, kept out of what a
/// failing check printed.
pub async fn write_all(jobs: &[Job<'_>], redactor: &Redactor) -> Result<Report> {
    let mut staged = Vec::with_capacity(jobs.len());
    for job in jobs {
        staged.push(stage(job)?);
    }
    write_staged(staged, redactor).await
}

/// Stages a job's content held in memory.
pub fn stage(job: &Job<'_>) -> Result<Staged> {
    let mut stage = Stage::new(job.template, job.target)?;
    let written = match job.content {
        Content::File(bytes) => stage.write_all(bytes),
        Content::Directory(files) => files
            .iter()
            .try_for_each(|(name, bytes)| stage.file(name, bytes).map(drop)),
    };
    written.map_err(io_error(&job.template.name, "cannot stage", job.target.path()))?;
    stage.finish()
}

/// Puts staged outputs in place, all or none of them: validates and checks
/// them first. `redactor` holds the Secret values of the render, kept out
/// of what a failing check printed.
pub async fn write_staged(mut staged: Vec<Staged>, redactor: &Redactor) -> Result<Report> {
    for s in &staged {
        validate(&s.template, s)?;
    }
    for s in &staged {
        for file in &s.files {
            check(&s.template, &file.file, &file.target, redactor).await?;
        }
    }
    // Every rename first, all or nothing; only then stale files go.
    let mut commit = Commit::default();
    for s in &mut staged {
        for StagedFile { file, target, new } in std::mem::take(&mut s.files) {
            commit.replace(&s.template.name, file, target.clone(), s.root.as_deref(), new)?;
            s.written.push(target);
        }
    }
    let moved_aside = commit.finish();
    for s in &mut staged {
        s.made.keep();
    }
    let mut report = Report::default();
    for s in staged {
        let changed = !s.written.is_empty() || !s.stale.is_empty();
        report.written.extend(s.written);
        for path in s.stale {
            if moved_aside.iter().any(|moved| path.starts_with(moved)) {
                report.removed.push(path);
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => report.removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        template: s.template.name.clone(),
                        action: "cannot remove stale file",
                        path,
                        source,
                    });
                }
            }
        }
        if let Some(root) = &s.root {
            remove_empty_dirs(root, root);
        }
        for dir in &s.fsync_dirs {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(
                &s.template.name,
                "cannot fsync directory",
                dir,
            ))?;
        }
        if changed {
            report.changed_templates.push(s.template.name);
        }
    }
    Ok(report)
}

/// An I/O error of `template` about `path`.
fn io_error<'a>(
    template: &'a str,
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> Error + use<'a> {
    let path = path.to_owned();
    move |source| Error::Io {
        template: template.to_owned(),
        action,
        path,
        source,
    }
}

/// Checks a staged output's files against its template's `validate:`
/// format, reading them back one at a time.
fn validate(template: &Template, staged: &Staged) -> Result<()> {
    let Some(format) = template.validate else {
        return Ok(());
    };
    let staged_files = staged.files.iter().map(|f| (&f.target, f.file.read_back()));
    let unchanged = staged.unchanged.iter().map(|target| (target, fs::read(target)));
    for (target, bytes) in staged_files.chain(unchanged) {
        let bytes = bytes.map_err(io_error(&template.name, "cannot read back", target))?;
        if let Err(e) = validate::check(format, &bytes) {
            return Err(Error::Invalid {
                template: template.name.clone(),
                file: target.clone(),
                format: format.name(),
                reason: e.reason,
            });
        }
    }
    Ok(())
}

/// `create_dir_all`, giving the directories it creates `owner`; returns
/// them, deepest first.
fn create_dirs(dir: &Path, owner: Option<Owner>) -> std::io::Result<Vec<PathBuf>> {
    if dir.is_dir() {
        return Ok(Vec::new());
    }
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_owned)
        .collect();
    fs::create_dir_all(dir)?;
    if let Some(owner) = owner {
        for created in &missing {
            owner::ensure(owner, created)?;
        }
    }
    Ok(missing)
}

/// Directories made for staged files, deepest first: removed when dropped
/// if still empty (a failed render or check leaves no trace), unless the
/// commit kept them.
#[derive(Debug, Default)]
struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            // Fails, as it should, on a directory something was put in.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The nearest ancestor of `dir` inside `root` that is a directory.
fn nearest_dir(root: &Path, dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .take_while(|a| a.starts_with(root))
        .find(|a| a.is_dir())
        .map(Path::to_owned)
}

/// A directory output cannot hold a file `a` and a file `a/b` at once.
/// `names` are its files' names, relative to `root`.
fn refuse_file_and_directory<V>(template: &str, root: &Path, names: &BTreeMap<String, V>) -> Result<()> {
    for name in names.keys() {
        let mut parents = Path::new(name).ancestors().skip(1);
        if let Some(file) = parents.find(|a| a.to_str().is_some_and(|a| names.contains_key(a))) {
            return Err(Error::FileAndDirectory {
                template: template.to_owned(),
                file: root.join(file),
                inner: root.join(name),
            });
        }
    }
    Ok(())
}

/// Whether a file created with `mode` gets exactly `mode`: this process's
/// umask (from /proc; unknown: assumed to mask) clears none of its bits.
/// Then staged files need no chmod of their own.
fn umask_keeps(mode: u32) -> bool {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let umask = UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(value.trim(), 8).ok()
    });
    umask.is_some_and(|umask| mode & 0o777 == mode && mode & umask == 0)
}

/// Regular files below `root`, relative to it; leftover staged files are
/// removed on the way.
fn list_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            let kind = entry.file_type()?;
            if name.to_string_lossy().starts_with(STAGING_PREFIX) {
                // Staged files, and what a killed commit had moved aside.
                let _ = if kind.is_dir() {
                    fs::remove_dir_all(entry.path())
                } else {
                    fs::remove_file(entry.path())
                };
                continue;
            }
            if kind.is_dir() {
                pending.push(rel.join(&name));
            } else {
                out.push(rel.join(&name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The directory a file `path` is in: `.` for a bare name (whose
/// `parent()` is the empty path, which no system call takes).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Removes the staged files a killed earlier run left beside single-file
/// outputs (directory outputs lose theirs at every write); returns them.
/// Only names of our own making go: the staging prefix and tempfile's six
/// random letters or digits.
pub fn remove_leftovers<'a>(targets: impl IntoIterator<Item = &'a OutputTarget>) -> Vec<PathBuf> {
    let dirs: BTreeSet<&Path> = targets
        .into_iter()
        .filter_map(|t| match t {
            OutputTarget::File { path, .. } => Some(dir_of(path)),
            OutputTarget::Directory { .. } => None,
        })
        .collect();
    let mut removed = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let ours = name
                .to_str()
                .and_then(|n| n.strip_prefix(STAGING_PREFIX))
                .is_some_and(|random| random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric()));
            if ours && entry.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

/// Removes directories below `root` left empty by stale-file removal.
fn remove_empty_dirs(root: &Path, dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && remove_empty_dirs(root, &path) {
            continue;
        }
        empty = false;
    }
    empty && dir != root && fs::remove_dir(dir).is_ok()
}

/// Runs the template's `check` on a staged file; errors name the file it
/// would have replaced (the staged name is random).
async fn check(template: &Template, staged: &Staging, target: &Path, redactor: &Redactor) -> Result<()> {
    if template.check.is_empty() {
        return Ok(());
    }
    let Staging::Named(staged) = staged else {
        unreachable!("a template with a check stages named files only");
    };
    let file = staged.to_string_lossy();
    let argv: Vec<String> = template.check.iter().map(|a| a.replace("{file}", &file)).collect();
    match command::run(&argv, template.check_timeout).await {
        Ok(_) => Ok(()),
        Err(command::Failure::Spawn(source)) => Err(Error::CheckSpawn {
            template: template.name.clone(),
            command: template.check.clone(),
            source,
        }),
        Err(command::Failure::Timeout(timeout)) => Err(Error::CheckTimeout {
            template: template.name.clone(),
            command: template.check.clone(),
            timeout,
        }),
        Err(command::Failure::Exit { status, output }) => {
            // In full at debug level only: it may quote Secret data.
            tracing::debug!(template = %template.name, file = %target.display(), %output, "check output");
            Err(Error::CheckFailed {
                template: template.name.clone(),
                command: template.check.clone(),
                file: target.to_owned(),
                status,
                first_line: redactor.summary(&output),
            })
        }
    }
}

mod anonymous;
mod commit;
pub mod guard;
pub mod owner;
mod previous;
mod stage;
#[cfg(test)]
mod tests;
pub mod validate;
