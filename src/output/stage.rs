//! A template's output staged while it renders: each of its files goes to a
//! temp file beside its target as the render produces it (a new file to an
//! anonymous one where it can, see `anonymous`), so that no render
//! holds its whole output in memory. Bytes are compared with the file at the
//! target as they come; a file found unchanged gets no temp file at all, and
//! one that differs from byte N on gets the old file's first N bytes copied
//! into its temp file. Dropping a stage (a failed render) removes its temp
//! files; nothing at any target has changed until the commit.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::anonymous::{self, Anonymous, Budget};
use super::previous::{self, Found, Old, ensure_mode};
use super::{
    MadeDirs, OutputTarget, Result, STAGING_PREFIX, Staged, StagedFile, Staging, Template, create_dirs, list_files,
    nearest_dir, owner, refuse_file_and_directory, umask_keeps,
};
use crate::render::{Emitted, Sink};

/// How much of a single-file output is gathered before it is compared or
/// written.
const BUFFER: usize = 64 * 1024;

/// A template's output being staged: the [`Sink`] its render writes into.
pub struct Stage {
    template: Template,
    target: OutputTarget,
    /// A single-file output's file, while the render writes it.
    open: Option<Pending>,
    /// A single-file output's sha256 so far.
    digest: Sha256,
    /// Bytes of a single-file output, files of a directory output.
    size: u64,
    /// A directory output's files before the render, relative to it.
    existing: BTreeSet<PathBuf>,
    /// A directory output's files so far: length and sha256, by name.
    emitted: BTreeMap<String, (u64, [u8; 32])>,
    files: Vec<StagedFile>,
    unchanged: Vec<PathBuf>,
    /// Last: the directories it made go after the temp files in them.
    place: Place,
}

/// What staging a file needs of its template, and the directories known.
struct Place {
    mode: u32,
    owner: Option<owner::Owner>,
    fsync: bool,
    root: Option<PathBuf>,
    /// Directories known to exist, each with the absolute form files are
    /// staged in.
    made_dirs: BTreeMap<PathBuf, PathBuf>,
    fsync_dirs: BTreeSet<PathBuf>,
    /// The directories that did not exist before.
    created: MadeDirs,
    /// Anonymous files for new files, within this budget; none for a
    /// template whose `check` needs each file's path.
    anonymous: Option<Arc<Budget>>,
    /// Directories (absolute) whose file system has no anonymous files, or
    /// where they do not pay.
    no_anonymous: BTreeSet<PathBuf>,
}

/// One file on its way to its temp file.
struct Pending {
    target: PathBuf,
    old: Option<Box<Old>>,
    /// Something was at `target` when staging began.
    existed: bool,
    /// The first bytes, found equal to the old file's: not written yet.
    same: u64,
    temp: Option<Temp>,
    buffer: Vec<u8>,
}

/// A file being written: named beside its target, or anonymous.
enum Temp {
    Named(NamedTempFile),
    Anonymous(Anonymous),
}

impl Temp {
    fn file(&self) -> &fs::File {
        match self {
            Temp::Named(file) => file.as_file(),
            Temp::Anonymous(file) => file.file(),
        }
    }

    fn file_mut(&mut self) -> &mut fs::File {
        match self {
            Temp::Named(file) => file.as_file_mut(),
            Temp::Anonymous(file) => file.file_mut(),
        }
    }
}

impl Stage {
    /// Starts staging `template`'s output to `target` (its own, or re-rooted):
    /// a directory output's directory is made and listed.
    pub fn new(template: &Template, target: &OutputTarget) -> Result<Stage> {
        Stage::with_budget(template, target, Budget::process())
    }

    /// [`Stage::new`], with at most `budget`'s anonymous files open.
    pub(super) fn with_budget(template: &Template, target: &OutputTarget, budget: Arc<Budget>) -> Result<Stage> {
        let io = |action, path: &Path| super::io_error(&template.name, action, path);
        let mut stage = Stage {
            template: template.clone(),
            place: Place {
                mode: template.mode,
                owner: template.owner,
                fsync: template.fsync,
                root: None,
                made_dirs: BTreeMap::new(),
                fsync_dirs: BTreeSet::new(),
                created: MadeDirs::default(),
                anonymous: template.check.is_empty().then_some(budget),
                no_anonymous: BTreeSet::new(),
            },
            target: target.clone(),
            open: None,
            digest: Sha256::new(),
            size: 0,
            existing: BTreeSet::new(),
            emitted: BTreeMap::new(),
            files: Vec::new(),
            unchanged: Vec::new(),
        };
        match target {
            OutputTarget::File { path, .. } => {
                stage.open = Some(Pending::open(path.clone(), true).map_err(io("cannot read", path))?);
            }
            OutputTarget::Directory { path, .. } => {
                let created = create_dirs(path, template.owner).map_err(io("cannot create directory", path))?;
                stage.place.created.0.extend(created);
                let absolute = std::path::absolute(path).map_err(io("cannot resolve", path))?;
                stage.place.know(path.clone(), absolute);
                stage.existing = list_files(path)
                    .map_err(io("cannot list directory", path))?
                    .into_iter()
                    .collect();
                stage.place.root = Some(path.clone());
            }
        }
        Ok(stage)
    }

