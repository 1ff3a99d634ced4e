//! `owner:` the numeric user and group given to a template's written files,
//! and to the directories created for them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Owner;

/// Gives `file` (a staged file, still open) `owner`.
pub fn apply_to(owner: Owner, file: &fs::File) -> std::io::Result<()> {
    std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))
}

/// Gives `path` `owner`, unless it has it already (an unchanged file costs
/// no write of its inode).
pub fn ensure(owner: Owner, path: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.uid() != owner.uid || meta.gid() != owner.gid {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))?;
    }
    Ok(())
}
