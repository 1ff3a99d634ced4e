//! The commit step of a write: staged files renamed (anonymous ones linked)
//! into place, all or nothing (DESIGN 5.11). Each replaced file's previous version is kept (a
//! hard link, or a copy where links fail) until every rename succeeded; if one
//! fails, the files already replaced are restored and the ones created are
//! removed.
//!
//! In a directory output a file may take the place of a directory of the last
//! render, or need a directory where a file was (`a/b` after `a`): what is in
//! the way is moved aside under a staging name, and removed only when the
//! commit succeeded (put back otherwise). Each file changes by one rename, so
//! a reader of it sees the old version, the new one, or none.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::TempPath;

use super::{Error, STAGING_PREFIX, Staging};

/// One step of a commit, and how to undo it.
enum Step {
    /// A file renamed or linked onto `target`; `previous` is what was there (none:
    /// undoing removes the file).
    Replaced {
        target: PathBuf,
        previous: Option<TempPath>,
    },
    /// A file or directory moved from `path` to `aside` to make room.
    MovedAside { path: PathBuf, aside: PathBuf },
    /// A directory made for a new file.
    Made(PathBuf),
}

/// The steps of one write so far, in order.
#[derive(Default)]
pub(super) struct Commit {
    done: Vec<Step>,
}

impl Commit {
    /// Renames (links) `staged` onto `target`, keeping what was there. `root` is the
    /// directory output `target` belongs to, inside which what is in the way
    /// may be moved aside; `new`: nothing was at `target` when it was staged.
    /// On an error the commit is rolled back before it is returned.
    pub(super) fn replace(
        &mut self,
        template: &str,
        staged: Staging,
        target: PathBuf,
        root: Option<&Path>,
        new: bool,
    ) -> Result<(), Error> {
        match self.try_replace(staged, &target, root, new) {
            Ok(()) => Ok(()),
            Err((action, path, source)) => {
                self.roll_back();
                Err(Error::Io {
                    template: template.to_owned(),
                    action,
                    path: path.unwrap_or(target),
                    source,
                })
            }
        }
    }

    fn try_replace(&mut self, staged: Staging, target: &Path, root: Option<&Path>, new: bool) -> Result<(), Failure> {
        if let Some(root) = root {
            self.clear_the_way(root, target)?;
        }
        // A target that was absent most likely still is: a rename (a link)
        // that replaces nothing is the whole step. If something came (or the
        // file system cannot refuse to replace), the file goes the long way.
        let placed = match staged {
            Staging::Named(staged) if new => staged.persist_noclobber(target).map_err(|refused| refused.path),
            Staging::Named(staged) => Err(staged),
            Staging::Anonymous(staged) => match staged.link(target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Err(staged.named_beside(target).map_err(|e| ("cannot stage", None, e))?)
                }
                Err(e) => return Err(("cannot link", None, e)),
            },
        };
        let staged = match placed {
            Ok(()) => {
                self.done.push(Step::Replaced {
                    target: target.to_owned(),
                    previous: None,
                });
                return Ok(());
            }
            Err(staged) => staged,
        };
        // One look at the target serves both: a directory in the way is
        // moved aside (inside a directory output), a file is kept.
        let previous = match fs::symlink_metadata(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Ok(meta) if meta.is_dir() && root.is_some() => {
                self.move_aside(target)?;
                None
            }
            Ok(meta) if meta.is_dir() => {
                let e = io::Error::other("it is a directory");
                return Err(("cannot keep the previous version of", None, e));
            }
            Ok(_) => Some(keep(target).map_err(|e| ("cannot keep the previous version of", None, e))?),
            Err(e) => return Err(("cannot keep the previous version of", None, e)),
        };
        staged.persist(target).map_err(|e| ("cannot replace", None, e.error))?;
        self.done.push(Step::Replaced {
            target: target.to_owned(),
            previous,
        });
        Ok(())
    }

    /// Makes room for `target` inside `root`: a file where one of its
    /// directories goes is moved aside; its missing directories are made.
    fn clear_the_way(&mut self, root: &Path, target: &Path) -> Result<(), Failure> {
        let parents: Vec<&Path> = target
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(root) && *a != root)
            .collect();
        for dir in parents.into_iter().rev() {
            match fs::symlink_metadata(dir) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => self.move_aside(dir)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(("cannot read", Some(dir.to_owned()), e)),
            }
            fs::create_dir(dir).map_err(|e| ("cannot create directory", Some(dir.to_owned()), e))?;
            self.done.push(Step::Made(dir.to_owned()));
        }
        Ok(())
    }

    fn move_aside(&mut self, path: &Path) -> Result<(), Failure> {
        let aside = aside_name(path);
        fs::rename(path, &aside).map_err(|e| ("cannot move aside", Some(path.to_owned()), e))?;
        self.done.push(Step::MovedAside {
            path: path.to_owned(),
            aside,
        });
        Ok(())
    }

    /// Undoes every step, newest first. What cannot be undone is logged:
    /// nothing else can be done then.
    fn roll_back(&mut self) {
        while let Some(step) = self.done.pop() {
            let (path, undone) = match step {
                Step::Replaced { target, previous } => {
                    let undone = match previous {
                        None => fs::remove_file(&target),
                        Some(kept) => kept.persist(&target).map_err(|e| e.error),
                    };
                    (target, undone)
                }
                Step::MovedAside { path, aside } => {
                    let undone = fs::rename(&aside, &path);
                    (path, undone)
                }
                Step::Made(dir) => {
                    let undone = fs::remove_dir(&dir);
                    (dir, undone)
                }
            };
            match undone {
                Ok(()) => tracing::debug!(path = %path.display(), "undone after a failed commit"),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "cannot restore after a failed commit")
                }
            }
        }
    }

    /// Every step succeeded: previous versions and what was moved aside go.
    /// Returns the places things were moved aside from (stale files there
    /// are gone with them).
    pub(super) fn finish(self) -> Vec<PathBuf> {
        let mut moved = Vec::new();
        for step in self.done {
            if let Step::MovedAside { path, aside } = step {
                moved.push(path);
                let removed = if aside.is_dir() {
                    fs::remove_dir_all(&aside)
                } else {
                    fs::remove_file(&aside)
                };
                if let Err(error) = removed {
                    tracing::warn!(path = %aside.display(), %error, "cannot remove what a commit moved aside");
                }
            }
        }
        moved
    }
}

/// What failed, on which path (the target when `None`), and why.
type Failure = (&'static str, Option<PathBuf>, io::Error);

/// A fresh staging name beside `path`. Only this process writes staging
/// names into an output directory, so a name that is free stays free.
fn aside_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = super::dir_of(path);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let candidate = dir.join(format!("{STAGING_PREFIX}aside-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
    }
}

/// A link to (or else a copy of) the file at `target`, which exists, under
/// a staging name.
fn keep(target: &Path) -> io::Result<TempPath> {
    let dir = super::dir_of(target);
    let mut builder = tempfile::Builder::new();
    builder.prefix(STAGING_PREFIX);
    let kept = match builder.make_in(dir, |path| fs::hard_link(target, path)) {
        Ok(kept) => kept,
        // A file system without hard links: a copy does.
        Err(_) => builder.make_in(dir, |path| fs::copy(target, path).map(drop))?,
    };
    Ok(kept.into_temp_path())
}
