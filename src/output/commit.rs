//! The commit step of a write: staged files renamed into place, all or
//! nothing (DESIGN 5.11). Each replaced file's previous version is kept (a
//! hard link, or a copy where links fail) until every rename succeeded; if one
//! fails, the files already replaced are restored and the ones created are
//! removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

use super::{Error, STAGING_PREFIX};

/// What was at a target before the commit replaced it.
enum Previous {
    /// Nothing: undoing the rename removes the file.
    Absent,
    /// The old file, under a staging name beside it.
    Kept(TempPath),
}

/// The renames of one write so far, in order.
#[derive(Default)]
pub(super) struct Commit {
    done: Vec<(PathBuf, Previous)>,
}

impl Commit {
    /// Renames `staged` onto `target`, keeping what was there. On an error
    /// the commit is rolled back before it is returned.
    pub(super) fn replace(&mut self, template: &str, staged: TempPath, target: PathBuf) -> Result<(), Error> {
        let previous = match keep(&target) {
            Ok(previous) => previous,
            Err(source) => {
                self.roll_back();
                return Err(Error::Io {
                    template: template.to_owned(),
                    action: "cannot keep the previous version of",
                    path: target,
                    source,
                });
            }
        };
        if let Err(e) = staged.persist(&target) {
            self.roll_back();
            return Err(Error::Io {
                template: template.to_owned(),
                action: "cannot replace",
                path: target,
                source: e.error,
            });
        }
        self.done.push((target, previous));
        Ok(())
    }

    /// Puts every replaced file back, newest first, and removes the created
    /// ones. What cannot be undone is logged: nothing else can be done then.
    fn roll_back(&mut self) {
        while let Some((target, previous)) = self.done.pop() {
            let undone = match previous {
                Previous::Absent => fs::remove_file(&target),
                Previous::Kept(kept) => kept.persist(&target).map_err(|e| e.error),
            };
            match undone {
                Ok(()) => tracing::info!(path = %target.display(), "file restored after a failed commit"),
                Err(error) => {
                    tracing::error!(path = %target.display(), %error, "cannot restore the file after a failed commit")
                }
            }
        }
    }

    /// Every rename succeeded: the previous versions go (when dropped).
    pub(super) fn finish(self) {}
}

/// A link to (or else a copy of) the file at `target` under a staging name,
/// or [`Previous::Absent`] when there is none.
fn keep(target: &Path) -> io::Result<Previous> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Previous::Absent),
        Err(e) => return Err(e),
        Ok(meta) if meta.is_dir() => return Err(io::Error::other("it is a directory")),
        Ok(_) => {}
    }
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix(STAGING_PREFIX);
        builder
    };
    let linked = builder.make_in(dir, |path| fs::hard_link(target, path));
    let kept = match linked {
        Ok(kept) => kept,
        // A file system without hard links: a copy does.
        Err(_) => builder.make_in(dir, |path| fs::copy(target, path).map(drop))?,
    };
    Ok(Previous::Kept(kept.into_temp_path()))
}