    /// The staged output, once the render is over and succeeded.
    pub fn finish(mut self) -> Result<Staged> {
        let template = self.template.name.clone();
        let io = |action, path: &Path| super::io_error(&template, action, path);
        let checksum = match self.open.take() {
            Some(pending) => {
                let target = pending.target.clone();
                self.finish_file(pending).map_err(io("cannot stage", &target))?;
                hex(&self.digest.finalize_reset())
            }
            None => {
                let root = self.target.path();
                refuse_file_and_directory(&template, root, &self.emitted)?;
                let mut digest = Sha256::new();
                for (name, (len, sum)) in &self.emitted {
                    digest.update(name.as_bytes());
                    digest.update([0]);
                    digest.update(len.to_be_bytes());
                    digest.update(sum);
                }
                hex(&digest.finalize())
            }
        };
        let emitted = &self.emitted;
        let stale = std::mem::take(&mut self.existing)
            .into_iter()
            .filter(|rel| !emitted.contains_key(rel.to_string_lossy().as_ref()))
            .map(|rel| self.target.path().join(rel))
            .collect();
        Ok(Staged {
            template: self.template,
            fsync_dirs: self.place.fsync_dirs,
            files: self.files,
            unchanged: self.unchanged,
            written: Vec::new(),
            stale,
            root: self.place.root,
            size: self.size,
            checksum,
            made: std::mem::take(&mut self.place.created),
        })
    }

    fn finish_file(&mut self, pending: Pending) -> io::Result<()> {
        let target = pending.target.clone();
        match pending.finish(&mut self.place)? {
            Some(file) => self.files.push(file),
            None => self.unchanged.push(target),
        }
        Ok(())
    }

    /// Stages one file of a directory output.
    fn stage_file(&mut self, target: &Path, existed: bool, content: &[u8]) -> io::Result<()> {
        let mut pending = Pending::open(target.to_owned(), existed)?;
        // A file of another size is not read.
        if pending
            .old
            .as_ref()
            .is_some_and(|old| old.len() != content.len() as u64)
        {
            pending.old = None;
        }
        pending.write(content, &mut self.place)?;
        self.finish_file(pending)
    }

    /// Gives each anonymous file staged so far a staging name beside its
    /// target and closes it; the files staged after it are named.
    fn name_anonymous(&mut self) -> io::Result<()> {
        self.place.anonymous = None;
        for staged in &mut self.files {
            if let Staging::Anonymous(file) = &staged.file {
                staged.file = Staging::Named(file.named_beside(&staged.target)?);
            }
        }
        Ok(())
    }
}

impl Write for Stage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(pending) = self.open.as_mut() else {
            return Ok(buf.len());
        };
        self.digest.update(buf);
        self.size += buf.len() as u64;
        pending
            .write(buf, &mut self.place)
            .map_err(|e| about(e, &pending.target))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Stage {
    fn file(&mut self, name: &str, content: &[u8]) -> io::Result<Emitted> {
        let sum: [u8; 32] = Sha256::digest(content).into();
        if let Some(&(len, earlier)) = self.emitted.get(name) {
            let same = len == content.len() as u64 && earlier == sum;
            return Ok(if same { Emitted::Same } else { Emitted::Different });
        }
        let target = self.target.path().join(name);
        // A name the listing did not find needs no look at its target.
        let existed = self.existing.contains(Path::new(name));
        let staged = match self.stage_file(&target, existed, content) {
            // Every descriptor the process may have is open: the anonymous
            // files this stage holds get staging names and are closed, and
            // its other files are staged named (closed once written).
            Err(e) if anonymous::out_of_descriptors(&e) && self.place.anonymous.is_some() => {
                tracing::debug!(error = %e, "out of file descriptors: staging named files");
                self.name_anonymous()
                    .and_then(|()| self.stage_file(&target, existed, content))
            }
            staged => staged,
        };
        staged.map_err(|e| about(e, &target))?;
        self.emitted.insert(name.to_string(), (content.len() as u64, sum));
        self.size += 1;
        Ok(Emitted::New)
    }
}

impl Pending {
    /// Opens what is at `target`, unless nothing is (`existed` false).
    fn open(target: PathBuf, existed: bool) -> io::Result<Pending> {
        let (old, existed) = if existed {
            match previous::open(&target)? {
                Found::None => (None, false),
                Found::Other => (None, true),
                Found::File(old) => (Some(old), true),
            }
        } else {
            (None, false)
        };
        Ok(Pending {
            target,
            old,
            existed,
            same: 0,
            temp: None,
            buffer: Vec::new(),
        })
    }

