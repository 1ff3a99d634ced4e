//! What is at an output's target before a write: compared with the new
//! bytes piece by piece as the render produces them, so that an unchanged
//! file is neither held in memory nor rewritten, and its mode kept right.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

/// How much of the old file is read at once.
const CHUNK: usize = 64 * 1024;

/// What is at a target before it is written.
pub(super) enum Found {
    None,
    /// Something else than a regular file.
    Other,
    File(Box<Old>),
}

/// The regular file at a target, open for comparing with the new bytes.
pub(super) struct Old {
    file: fs::File,
    pub(super) meta: fs::Metadata,
    scratch: Vec<u8>,
}

/// What is at `path`.
pub(super) fn open(path: &Path) -> io::Result<Found> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Found::Other);
    }
    Ok(Found::File(Box::new(Old {
        file,
        meta,
        scratch: Vec::new(),
    })))
}

impl Old {
    /// The old file's size when it was opened.
    pub(super) fn len(&self) -> u64 {
        self.meta.len()
    }

    /// Whether the old file holds `bytes` at `offset`.
    pub(super) fn holds(&mut self, offset: u64, bytes: &[u8]) -> io::Result<bool> {
        if offset + bytes.len() as u64 > self.len() {
            return Ok(false);
        }
        let mut at = offset;
        for piece in bytes.chunks(CHUNK) {
            self.scratch.resize(piece.len(), 0);
            match self.file.read_exact_at(&mut self.scratch, at) {
                Ok(()) => {}
                // Shrunk meanwhile: not the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            if self.scratch != piece {
                return Ok(false);
            }
            at += piece.len() as u64;
        }
        Ok(true)
    }

    /// Whether the old file ends after `len` bytes: one byte more than
    /// expected shows a file that grew meanwhile.
    pub(super) fn ends_at(&self, len: u64) -> io::Result<bool> {
        if len != self.len() {
            return Ok(false);
        }
        let mut one = [0u8];
        Ok(self.file.read_at(&mut one, len)? == 0)
    }

    /// Copies the old file's first `len` bytes (found equal to the new ones)
    /// into `out`.
    pub(super) fn copy_prefix(&mut self, len: u64, out: &mut impl Write) -> io::Result<()> {
        let mut at = 0;
        while at < len {
            let n = CHUNK.min((len - at) as usize);
            self.scratch.resize(n, 0);
            self.file.read_exact_at(&mut self.scratch, at)?;
            out.write_all(&self.scratch)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Gives the unchanged file at `path` (whose metadata is `meta`) `mode`.
pub(super) fn ensure_mode(path: &Path, meta: &fs::Metadata, mode: u32) -> std::io::Result<()> {
    let current = meta.permissions().mode() & 0o7777;
    if current != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
