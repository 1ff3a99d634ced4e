//! `owner:` the numeric user and group of a template's written files, and of
//! the directories a directory output creates. Numeric only: names need a
//! user database, which distroless images do not have.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A `uid:gid` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Reads `UID:GID` (both numeric); `None` for anything else.
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

    /// Gives `file` this owner.
    pub fn apply_to(self, file: &fs::File) -> std::io::Result<()> {
        std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
    }

    /// Gives `path` this owner, unless it has it already (an unchanged file
    /// costs no write of its inode).
    pub fn ensure(self, path: &Path) -> std::io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        if meta.uid() != self.uid || meta.gid() != self.gid {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numeric_uid_gid_pairs_are_owners() {
        assert_eq!(Owner::parse("99:100"), Some(Owner { uid: 99, gid: 100 }));
        assert_eq!(Owner::parse("0:0").map(|o| o.to_string()).as_deref(), Some("0:0"));
        for bad in [
            "haproxy:haproxy",
            "99",
            "99:",
            ":99",
            "-1:5",
            "+1:5",
            "1:2:3",
            " 1:2",
            "99999999999:1",
        ] {
            assert_eq!(Owner::parse(bad), None, "{bad}");
        }
    }
}
