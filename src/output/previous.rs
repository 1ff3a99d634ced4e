//! What is at an output's target before a write: compared with the new
//! bytes, so that an unchanged file is not rewritten, and its mode kept right.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What is at a target before it is written.
pub(super) enum Old {
    None,
    /// Something else than the new bytes.
    Other,
    /// A file holding exactly the new bytes, and its metadata.
    Same(fs::Metadata),
}

/// What is at `path`, compared with `bytes`. A file of another size is not
/// read.
pub(super) fn old_version(path: &Path, bytes: &[u8]) -> std::io::Result<Old> {
    use std::io::Read;
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Old::None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != bytes.len() as u64 {
        return Ok(Old::Other);
    }
    // One byte more than expected shows a file that grew meanwhile.
    let mut old = Vec::with_capacity(bytes.len() + 1);
    file.take(bytes.len() as u64 + 1).read_to_end(&mut old)?;
    Ok(if old == bytes { Old::Same(meta) } else { Old::Other })
}

/// Gives the unchanged file at `path` (whose metadata is `meta`) `mode`.
pub(super) fn ensure_mode(path: &Path, meta: &fs::Metadata, mode: u32) -> std::io::Result<()> {
    let current = meta.permissions().mode() & 0o7777;
    if current != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
