//! Regular expressions with RE2's rules, the engine Envoy (and Istio's Go validation) uses.
//!
//! Rust's `regex` crate takes RE2's syntax and, like RE2, refuses look-around and
//! back-references; RE2 additionally refuses repetition counts over 1000, checked here.

/// RE2's largest repetition count (`{n}`, `{n,}`, `{n,m}`).
const MAX_REPEAT: u64 = 1000;

/// Why a regular expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    /// The expression does not parse or compile.
    #[error("invalid regular expression {pattern:?}: {message}")]
    Syntax { pattern: String, message: String },
    /// A repetition count is over RE2's limit.
    #[error(
        "invalid regular expression {pattern:?}: repetition count {count} is over RE2's limit of 1000"
    )]
    RepeatTooLarge { pattern: String, count: u64 },
}

/// Checks that `pattern` compiles with RE2's rules.
pub fn check_regex(pattern: &str) -> Result<(), RegexError> {
    if let Some(count) = largest_repeat(pattern).filter(|n| *n > MAX_REPEAT) {
        return Err(RegexError::RepeatTooLarge {
            pattern: pattern.to_string(),
            count,
        });
    }
    ::regex::RegexBuilder::new(pattern)
        .size_limit(8 << 20)
        .build()
        .map(drop)
        .map_err(|e| RegexError::Syntax {
            pattern: pattern.to_string(),
            message: e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string(),
        })
}

/// The largest count of a `{n}`, `{n,}` or `{n,m}` repetition outside character classes and
/// escapes (saturating), if any.
fn largest_repeat(pattern: &str) -> Option<u64> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut largest: Option<u64> = None;
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' if !in_class => {
                in_class = true;
                // A `]` right after `[` or `[^` is a literal.
                if chars.get(i + 1) == Some(&'^') {
                    i += 1;
                }
                if chars.get(i + 1) == Some(&']') {
                    i += 1;
                }
            }
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                let mut j = i + 1;
                let mut counts = Vec::new();
                let mut current: Option<u64> = None;
                let mut valid = true;
                while j < chars.len() && chars[j] != '}' {
                    match chars[j] {
                        d @ '0'..='9' => {
                            let v = u64::from(d as u8 - b'0');
                            current =
                                Some(current.unwrap_or(0).saturating_mul(10).saturating_add(v));
                        }
                        ',' if counts.is_empty() => counts.push(current.take()),
                        _ => {
                            valid = false;
                            break;
                        }
                    }
                    j += 1;
                }
                if valid && j < chars.len() {
                    counts.push(current);
                    for n in counts.into_iter().flatten() {
                        largest = Some(largest.map_or(n, |l| l.max(n)));
                    }
                    i = j;
                }
            }
            _ => {}
        }
        i += 1;
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_limits() {
        assert!(check_regex("/x{1000}").is_ok());
        assert!(matches!(
            check_regex("/x{1001}"),
            Err(RegexError::RepeatTooLarge { count: 1001, .. })
        ));
        assert!(check_regex("a{2,5000}").is_err());
        assert!(
            check_regex("[{5000}]").is_ok(),
            "inside a class it is literal"
        );
        assert!(check_regex(r"\{5000}").is_ok(), "escaped brace");
        assert!(check_regex("^(.*?;)?(user=jason)(;.*)?$").is_ok());
        assert!(check_regex("(a").is_err());
        assert!(check_regex(r"(a)\1").is_err(), "no back-references in RE2");
        assert!(check_regex("a(?=b)").is_err(), "no look-ahead in RE2");
    }
}
