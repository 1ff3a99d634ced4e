//! Whole directory trees, for comparing outputs before and after a run.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Every regular file below `root`, by relative path, with its bytes.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                files.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    files
}
