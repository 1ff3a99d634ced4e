//! Unified diffs of two texts, line by line, as `diff -u` prints them.
//!
//! Myers' O((N+M)·D) algorithm on the lines between the common prefix and
//! suffix. Expected outputs usually differ in a few lines, so D is small; past
//! `MAX_EDITS` the middle is shown as one replacement rather than spending
//! quadratic time and memory on a minimal script.

use std::fmt::Write;

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

/// Edit distance beyond which the differing middle is shown as a whole.
const MAX_EDITS: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Delete,
    Insert,
}

/// `diff -u` of `old` (labelled `old_name`) against `new`; empty when equal.
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let script = edit_script(&a, &b);
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for hunk in hunks(&script) {
        write_hunk(&mut out, &script[hunk.clone()], &a, &b, position(&script, hunk.start));
    }
    out
}

/// The line numbers (0-based) of `a` and `b` at `script[index]`.
fn position(script: &[Op], index: usize) -> (usize, usize) {
    script[..index].iter().fold((0, 0), |(i, j), op| match op {
        Op::Keep => (i + 1, j + 1),
        Op::Delete => (i + 1, j),
        Op::Insert => (i, j + 1),
    })
}

/// Ranges of the script to print: each change with up to [`CONTEXT`] kept
/// lines around it, ranges closer than twice that merged.
fn hunks(script: &[Op]) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, op) in script.iter().enumerate() {
        if *op == Op::Keep {
            continue;
        }
        let start = i.saturating_sub(CONTEXT);
        let end = (i + 1 + CONTEXT).min(script.len());
        match ranges.last_mut() {
            Some(last) if start <= last.end => last.end = end,
            _ => ranges.push(start..end),
        }
    }
    ranges
}

fn write_hunk(out: &mut String, ops: &[Op], a: &[&str], b: &[&str], (mut i, mut j): (usize, usize)) {
    let old_len = ops.iter().filter(|op| **op != Op::Insert).count();
    let new_len = ops.iter().filter(|op| **op != Op::Delete).count();
    // `diff -u` numbers an empty side by the line before it.
    let start = |at: usize, len: usize| if len == 0 { at } else { at + 1 };
    let _ = writeln!(
        out,
        "@@ -{},{} +{},{} @@",
        start(i, old_len),
        old_len,
        start(j, new_len),
        new_len
    );
    for op in ops {
        let (sign, line) = match op {
            Op::Keep => {
                i += 1;
                j += 1;
                (' ', a[i - 1])
            }
            Op::Delete => {
                i += 1;
                ('-', a[i - 1])
            }
            Op::Insert => {
                j += 1;
                ('+', b[j - 1])
            }
        };
        out.push(sign);
        out.push_str(line);
        if !line.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
}

/// The shortest edit script from `a` to `b` (or a near one, see [`MAX_EDITS`]).
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut script = vec![Op::Keep; prefix];
    match myers(mid_a, mid_b) {
        Some(middle) => script.extend(middle),
        None => {
            script.extend(std::iter::repeat_n(Op::Delete, mid_a.len()));
            script.extend(std::iter::repeat_n(Op::Insert, mid_b.len()));
        }
    }
    script.extend(std::iter::repeat_n(Op::Keep, suffix));
    script
}

/// Myers' greedy forward search, keeping each round's frontier to trace the
/// path back. `None` when more than [`MAX_EDITS`] edits are needed.
fn myers(a: &[&str], b: &[&str]) -> Option<Vec<Op>> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max = (a.len() + b.len()).min(MAX_EDITS) as isize;
    let offset = max + 1;
    let mut v = vec![0isize; 2 * offset as usize + 1];
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=max {
        trace.push(v.clone());
        for k in (-d..=d).step_by(2) {
            let idx = (k + offset) as usize;
            let mut x = if k == -d || (k != d && v[idx - 1] < v[idx + 1]) {
                v[idx + 1]
            } else {
                v[idx - 1] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[idx] = x;
            if x >= n && y >= m {
                return Some(backtrack(&trace, offset, n, m));
            }
        }
    }
    None
}

fn backtrack(trace: &[Vec<isize>], offset: isize, n: isize, m: isize) -> Vec<Op> {
    let (mut x, mut y) = (n, m);
    let mut ops = Vec::new();
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let k = x - y;
        let prev_k = if k == -d || (k != d && v[(k - 1 + offset) as usize] < v[(k + 1 + offset) as usize]) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = v[(prev_k + offset) as usize];
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            ops.push(Op::Keep);
            x -= 1;
            y -= 1;
        }
        if d > 0 {
            ops.push(if x == prev_x { Op::Insert } else { Op::Delete });
        }
        x = prev_x;
        y = prev_y;
    }
    ops.reverse();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_give_no_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n"), "");
    }

    #[test]
    fn one_changed_line_has_three_lines_of_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified("expect/x", "rendered/x", old, new),
            "--- expect/x\n+++ rendered/x\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn distant_changes_give_two_hunks_and_close_ones_one() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("2\n", "two\n").replace("19\n", "nineteen\n");
        let diff = unified("a", "b", &old, &new);
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        let near = old.replace("2\n", "two\n").replace("5\n", "five\n");
        let diff = unified("a", "b", &old, &near);
        assert_eq!(diff.matches("@@ -").count(), 1, "{diff}");
    }

    #[test]
    fn insertion_into_an_empty_file_and_missing_final_newline() {
        assert_eq!(unified("a", "b", "", "x\n"), "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n");
        assert_eq!(
            unified("a", "b", "x\n", "x"),
            "--- a\n+++ b\n@@ -1,1 +1,1 @@\n-x\n+x\n\\ No newline at end of file\n"
        );
    }

    #[test]
    fn script_is_minimal_on_interleaved_edits() {
        let a = ["a\n", "b\n", "c\n", "a\n", "b\n", "b\n", "a\n"];
        let b = ["c\n", "b\n", "a\n", "b\n", "a\n", "c\n"];
        let script = edit_script(&a, &b);
        let edits = script.iter().filter(|op| **op != Op::Keep).count();
        assert_eq!(edits, 5, "{script:?}");
        // Replaying the script on `a` gives `b`.
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        for op in script {
            match op {
                Op::Keep => {
                    out.push(a[i]);
                    i += 1;
                    j += 1;
                }
                Op::Delete => i += 1,
                Op::Insert => {
                    out.push(b[j]);
                    j += 1;
                }
            }
        }
        assert_eq!(out, b);
    }

    fn lcs(a: &[&str], b: &[&str]) -> usize {
        let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                table[i][j] = if a[i] == b[j] {
                    table[i + 1][j + 1] + 1
                } else {
                    table[i + 1][j].max(table[i][j + 1])
                };
            }
        }
        table[0][0]
    }

    proptest::proptest! {
        #[test]
        fn script_replays_and_is_minimal(a in proptest::collection::vec("[abc]\n", 0..30), b in proptest::collection::vec("[abc]\n", 0..30)) {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            let script = edit_script(&a, &b);
            let (mut i, mut j, mut out) = (0, 0, Vec::new());
            for op in &script {
                match op {
                    Op::Keep => { proptest::prop_assert_eq!(a[i], b[j]); out.push(a[i]); i += 1; j += 1; }
                    Op::Delete => i += 1,
                    Op::Insert => { out.push(b[j]); j += 1; }
                }
            }
            proptest::prop_assert_eq!((i, &out), (a.len(), &b));
            let edits = script.iter().filter(|op| **op != Op::Keep).count();
            proptest::prop_assert_eq!(edits, a.len() + b.len() - 2 * lcs(&a, &b));
        }
    }
}
