//! What a check found and how `pilot check` prints it: one line per check under a heading per
//! group (`✔ name`, `⚠ name: why`, `✖ name: reason` and a `  hint:` line), a summary, or the
//! same as JSON.

use serde::Serialize;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked, as a statement that holds when it passes.
    pub name: String,
    pub outcome: Outcome,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Works, but needs attention soon (does not fail the command).
    Warn(String),
    /// Broken: why, and what to do about it.
    Fail {
        reason: String,
        hint: String,
    },
}

/// The results of one group of checks, under its heading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: &'static str,
    pub results: Vec<CheckResult>,
}

/// Totals over groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub passed: usize,
    pub warnings: usize,
    pub failed: usize,
}

// === impl CheckResult ===

impl CheckResult {
    pub fn ok(name: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            outcome: Outcome::Ok,
        }
    }

    pub fn warn(name: impl Into<String>, why: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            outcome: Outcome::Warn(why.into()),
        }
    }

    pub fn fail(
        name: impl Into<String>,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        CheckResult {
            name: name.into(),
            outcome: Outcome::Fail {
                reason: reason.into(),
                hint: hint.into(),
            },
        }
    }

    pub fn is_fail(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }

    /// The lines printed for this result.
    pub fn render(&self) -> String {
        match &self.outcome {
            Outcome::Ok => format!("✔ {}\n", self.name),
            Outcome::Warn(why) => format!("⚠ {}: {why}\n", self.name),
            Outcome::Fail { reason, hint } => {
                let mut s = format!("✖ {}: {reason}\n", self.name);
                if !hint.is_empty() {
                    s.push_str(&format!("  hint: {hint}\n"));
                }
                s
            }
        }
    }
}

// === impl Group ===

impl Group {
    /// The heading, an underline, and a line (or two) per result.
    pub fn render(&self) -> String {
        let mut s = format!("{}\n{}\n", self.name, "-".repeat(self.name.chars().count()));
        for r in &self.results {
            s.push_str(&r.render());
        }
        s
    }
}

// === impl Totals ===

impl Totals {
    pub fn of(groups: &[Group]) -> Totals {
        let mut t = Totals::default();
        for r in groups.iter().flat_map(|g| &g.results) {
            match r.outcome {
                Outcome::Ok => t.passed += 1,
                Outcome::Warn(_) => t.warnings += 1,
                Outcome::Fail { .. } => t.failed += 1,
            }
        }
        t
    }

    /// The last line of the text output.
    pub fn summary(&self) -> String {
        let warnings = match self.warnings {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        };
        if self.failed == 0 {
            format!(
                "Status check results are ✔ ({} passed{warnings})\n",
                self.passed
            )
        } else {
            format!(
                "Status check results are ✖ ({} failed, {} passed{warnings})\n",
                self.failed, self.passed
            )
        }
    }
}

/// The whole text output: groups separated by blank lines, then the summary.
pub fn render_text(groups: &[Group]) -> String {
    let mut s = String::new();
    for g in groups {
        s.push_str(&g.render());
        s.push('\n');
    }
    s.push_str(&Totals::of(groups).summary());
    s
}

#[derive(Serialize)]
struct JsonReport<'a> {
    success: bool,
    totals: Totals,
    groups: Vec<JsonGroup<'a>>,
}

#[derive(Serialize)]
struct JsonGroup<'a> {
    name: &'a str,
    checks: Vec<JsonCheck<'a>>,
}

#[derive(Serialize)]
struct JsonCheck<'a> {
    name: &'a str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
}

/// The whole output as JSON: `{"success", "totals", "groups": [{"name", "checks": [{"name",
/// "result": "ok"|"warning"|"error", "reason", "hint"}]}]}`.
pub fn render_json(groups: &[Group]) -> serde_json::Result<String> {
    let totals = Totals::of(groups);
    let report = JsonReport {
        success: totals.failed == 0,
        totals,
        groups: groups
            .iter()
            .map(|g| JsonGroup {
                name: g.name,
                checks: g
                    .results
                    .iter()
                    .map(|r| {
                        let (result, reason, hint) = match &r.outcome {
                            Outcome::Ok => ("ok", None, None),
                            Outcome::Warn(w) => ("warning", Some(w.as_str()), None),
                            Outcome::Fail { reason, hint } => {
                                ("error", Some(reason.as_str()), Some(hint.as_str()))
                            }
                        };
                        JsonCheck {
                            name: &r.name,
                            result,
                            reason,
                            hint,
                        }
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut s = serde_json::to_string_pretty(&report)?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<Group> {
        vec![
            Group {
                name: "kubernetes-api",
                results: vec![CheckResult::ok("can connect to the Kubernetes API")],
            },
            Group {
                name: "istio-system",
                results: vec![
                    CheckResult::fail(
                        "deployment istio-pilot is available",
                        "0/1 replicas ready",
                        "kubectl -n istio-system describe deployment istio-pilot",
                    ),
                    CheckResult::warn("root certificate valid", "12 days left"),
                ],
            },
        ]
    }

    #[test]
    fn text_output() {
        assert_eq!(
            render_text(&groups()),
            "\
kubernetes-api
--------------
✔ can connect to the Kubernetes API

istio-system
------------
✖ deployment istio-pilot is available: 0/1 replicas ready
  hint: kubectl -n istio-system describe deployment istio-pilot
⚠ root certificate valid: 12 days left

Status check results are ✖ (1 failed, 1 passed, 1 warning(s))
"
        );
    }

    #[test]
    fn passing_output_and_totals() {
        let g = vec![Group {
            name: "pilot",
            results: vec![CheckResult::ok("a"), CheckResult::warn("b", "c")],
        }];
        let t = Totals::of(&g);
        assert_eq!(
            t,
            Totals {
                passed: 1,
                warnings: 1,
                failed: 0
            }
        );
        assert_eq!(
            t.summary(),
            "Status check results are ✔ (1 passed, 1 warning(s))\n"
        );
    }

    #[test]
    fn json_output() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&groups()).unwrap()).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["totals"]["failed"], 1);
        let check = &v["groups"][1]["checks"][0];
        assert_eq!(check["result"], "error");
        assert_eq!(check["reason"], "0/1 replicas ready");
        assert_eq!(v["groups"][0]["checks"][0].get("reason"), None);
    }
}
