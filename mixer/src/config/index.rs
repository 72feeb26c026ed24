//! Rules indexed by the value one attribute must have for them to match, so a request is
//! matched against the rules that can hold for it instead of every rule.
//!
//! A rule whose match is a conjunction (`&&` at the top level, no `||` there) with a term
//! `ATTR == "literal"` (or `"literal" == ATTR`), ATTR a STRING attribute, can only match a
//! request whose ATTR is exactly that literal: when ATTR differs the term is false, when ATTR
//! is absent the match fails to evaluate, and either way the rule does not apply. Of the
//! attributes rules are keyed on like this, the config indexes the one that keys the most
//! rules (typically `destination.service.name`). A request with that attribute set is matched
//! against the rules keyed on its value and the unkeyed ones, in config order; a request
//! without it against every rule, as before. The only observable difference: a skipped rule
//! whose match would have failed to evaluate is not counted in `rule_errors`.
//!
//! The terms are read off the compiled match ([`Expression::required_equalities`]); a match
//! of another shape leaves the rule unkeyed, which is always correct.

use std::collections::HashMap;
use std::sync::Arc;

use crate::attribute::AttrId;
use crate::expr::Expression;

/// An ordered list of rules (indexes into [`super::Resolved::rules`]), split by the value the
/// index attribute must have.
#[derive(Debug, Clone, Default)]
pub struct RuleList {
    /// Every rule of the list, in config order.
    pub all: Vec<usize>,
    /// The rules not keyed on the index attribute, in config order.
    pub unkeyed: Vec<usize>,
    /// The rules keyed on each value, in config order.
    pub by_value: HashMap<Arc<str>, Vec<usize>>,
}

/// Which attribute rules are indexed by, and each rule's required value of it.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    pub attribute: Option<AttrId>,
    /// By rule: the value the index attribute must have (`None`: not keyed).
    pub required: Vec<Option<Arc<str>>>,
}

/// The rules of `list` (in order) that can hold when the index attribute is `value`:
/// the unkeyed ones and those keyed on `value`, merged in config order.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    a: &'a [usize],
    b: &'a [usize],
}

// === impl RuleList ===