    fn write(&mut self, bytes: &[u8], place: &mut Place) -> io::Result<()> {
        if self.buffer.is_empty() && bytes.len() >= BUFFER {
            return self.take(bytes, place);
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= BUFFER {
            self.drain(place)?;
        }
        Ok(())
    }

    fn drain(&mut self, place: &mut Place) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        self.take(&buffer, place)?;
        self.buffer = buffer;
        self.buffer.clear();
        Ok(())
    }

    /// Compares `bytes` with the old file while they match it; writes them
    /// to the temp file from the first difference on.
    fn take(&mut self, bytes: &[u8], place: &mut Place) -> io::Result<()> {
        if self.temp.is_none() {
            if let Some(old) = self.old.as_mut()
                && old.holds(self.same, bytes)?
            {
                self.same += bytes.len() as u64;
                return Ok(());
            }
            self.diverge(place)?;
        }
        let temp = self.temp.as_mut().expect("a temp file once the bytes differ");
        temp.file_mut().write_all(bytes)
    }

    /// Makes the temp file, with the bytes found equal to the old file's.
    fn diverge(&mut self, place: &mut Place) -> io::Result<()> {
        let mut temp = place.temp_file(&self.target, !self.existed)?;
        if self.same > 0 {
            let old = self.old.as_mut().expect("equal bytes were read from the old file");
            old.copy_prefix(self.same, temp.file_mut())?;
        }
        self.old = None;
        self.temp = Some(temp);
        Ok(())
    }

    /// The staged file; `None` when the old file holds exactly the new
    /// bytes (its mode and owner are then made right in place).
    fn finish(mut self, place: &mut Place) -> io::Result<Option<StagedFile>> {
        self.drain(place)?;
        if self.temp.is_none() {
            if let Some(old) = &self.old
                && old.ends_at(self.same)?
            {
                ensure_mode(&self.target, &old.meta, place.mode)?;
                if let Some(owner) = place.owner {
                    owner::ensure(owner, &self.target)?;
                }
                return Ok(None);
            }
            self.diverge(place)?;
        }
        let temp = self.temp.take().expect("a temp file once the bytes differ");
        let file = temp.file();
        if !umask_keeps(place.mode) {
            file.set_permissions(fs::Permissions::from_mode(place.mode))?;
        }
        if let Some(owner) = place.owner {
            owner::apply_to(owner, file)?;
        }
        if place.fsync {
            file.sync_all()?;
            place.fsync_dirs.insert(super::dir_of(&self.target).to_owned());
        }
        let file = match temp {
            // Closed now: a directory output may stage more files than a
            // process may keep open (anonymous ones are within a budget).
            Temp::Named(file) => Staging::Named(file.into_temp_path()),
            Temp::Anonymous(file) => Staging::Anonymous(file),
        };
        Ok(Some(StagedFile {
            file,
            target: self.target,
            new: !self.existed,
        }))
    }
}

impl Place {
    /// Records that `dir` exists, its files staged in `absolute`.
    fn know(&mut self, dir: PathBuf, absolute: PathBuf) {
        if self.anonymous.is_some() && !anonymous::pays_in(&absolute) {
            self.no_anonymous.insert(absolute.clone());
        }
        self.made_dirs.insert(dir, absolute);
    }

    /// A temp file in `target`'s directory, made if need be: anonymous for
    /// a `new` file (nothing at `target`) while the budget and the file
    /// system allow.
    fn temp_file(&mut self, target: &Path, new: bool) -> io::Result<Temp> {
        let dir = super::dir_of(target);
        if !self.made_dirs.contains_key(dir) {
            let stage_in = match create_dirs(dir, self.owner) {
                Ok(created) => {
                    // Deeper than those made before.
                    let before = std::mem::take(&mut self.created.0);
                    self.created.0 = created.into_iter().chain(before).collect();
                    dir.to_owned()
                }
                // A file of the last render stands where this one needs a
                // directory (`a`, now `a/b`): the commit moves it aside;
                // until then the new file is staged in the nearest directory.
                Err(e) => self.root.as_deref().and_then(|root| nearest_dir(root, dir)).ok_or(e)?,
            };
            let absolute = std::path::absolute(&stage_in)?;
            self.know(dir.to_owned(), absolute);
        }
        let stage_in = &self.made_dirs[dir];
        if let Some(budget) = self.anonymous.as_ref().filter(|_| new)
            && !self.no_anonymous.contains(stage_in)
        {
            match Anonymous::create(stage_in, self.mode, budget) {
                Ok(Some(file)) => return Ok(Temp::Anonymous(file)),
                Ok(None) => {}
                Err(error) if anonymous::unsupported(&error) => {
                    tracing::debug!(dir = %stage_in.display(), %error, "no anonymous files here: staging named files");
                    self.no_anonymous.insert(stage_in.clone());
                }
                Err(e) => return Err(e),
            }
        }
        // An absolute directory spares the temp file a getcwd of its own.
        tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .permissions(fs::Permissions::from_mode(self.mode))
            .tempfile_in(stage_in)
            .map(Temp::Named)
    }
}

/// `e`, naming the file it is about (the render reports it).
fn about(e: io::Error, target: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot stage the new {}: {e}", target.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
