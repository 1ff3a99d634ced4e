//! `owner:` the numeric user and group given to a template's written files,
//! and to the directories created for them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The numeric user and group of written files (`owner:`). Numeric only:
/// names need a user database, which distroless images do not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Reads `UID:GID`, both numeric; `None` for anything else.
    pub fn parse(text: &str) -> Option<Owner> {
        let (uid, gid) = text.split_once(':')?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        Some(Owner {
            uid: number(uid)?,
            gid: number(gid)?,
        })
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

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
