//! The loss guard (DESIGN 5.10): how much of what is on disk now a new
//! render would lose. A file output is measured in bytes, a directory
//! output in files; the pipeline decides what a shrink past `max_shrink`
//! means (refused until accepted, or until it lasted `hold`).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Error, OutputTarget, Result, STAGING_PREFIX};

/// A template's `guard:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// The largest loss, in percent of the old output, written at once.
    pub max_shrink: u8,
    /// How long a refused shrink must last before it is written anyway.
    pub hold: Duration,
}

impl Guard {
    /// `max_shrink` as written (`"50%"`): a whole percentage from 0 to 100.
    pub fn parse_max_shrink(text: &str) -> Option<u8> {
        let digits = text.trim().strip_suffix('%')?.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u8>().ok().filter(|p| *p <= 100)
    }
}

/// What an output is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Files,
}

/// A render that would lose more of an output than its guard allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrink {
    pub template: String,
    /// The output file or directory.
    pub path: PathBuf,
    pub unit: Unit,
    /// The size on disk now.
    pub old: u64,
    /// The size the render would write.
    pub new: u64,
    pub max_shrink: u8,
}

impl Shrink {
    /// The loss in percent of the old size, rounded up: a loss just past
    /// `max_shrink` never reads as equal to it.
    pub fn percent(&self) -> u64 {
        let lost = self.old.saturating_sub(self.new) as u128 * 100;
        lost.div_ceil(u128::from(self.old.max(1))) as u64
    }
}

impl fmt::Display for Shrink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Bytes => "bytes",
            Unit::Files => "files",
        };
        write!(
            f,
            "template `{}`: would shrink {} from {} to {} {unit} ({}% > max_shrink {}%)",
            self.template,
            self.path.display(),
            self.old,
            self.new,
            self.percent(),
            self.max_shrink
        )
    }
}

/// The shrink a new output of size `new` (bytes of a file output, files of
/// a directory output) would make of what is on disk at `target`, if it
/// loses more than `guard.max_shrink` percent. A missing or empty old
/// output has nothing to lose.
pub fn measure(guard: &Guard, template: &str, target: &OutputTarget, new: u64) -> Result<Option<Shrink>> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            template: template.to_owned(),
            action: "cannot measure",
            path,
            source,
        }
    };
    let (unit, old) = match target {
        OutputTarget::File { path, .. } => {
            let old = match fs::metadata(path) {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io(path)(e)),
            };
            (Unit::Bytes, old)
        }
        OutputTarget::Directory { path, .. } => (Unit::Files, count_files(path).map_err(io(path))?),
    };
    let lost = u128::from(old.saturating_sub(new)) * 100;
    let too_much = lost > u128::from(guard.max_shrink) * u128::from(old);
    Ok(too_much.then(|| Shrink {
        template: template.to_owned(),
        path: target.path().to_owned(),
        unit,
        old,
        new,
        max_shrink: guard.max_shrink,
    }))
}

/// Regular files below `root`, staged files left aside; 0 when it does
/// not exist.
fn count_files(root: &Path) -> std::io::Result<u64> {
    let mut count = 0;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max_shrink: u8) -> Guard {
        Guard {
            max_shrink,
            hold: Duration::from_secs(600),
        }
    }

    fn file_target(path: &Path) -> OutputTarget {
        OutputTarget::File {
            path: path.to_owned(),
            written: path.to_owned(),
        }
    }

    fn dir_target(path: &Path) -> OutputTarget {
        OutputTarget::Directory {
            path: path.to_owned(),
            written: path.to_owned(),
        }
    }

    #[test]
    fn a_file_is_measured_in_bytes_and_the_message_names_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cfg");
        fs::write(&path, vec![b'a'; 12034]).unwrap();
        let shrink = measure(&guard(50), "x", &file_target(&path), 0)
            .unwrap()
            .expect("a 100% loss is past 50%");
        assert_eq!((shrink.unit, shrink.old, shrink.new), (Unit::Bytes, 12034, 0));
        assert_eq!(
            shrink.to_string(),
            format!(
                "template `x`: would shrink {} from 12034 to 0 bytes (100% > max_shrink 50%)",
                path.display()
            )
        );
        let smaller = 7000;
        assert_eq!(measure(&guard(50), "x", &file_target(&path), smaller).unwrap(), None);
    }

    #[test]
    fn a_directory_is_measured_in_files_nested_ones_included() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        for name in ["a", "b", "sub/c", "sub/d"] {
            fs::write(dir.path().join(name), "big content").unwrap();
        }
        fs::write(dir.path().join(format!("{STAGING_PREFIX}abcdef")), "").unwrap();
        let target = dir_target(dir.path());
        let shrink = measure(&guard(50), "d", &target, 1).unwrap().unwrap();
        assert_eq!(
            (shrink.unit, shrink.old, shrink.new, shrink.percent()),
            (Unit::Files, 4, 1, 75)
        );
        assert_eq!(measure(&guard(50), "d", &target, 2).unwrap(), None);
    }

    #[test]
    fn a_loss_of_exactly_max_shrink_is_written_one_more_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, vec![b'a'; 200]).unwrap();
        let target = file_target(&path);
        assert_eq!(measure(&guard(50), "x", &target, 100).unwrap(), None);
        let past = measure(&guard(50), "x", &target, 99).unwrap().unwrap();
        assert_eq!(past.percent(), 51, "50.5% reads as 51%, never as max_shrink itself");
        assert_eq!(measure(&guard(100), "x", &target, 0).unwrap(), None);
        assert!(measure(&guard(0), "x", &target, 199).unwrap().is_some());
    }

    #[test]
    fn an_empty_result_after_a_non_empty_one_is_a_full_loss() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("only"), "x").unwrap();
        let shrink = measure(&guard(99), "d", &dir_target(dir.path()), 0).unwrap().unwrap();
        assert_eq!((shrink.old, shrink.new, shrink.percent()), (1, 0, 100));
    }

    #[test]
    fn a_missing_or_empty_old_output_has_nothing_to_lose() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(measure(&guard(0), "x", &file_target(&missing), 0).unwrap(), None);
        assert_eq!(measure(&guard(0), "d", &dir_target(&missing), 0).unwrap(), None);
        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        assert_eq!(measure(&guard(0), "x", &file_target(&empty), 0).unwrap(), None);
        let empty_dir = dir.path().join("empty-dir");
        fs::create_dir(&empty_dir).unwrap();
        assert_eq!(measure(&guard(0), "d", &dir_target(&empty_dir), 0).unwrap(), None);
    }

    #[test]
    fn max_shrink_is_a_whole_percentage_up_to_100() {
        for (text, want) in [
            ("50%", Some(50)),
            ("0%", Some(0)),
            ("100%", Some(100)),
            (" 7 %", Some(7)),
        ] {
            assert_eq!(Guard::parse_max_shrink(text), want, "{text}");
        }
        for text in ["50", "101%", "-1%", "%", "0.5%", "half", "1e2%"] {
            assert_eq!(Guard::parse_max_shrink(text), None, "{text}");
        }
    }
}
