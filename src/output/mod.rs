//! Outputs: rendered bytes into files, atomically and only when they change
//! (DESIGN sections 1 and 5.6–5.7).
//!
//! A write goes in three steps over all templates of a render: stage every
//! changed file as a temp file beside its target, run each template's `check`
//! on its staged files, then — only if every check passed — rename them into
//! place and remove stale files of directory outputs. A failure at any step
//! before the renames leaves every previous file untouched; a failed rename
//! puts back the files already replaced (`commit`), and stale files are
//! removed only after every rename succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempPath;

use self::commit::Commit;
use self::previous::{Old, ensure_mode, old_version};
use crate::command;
use crate::redact::Redactor;
use crate::render::{Content, Syntax, TemplateSource};
pub use guard::Guard;
pub use owner::Owner;
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

/// One template's rendered content and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub template: &'a Template,
    pub target: &'a OutputTarget,
    pub content: &'a Content,
}

/// A template's changes, staged but not yet in place.
struct Staged {
    template: String,
    fsync_dirs: BTreeSet<PathBuf>,
    files: Vec<StagedFile>,
    /// Targets renamed into place by the commit.
    written: Vec<PathBuf>,
    stale: Vec<PathBuf>,
    /// Directories (inside a directory output) that may be empty afterwards.
    root: Option<PathBuf>,
}

/// A temp file beside the target it is to replace.
struct StagedFile {
    file: TempPath,
    target: PathBuf,
    /// Nothing was at `target` when the file was staged.
    new: bool,
}

/// Writes all outputs of one render, or none of them. `redactor` holds the
/// Secret values of the render, kept out of what a failing check printed.
pub async fn write_all(jobs: &[Job<'_>], redactor: &Redactor) -> Result<Report> {
    for job in jobs {
        validate(job)?;
    }
    let mut staged = Vec::with_capacity(jobs.len());
    for job in jobs {
        let s = stage(job)?;
        for staged in &s.files {
            check(job.template, &staged.file, &staged.target, redactor).await?;
        }
        staged.push(s);
    }
    // Every rename first, all or nothing; only then stale files go.
    let mut commit = Commit::default();
    for s in &mut staged {
        for StagedFile { file, target, new } in std::mem::take(&mut s.files) {
            commit.replace(&s.template, file, target.clone(), s.root.as_deref(), new)?;
            s.written.push(target);
        }
    }
    let moved_aside = commit.finish();
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
                        template: s.template.clone(),
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
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| Error::Io {
                    template: s.template.clone(),
                    action: "cannot fsync directory",
                    path: dir.clone(),
                    source,
                })?;
        }
        if changed {
            report.changed_templates.push(s.template);
        }
    }
    Ok(report)
}

fn stage(job: &Job<'_>) -> Result<Staged> {
    let template = &job.template.name;
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            template: template.clone(),
            action,
            path,
            source,
        }
    };
    let mut staged = Staged {
        template: template.clone(),
        fsync_dirs: BTreeSet::new(),
        files: Vec::new(),
        written: Vec::new(),
        stale: Vec::new(),
        root: None,
    };
    // Files known not to exist need no read; directories known to exist no
    // mkdir (each with its absolute form, where files are staged).
    let mut absent: BTreeSet<PathBuf> = BTreeSet::new();
    let mut made_dirs: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let wanted: BTreeMap<PathBuf, &[u8]> = match (job.target, job.content) {
        (OutputTarget::File { path, .. }, Content::File(bytes)) => [(path.clone(), bytes.as_slice())].into(),
        (OutputTarget::Directory { path, .. }, Content::Directory(files)) => {
            create_dirs(path, job.template.owner).map_err(io("cannot create directory", path))?;
            made_dirs.insert(
                path.clone(),
                std::path::absolute(path).map_err(io("cannot resolve", path))?,
            );
            let existing: BTreeSet<PathBuf> = list_files(path)
                .map_err(io("cannot list directory", path))?
                .into_iter()
                .collect();
            absent = files
                .keys()
                .map(PathBuf::from)
                .filter(|rel| !existing.contains(rel))
                .map(|rel| path.join(rel))
                .collect();
            staged.stale = existing
                .into_iter()
                .filter(|rel| !files.contains_key(rel.to_string_lossy().as_ref()))
                .map(|rel| path.join(rel))
                .collect();
            staged.root = Some(path.clone());
            files
                .iter()
                .map(|(name, bytes)| (path.join(name), bytes.as_slice()))
                .collect()
        }
        _ => unreachable!("a template's content always matches its output kind"),
    };
    if let Some(root) = &staged.root {
        refuse_file_and_directory(template, root, &wanted)?;
    }
    for (target, bytes) in wanted {
        let old = if absent.contains(&target) {
            Ok(Old::None)
        } else {
            old_version(&target, bytes)
        };
        let new = match old {
            Ok(Old::Same(meta)) => {
                ensure_mode(&target, &meta, job.template.mode).map_err(io("cannot set the mode of", &target))?;
                if let Some(owner) = job.template.owner {
                    owner::ensure(owner, &target).map_err(io("cannot set the owner of", &target))?;
                }
                continue;
            }
            Ok(old) => matches!(old, Old::None),
            Err(e) => return Err(io("cannot read", &target)(e)),
        };
        let dir = target.parent().unwrap_or(Path::new("."));
        if !made_dirs.contains_key(dir) {
            let stage_in = match create_dirs(dir, job.template.owner) {
                Ok(()) => dir.to_owned(),
                // A file of the last render stands where this one needs a
                // directory (`a`, now `a/b`): the commit moves it aside;
                // until then the new file is staged in the nearest directory.
                Err(e) => staged
                    .root
                    .as_deref()
                    .and_then(|root| nearest_dir(root, dir))
                    .ok_or_else(|| io("cannot create directory", dir)(e))?,
            };
            let absolute = std::path::absolute(&stage_in).map_err(io("cannot resolve", dir))?;
            made_dirs.insert(dir.to_owned(), absolute);
        }
        // An absolute directory spares the temp file a getcwd of its own.
        let mut file = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .permissions(fs::Permissions::from_mode(job.template.mode))
            .tempfile_in(&made_dirs[dir])
            .map_err(io("cannot create a temp file in", dir))?;
        file.write_all(bytes).map_err(io("cannot write", file.path()))?;
        if !umask_keeps(job.template.mode) {
            file.as_file()
                .set_permissions(fs::Permissions::from_mode(job.template.mode))
                .map_err(io("cannot set the mode of", file.path()))?;
        }
        if let Some(owner) = job.template.owner {
            owner::apply_to(owner, file.as_file()).map_err(io("cannot set the owner of", file.path()))?;
        }
        if job.template.fsync {
            file.as_file().sync_all().map_err(io("cannot fsync", file.path()))?;
            staged.fsync_dirs.insert(dir.to_owned());
        }
        // Closed now: a directory output may stage more files than a process
        // may keep open.
        staged.files.push(StagedFile {
            file: file.into_temp_path(),
            target,
            new,
        });
    }
    Ok(staged)
}