impl RuleList {
    /// Splits `all` (in order) by `index`.
    pub fn new(all: Vec<usize>, index: &RuleIndex) -> Self {
        let mut unkeyed = Vec::new();
        let mut by_value: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for &r in &all {
            match index.required.get(r).and_then(Option::as_ref) {
                Some(v) => by_value.entry(v.clone()).or_default().push(r),
                None => unkeyed.push(r),
            }
        }
        Self {
            all,
            unkeyed,
            by_value,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// The rules that can hold when the index attribute is `value` (`None`: unknown, so all).
    pub fn candidates(&self, value: Option<&str>) -> Candidates<'_> {
        match value {
            None => Candidates {
                a: &self.all,
                b: &[],
            },
            Some(v) => Candidates {
                a: &self.unkeyed,
                b: self.by_value.get(v).map_or(&[][..], Vec::as_slice),
            },
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = side.split_first()?;
        *side = rest;
        Some(*first)
    }
}

// === impl RuleIndex ===

impl RuleIndex {
    /// Picks the attribute that keys the most of `matches` (each rule's compiled match) and
    /// records each rule's required value of it.
    pub fn build<'a>(matches: impl Iterator<Item = Option<&'a Expression>>) -> Self {
        let terms: Vec<Vec<(AttrId, &str)>> = matches
            .map(|m| m.map(Expression::required_equalities).unwrap_or_default())
            .collect();
        let mut counts: HashMap<AttrId, usize> = HashMap::new();
        for rule in &terms {
            let mut seen: Vec<AttrId> = Vec::new();
            for (attr, _) in rule {
                if !seen.contains(attr) {
                    seen.push(*attr);
                    *counts.entry(*attr).or_default() += 1;
                }
            }
        }
        // The most keyed; of equal counts, the lowest id (so the choice is stable).
        let Some(attribute) = counts
            .into_iter()
            .max_by(|(a1, n1), (a2, n2)| n1.cmp(n2).then_with(|| a2.cmp(a1)))
            .map(|(a, _)| a)
        else {
            return Self {
                attribute: None,
                required: vec![None; terms.len()],
            };
        };
        let required = terms
            .iter()
            .map(|rule| {
                rule.iter()
                    .find(|(a, _)| *a == attribute)
                    .map(|(_, v)| Arc::from(*v))
            })
            .collect();
        Self {
            attribute: Some(attribute),
            required,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::attribute::Vocabulary;

    fn compiled(vocab: &Vocabulary, text: &str) -> Expression {
        Expression::compile(text, vocab).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn terms(text: &str) -> Vec<(String, String)> {
        let vocab = Vocabulary::builtin();
        let e = compiled(&vocab, text);
        e.required_equalities()
            .into_iter()
            .map(|(id, v)| (vocab.name(id).to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn finds_equalities_of_a_top_level_conjunction_only() {
        let one = |a: &str, v: &str| vec![(a.to_string(), v.to_string())];
        assert_eq!(
            terms(r#"destination.service.name == "svc1" && request.path.startsWith("/a")"#),
            one("destination.service.name", "svc1")
        );
        assert_eq!(
            terms(r#"request.method == "GET" && "svc2"==destination.service.name"#),
            vec![
                ("request.method".to_string(), "GET".to_string()),
                ("destination.service.name".to_string(), "svc2".to_string())
            ]
        );
        // Brackets group; strings hold what they hold.
        assert_eq!(
            terms(r#"(destination.service.name == "a" && request.method == "GET")"#),
            vec![
                ("destination.service.name".to_string(), "a".to_string()),
                ("request.method".to_string(), "GET".to_string())
            ]
        );
        assert_eq!(
            terms(r#"request.headers["a&&b"] == "x" && source.user == "a && b""#),
            one("source.user", "a && b")
        );
        for none in [
            r#"destination.service.name == "a" || request.method == "GET""#,
            r#"destination.service.name | "x" == "a""#,
            r#"!(destination.service.name == "a")"#,
            r#"request.headers["x"] == "a""#,
            r#"destination.service.name != "a""#,
        ] {
            assert_eq!(terms(none), Vec::new(), "{none}");
        }
    }

    #[test]
    fn candidates_merge_keyed_and_unkeyed_rules_in_config_order() {
        let v = |s: &str| Some(Arc::<str>::from(s));
        let index = RuleIndex {
            attribute: None,
            required: vec![v("a"), None, v("b"), v("a"), None],
        };
        let list = RuleList::new(vec![0, 1, 2, 3, 4], &index);
        assert_eq!(list.candidates(Some("a")).collect::<Vec<_>>(), [0, 1, 3, 4]);
        assert_eq!(list.candidates(Some("b")).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(list.candidates(Some("c")).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(list.candidates(None).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn indexes_the_attribute_that_keys_the_most_rules() {
        let vocab = Vocabulary::builtin();
        let matches: Vec<Option<Expression>> = [
            Some(r#"destination.service.name == "a" && request.method == "GET""#),
            Some(r#"destination.service.name == "b""#),
            None,
            Some(r#"request.method == "POST""#),
            Some(r#"destination.service.name == "a""#),
        ]
        .into_iter()
        .map(|m| m.map(|t| compiled(&vocab, t)))
        .collect();
        let index = RuleIndex::build(matches.iter().map(Option::as_ref));
        assert_eq!(index.attribute, vocab.id("destination.service.name"));
        let got: Vec<Option<&str>> = index.required.iter().map(|r| r.as_deref()).collect();
        assert_eq!(got, [Some("a"), Some("b"), None, None, Some("a")]);
        // No equality with a string: no index.
        let size = compiled(&vocab, "request.size == 3");
        let index = RuleIndex::build([Some(&size), None].into_iter());
        assert_eq!(index.attribute, None);
    }
}
