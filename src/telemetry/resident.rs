//! Giving back the memory that only the start needed.
//!
//! The start (argument parsing, the config, TLS, discovery, the initial
//! lists, the first render) runs code from all over the binary. Each page of
//! code it touches stays mapped, and the kernel maps its neighbours along with
//! it (fault-around), so after the start most of the executable counts as
//! resident although an idle watch runs a small part of it. [`trim`] unmaps
//! the clean, read-only file mappings (code and constants of the executable
//! and its libraries): the pages stay in the page cache, and what runs again
//! is mapped again on its first use. It also hands the allocator's free pages
//! back to the kernel. It is called three times: by `run` once the start-up
//! is over and before the listings fill the stores, by the pipeline once
//! every listing is in and before the first render (where the memory peaks,
//! a one-shot's too), and by `run` after the first render.

use std::fs;

/// What [`trim`] did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Bytes of file mappings unmapped (resident before, by the kernel's count).
    pub mapped_bytes: u64,
    /// Mappings unmapped.
    pub mappings: usize,
}

/// One mapping of `/proc/self/smaps` that can be dropped and faulted back in
/// with the same contents.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Droppable {
    start: usize,
    end: usize,
    resident_kib: u64,
}

/// Unmaps clean read-only file mappings and trims the heap (see the module
/// doc). Does nothing where `/proc/self/smaps` cannot be read.
pub fn trim() -> Trimmed {
    let mut trimmed = Trimmed::default();
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return trimmed;
    };
    for mapping in droppable(&smaps) {
        if advise_dontneed(mapping.start, mapping.end - mapping.start) {
            trimmed.mapped_bytes += mapping.resident_kib * 1024;
            trimmed.mappings += 1;
        }
    }
    trim_heap();
    trimmed
}

/// The mappings of `smaps` that are backed by a file, not writable, and hold
/// no private copy of any page (`Anonymous: 0`): dropping such a page loses
/// nothing, as the next access reads the same bytes from the file. Mappings
/// that relocation wrote to (RELRO) hold private copies and are kept.
fn droppable(smaps: &str) -> Vec<Droppable> {
    let mut found = Vec::new();
    let mut current: Option<(Droppable, bool)> = None;
    let mut finish = |entry: Option<(Droppable, bool)>| {
        if let Some((mapping, true)) = entry
            && mapping.resident_kib > 0
        {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        if let Some((range, rest)) = mapping_header(line) {
            finish(current.take());
            let mut fields = rest.split_whitespace();
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let candidate =
                perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p') && path.starts_with('/');
            current = Some((
                Droppable {
                    start: range.0,
                    end: range.1,
                    resident_kib: 0,
                },
                candidate,
            ));
        } else if let Some((mapping, candidate)) = current.as_mut() {
            let kib =
                |name: &str| -> Option<u64> { line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok() };
            if let Some(rss) = kib("Rss:") {
                mapping.resident_kib = rss;
            } else if let Some(anonymous) = kib("Anonymous:") {
                *candidate &= anonymous == 0;
            }
        }
    }
    finish(current);
    found
}

/// `start-end rest` of a mapping's first line in smaps.
fn mapping_header(line: &str) -> Option<((usize, usize), &str)> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some(((start, end), rest))
}

#[allow(unsafe_code)]
fn advise_dontneed(start: usize, len: usize) -> bool {
    // SAFETY: `start..start+len` is a whole mapping of this process that
    // `droppable` found to be file-backed, read-only and without private
    // pages. MADV_DONTNEED on it only drops page-table entries; every later
    // access faults the same bytes back in from the file, so no memory that
    // Rust code holds a reference to changes. A mapping that went away since
    // smaps was read makes the call fail with ENOMEM, which is harmless.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of the allocator's own
    // arenas to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55c824638000-55c8249e3000 r--p 00000000 fe:00 5704170                    /usr/bin/kube-template
Size:               3756 kB
Rss:                1376 kB
Anonymous:             0 kB
55c8249e3000-55c82543f000 r-xp 003aa000 fe:00 5704170                    /usr/bin/kube-template
Size:              10608 kB
Rss:                8684 kB
Anonymous:             0 kB
55c82543f000-55c8254c0000 r--p 00e05000 fe:00 5704170                    /usr/bin/kube-template
Size:                516 kB
Rss:                 516 kB
Anonymous:           516 kB
55c8254c0000-55c8254c3000 rw-p 00e85000 fe:00 5704170                    /usr/bin/kube-template
Size:                 12 kB
Rss:                  12 kB
Anonymous:            12 kB
55c8254c3000-55c8254c5000 rw-p 00000000 00:00 0                          [heap]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             8 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0                          [vdso]
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
7f0000002000-7f0000004000 r--p 00000000 fe:00 99                         /usr/lib/libc.so.6
Size:                  8 kB
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_with_resident_pages_are_dropped() {
        let found = droppable(SMAPS);
        assert_eq!(
            found,
            vec![
                Droppable {
                    start: 0x55c824638000,
                    end: 0x55c8249e3000,
                    resident_kib: 1376
                },
                Droppable {
                    start: 0x55c8249e3000,
                    end: 0x55c82543f000,
                    resident_kib: 8684
                },
            ]
        );
    }

    #[test]
    fn trimming_lowers_the_resident_file_pages_and_the_code_still_runs() {
        let resident_file = || -> u64 {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        let before = resident_file();
        let trimmed = trim();
        assert!(trimmed.mappings > 0, "{trimmed:?}");
        let after = resident_file();
        assert!(after < before, "RssFile {before} kB before, {after} kB after");
        // Code and constants come back on their next use.
        let text: String = (1..=3).map(|i| format!("{i:>3}")).collect();
        assert_eq!(text, "  1  2  3");
        assert_eq!(droppable(SMAPS).len(), 2);
    }
}