/// Checks a job's files against its template's `validate:` format.
fn validate(job: &Job<'_>) -> Result<()> {
    let Some(format) = job.template.validate else {
        return Ok(());
    };
    let files: Vec<(PathBuf, &[u8])> = match (job.target, job.content) {
        (OutputTarget::File { path, .. }, Content::File(bytes)) => vec![(path.clone(), bytes)],
        (OutputTarget::Directory { path, .. }, Content::Directory(files)) => files
            .iter()
            .map(|(name, bytes)| (path.join(name), bytes.as_slice()))
            .collect(),
        _ => unreachable!("a template's content always matches its output kind"),
    };
    for (file, bytes) in files {
        if let Err(e) = validate::check(format, bytes) {
            return Err(Error::Invalid {
                template: job.template.name.clone(),
                file,
                format: format.name(),
                reason: e.reason,
            });
        }
    }
    Ok(())
}

/// `create_dir_all`, giving the directories it creates `owner`.
fn create_dirs(dir: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    let Some(owner) = owner else {
        return fs::create_dir_all(dir);
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    fs::create_dir_all(dir)?;
    for created in missing {
        owner::ensure(owner, created)?;
    }
    Ok(())
}

/// The nearest ancestor of `dir` inside `root` that is a directory.
fn nearest_dir(root: &Path, dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .take_while(|a| a.starts_with(root))
        .find(|a| a.is_dir())
        .map(Path::to_owned)
}

/// A directory output cannot hold a file `a` and a file `a/b` at once.
fn refuse_file_and_directory(template: &str, root: &Path, wanted: &BTreeMap<PathBuf, &[u8]>) -> Result<()> {
    for target in wanted.keys() {
        let parents = target.ancestors().skip(1).take_while(|a| *a != root);
        if let Some(file) = parents.into_iter().find(|a| wanted.contains_key(*a)) {
            return Err(Error::FileAndDirectory {
                template: template.to_owned(),
                file: file.to_owned(),
                inner: target.clone(),
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

/// Removes the staged files a killed earlier run left beside single-file
/// outputs (directory outputs lose theirs at every write); returns them.
/// Only names of our own making go: the staging prefix and tempfile's six
/// random letters or digits.
pub fn remove_leftovers<'a>(targets: impl IntoIterator<Item = &'a OutputTarget>) -> Vec<PathBuf> {
    let dirs: BTreeSet<&Path> = targets
        .into_iter()
        .filter_map(|t| match t {
            OutputTarget::File { path, .. } => Some(path.parent().unwrap_or(Path::new("."))),
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
async fn check(template: &Template, staged: &Path, target: &Path, redactor: &Redactor) -> Result<()> {
    if template.check.is_empty() {
        return Ok(());
    }
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

mod commit;
pub mod guard;
pub mod owner;
mod previous;
#[cfg(test)]
mod tests;
pub mod validate;
