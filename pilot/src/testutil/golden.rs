//! Golden files: output checked in beside the tests, compared on every run and rewritten
//! when `MESH_UPDATE_GOLDEN=1`. A mismatch is reported as a short line diff.

use std::fmt::Write as _;
use std::path::Path;

/// The environment variable that rewrites golden files instead of comparing them.
pub const UPDATE_ENV: &str = "MESH_UPDATE_GOLDEN";

/// How many diff lines a mismatch shows.
const SHOWN: usize = 40;

/// Whether this run rewrites the golden files (`MESH_UPDATE_GOLDEN=1`).
pub fn update_requested() -> bool {
    std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1")
}

/// Compares `got` with the file at `path` (or, when updating, writes it there). The error
/// names the file and shows the first differing lines, `-` as checked in, `+` as generated.
pub fn check(path: &Path, got: &str) -> Result<(), String> {
    let name = path.display();
    if update_requested() {
        if std::fs::read_to_string(path).ok().as_deref() != Some(got) {
            std::fs::write(path, got).map_err(|e| format!("{name}: cannot write: {e}"))?;
        }
        return Ok(());
    }
    match std::fs::read_to_string(path) {
        Ok(want) if want == got => Ok(()),
        Ok(want) => Err(format!(
            "{name} differs from the generated output (- file, + generated):\n{}",
            diff(&want, got)
        )),
        Err(e) => Err(format!("{name}: cannot read: {e}")),
    }
}

/// A unified-style diff of two texts: hunks with line numbers and two lines of context,
/// cut after [`SHOWN`] lines.
pub fn diff(want: &str, got: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let ops = edit_script(&a, &b);
    // Indices of ops to show: every change and two lines of context around it.
    let changed: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].0 != ' ').collect();
    let shown = |i: usize| changed.iter().any(|&c| c.abs_diff(i) <= 2);
    let mut out = String::new();
    let mut lines = 0;
    let mut previous: Option<usize> = None;
    let (mut line_a, mut line_b) = (1, 1);
    for (i, (op, text)) in ops.iter().enumerate() {
        if shown(i) {
            if previous != Some(i.wrapping_sub(1)) {
                let _ = writeln!(out, "@@ -{line_a} +{line_b} @@");
            }
            let _ = writeln!(out, "{op}{text}");
            previous = Some(i);
            lines += 1;
            if lines == SHOWN {
                let _ = writeln!(out, "... ({} changed lines in all)", changed.len());
                break;
            }
        }
        match op {
            '-' => line_a += 1,
            '+' => line_b += 1,
            _ => {
                line_a += 1;
                line_b += 1;
            }
        }
    }
    out
}

/// The lines of `a` and `b` as an edit script: `' '` kept, `'-'` only in `a`, `'+'` only in
/// `b`. A longest common subsequence between the common prefix and suffix; when that middle
/// is too large to compare line by line, all of it is shown as replaced.
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops: Vec<(char, &str)> = a[..prefix].iter().map(|l| (' ', *l)).collect();
    if ma.len().saturating_mul(mb.len()) > 4_000_000 {
        ops.extend(ma.iter().map(|l| ('-', *l)));
        ops.extend(mb.iter().map(|l| ('+', *l)));
    } else {
        // lcs[i][j]: the longest common subsequence of ma[i..] and mb[j..].
        let width = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * width];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * width + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                ops.push((' ', ma[i]));
                (i, j) = (i + 1, j + 1);
            } else if j == mb.len()
                || (i < ma.len() && lcs[(i + 1) * width + j] >= lcs[i * width + j + 1])
            {
                ops.push(('-', ma[i]));
                i += 1;
            } else {
                ops.push(('+', mb[j]));
                j += 1;
            }
        }
    }
    ops.extend(a[a.len() - suffix..].iter().map(|l| (' ', *l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_shows_with_its_context_and_line_numbers() {
        let want = "a\nb\nc\nd\ne\nf\ng\n";
        let got = "a\nb\nc\nD\ne\nf\ng\n";
        assert_eq!(diff(want, got), "@@ -2 +2 @@\n b\n c\n-d\n+D\n e\n f\n");
    }

    #[test]
    fn an_inserted_line_does_not_shift_the_rest_into_the_diff() {
        let want = "1\n2\n3\n4\n5\n6\n7\n8\n";
        let got = "1\n2\n3\nnew\n4\n5\n6\n7\n8\n";
        assert_eq!(diff(want, got), "@@ -2 +2 @@\n 2\n 3\n+new\n 4\n 5\n");
    }

    #[test]
    fn hunks_far_apart_are_shown_apart() {
        let want: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let got = want.replace("line 3\n", "x\n").replace("line 15\n", "y\n");
        let d = diff(&want, &got);
        assert_eq!(d.matches("@@ ").count(), 2, "{d}");
        assert!(
            d.contains("@@ -14 +14 @@\n line 13\n line 14\n-line 15\n+y\n"),
            "{d}"
        );
    }
}
