//! New files staged as anonymous files (`O_TMPFILE`) in their target's
//! directory: no directory entry until the commit links the file at its
//! target, one change where a named temp file takes three (create, then
//! rename, which also removes the name). Each stays an open file until the
//! commit, so their number is kept within a [`Budget`] below the process's
//! limit of open files; beyond it, where a file system has no anonymous
//! files, or without `/proc` to link them from, files are staged named. A
//! stage that finds no descriptor left all the same (other open files took
//! them) names the anonymous files it holds and closes them.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::Resource;
use tempfile::TempPath;

use super::STAGING_PREFIX;

/// Open files left for everything else: sockets, the store's watches, the
/// files a render reads, a check's pipes.
const RESERVED: u64 = 256;

/// The most anonymous files open at once, whatever the limit.
const MOST: u64 = 65_536;

/// The table of open files is grown to this many slots at start.
const GROWN: usize = 16_384;

/// `f_type` of a tmpfs, where a named file costs less than an anonymous one
/// (no journal to spare; linking by `/proc` path costs more than the renames).
const TMPFS_MAGIC: i128 = 0x0102_1994;

/// How many anonymous files may be open at once, and how many are.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    open: AtomicUsize,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            open: AtomicUsize::new(0),
        })
    }

    /// The process's budget: its soft limit of open files less [`RESERVED`],
    /// at most [`MOST`]; none without `/proc/self/fd`, which linking needs.
    pub(super) fn process() -> Arc<Budget> {
        static PROCESS: OnceLock<Arc<Budget>> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                if !Path::new("/proc/self/fd").is_dir() {
                    return Budget::new(0);
                }
                let soft = rustix::process::getrlimit(Resource::Nofile)
                    .current
                    .unwrap_or(MOST + RESERVED);
                Budget::new(soft.saturating_sub(RESERVED).min(MOST) as usize)
            })
            .clone()
    }

    fn take(self: &Arc<Budget>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One anonymous file's place in its budget, given back when dropped.
#[derive(Debug)]
struct Slot(Arc<Budget>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open file with no name yet; it vanishes if dropped unlinked.
#[derive(Debug)]
pub(super) struct Anonymous {
    file: File,
    _slot: Slot,
}

impl Anonymous {
    /// An anonymous file in `dir`, created with `mode` (less the umask, as a
    /// named file would be); `None` when `budget` is spent. An error for
    /// which [`unsupported`] holds means the file system has none.
    pub(super) fn create(dir: &Path, mode: u32, budget: &Arc<Budget>) -> io::Result<Option<Anonymous>> {
        let Some(slot) = budget.take() else {
            return Ok(None);
        };
        // Read back by `validate`, hence read and write.
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(mode))?;
        Ok(Some(Anonymous {
            file: File::from(fd),
            _slot: slot,
        }))
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    pub(super) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Gives the file the name `target`, which must not exist (an error of
    /// kind `AlreadyExists` then).
    pub(super) fn link(&self, target: &Path) -> io::Result<()> {
        // Linking the descriptor itself (AT_EMPTY_PATH) needs
        // CAP_DAC_READ_SEARCH; its /proc link does not.
        let fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        rustix::fs::linkat(CWD, fd.as_str(), CWD, target, AtFlags::SYMLINK_FOLLOW)?;
        Ok(())
    }

    /// The file under a fresh staging name beside `target` (a commit whose
    /// link found `target` taken goes the long way with it); the name is
    /// removed when the returned path is dropped.
    pub(super) fn named_beside(&self, target: &Path) -> io::Result<TempPath> {
        let named = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .make_in(super::dir_of(target), |path| self.link(path))?;
        Ok(named.into_temp_path())
    }

    /// The whole content written so far.
    pub(super) fn read_back(&self) -> io::Result<Vec<u8>> {
        let mut file = &self.file;
        file.rewind()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// Whether new files in `dir` are better staged anonymous: not on a tmpfs
/// (see [`TMPFS_MAGIC`]).
pub(super) fn pays_in(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok_and(|fs| i128::from(fs.f_type) != TMPFS_MAGIC)
}

/// Whether `e`, from [`Anonymous::create`], says that the file system (or
/// the kernel) has no anonymous files: staging there goes named.
pub(super) fn unsupported(e: &io::Error) -> bool {
    Errno::from_io_error(e).is_some_and(|errno| [Errno::OPNOTSUPP, Errno::ISDIR, Errno::INVAL].contains(&errno))
}

/// Whether `e` says that no more files can be opened: this process (or the
/// system) has as many open as it may.
pub(super) fn out_of_descriptors(e: &io::Error) -> bool {
    Errno::from_io_error(e).is_some_and(|errno| [Errno::MFILE, Errno::NFILE].contains(&errno))
}

/// Grows this process's table of open files, once at start and before any
/// staging, to hold the anonymous files a large directory output keeps open
/// until its commit. The limit of open files is left as it was given, so
/// that children (exec mode, checks, actions) inherit it unchanged.
pub fn grow_open_files_table() {
    // The kernel grows a process's table of files by doubling it, and each
    // growth in a process of several threads waits for an RCU grace period
    // (10–25 ms here, six of them for 10k files); one growth now, while
    // there is one thread, spares them. 16k slots: 128 KiB of kernel memory.
    let slots = Budget::process().limit.min(GROWN);
    if slots > 0
        && let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), (slots - 1) as i32)
    {
        drop(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_without_anonymous_files_is_told_from_other_failures() {
        for errno in [Errno::OPNOTSUPP, Errno::ISDIR, Errno::INVAL] {
            assert!(unsupported(&errno.into()), "{errno:?}");
        }
        for errno in [Errno::NOENT, Errno::ACCESS, Errno::NOSPC, Errno::MFILE] {
            assert!(!unsupported(&errno.into()), "{errno:?}");
        }
    }

    #[test]
    fn a_budget_gives_no_more_than_its_limit_and_takes_back_what_is_dropped() {
        let budget = Budget::new(2);
        let (a, b) = (budget.take(), budget.take());
        assert!(a.is_some() && b.is_some());
        assert!(budget.take().is_none());
        drop(a);
        assert!(budget.take().is_some());
    }
}
