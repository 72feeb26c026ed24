//! Status on Istio objects: what the Kubernetes store writes to the `status` of an object it
//! refuses, so that `kubectl get -o yaml` says why, and what the service's own analysis found
//! about the objects it accepted (a reference that does not resolve, a policy that makes
//! workloads fail closed); each cleared once it no longer holds.
//!
//! The status follows Istio's: its analysis writes `status.validationMessages` (here IST0106
//! `SchemaValidationError`, the message Istio's analyzers give an object that fails
//! validation, and the [`Finding`]s a service reports, e.g. IST0101), and its status
//! distribution writes a `Reconciled` condition; a refused object gets `Reconciled=False` with
//! reason `ValidationFailed` and the problem (field and reason) as its message, plus
//! `observedGeneration`. Other conditions and fields of the status are left alone. Beyond
//! Istio, each message we write carries a `description` (field and reason), so the status
//! says what is wrong and not only which check failed.
//!
//! Writes only happen when what the object's status says differs from what it should say, so
//! the watch event caused by a write of ours asks for nothing more: no write storms, and
//! replicas that agree write nothing twice.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ConfigKey;

/// The condition type this store owns.
pub const CONDITION_TYPE: &str = "Reconciled";
/// The reason of the condition on a refused object.
pub const REASON: &str = "ValidationFailed";
/// Istio's analysis message for an object that fails validation.
pub const MESSAGE_CODE: &str = "IST0106";
/// Its name.
pub const MESSAGE_NAME: &str = "SchemaValidationError";
/// Its documentation.
pub const DOCUMENTATION_URL: &str =
    "https://istio.io/latest/docs/reference/config/analysis/ist0106/";

/// One analysis message about one object, as a service's own analysis found it (Istio's
/// codes: `IST0101` `ReferencedResourceNotFound`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// `ERROR`, `WARNING` or `INFO`.
    pub level: &'static str,
    pub code: &'static str,
    pub name: &'static str,
    /// Where in the object, e.g. `spec.provider.name`.
    pub field: String,
    pub message: String,
}

/// Every finding of one analysis run, by object. Objects without findings are left out.
pub type Findings = BTreeMap<ConfigKey, Vec<Finding>>;

// === impl Finding ===

impl Finding {
    /// The `validationMessages` entry.
    fn to_value(&self) -> Value {
        json!({
            "type": {"code": self.code, "name": self.name},
            "level": self.level,
            "documentationUrl": format!(
                "https://istio.io/latest/docs/reference/config/analysis/{}/",
                self.code.to_ascii_lowercase()
            ),
            "description": format!("{}: {}", self.field, self.message),
        })
    }
}

/// The merge patch (`{"status": {...}}`) that makes `current` (the object's `status`, if any)
/// say that the object is refused for `problem` (or that it is not: `None`) and, when
/// `findings` is given, list exactly those analysis messages; `None` when the status already
/// says so. Without `findings` the analysis messages already there are left alone (another
/// service's analysis owns them).
///
/// `now` is the `lastTransitionTime` written when the condition appears or its message
/// changes (RFC 3339).
pub fn patch(
    current: Option<&Value>,
    problem: Option<&str>,
    findings: Option<&[Finding]>,
    generation: Option<i64>,
    now: &str,
) -> Option<Value> {
    let current = current.and_then(Value::as_object);
    let conditions: Vec<Value> = current
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION_TYPE));
    let others: Vec<Value> = conditions
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some(CONDITION_TYPE))
        .cloned()
        .collect();
    let old_messages: Vec<Value> = current
        .and_then(|s| s.get("validationMessages"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    let mut messages = Vec::new();
    if problem.is_some() {
        messages.push(validation_message());
    }
    match findings {
        Some(findings) => messages.extend(findings.iter().map(Finding::to_value)),
        None => messages.extend(old_messages.iter().filter(|m| !is_our_message(m)).cloned()),
    }

    let new_conditions = match problem {
        Some(problem) => {
            let same = ours.is_some_and(|c| {
                c.get("status").and_then(Value::as_str) == Some("False")
                    && c.get("reason").and_then(Value::as_str) == Some(REASON)
                    && c.get("message").and_then(Value::as_str) == Some(problem)
            });
            (!same).then(|| {
                let mut all = others.clone();
                all.push(json!({
                    "type": CONDITION_TYPE,
                    "status": "False",
                    "reason": REASON,
                    "message": problem,
                    "lastTransitionTime": now,
                }));
                all
            })
        }
        None => ours
            .is_some_and(|c| c.get("reason").and_then(Value::as_str) == Some(REASON))
            .then(|| others.clone()),
    };
    let stale_generation = problem.is_some() && observed(current) != generation;
    let messages_changed = messages != old_messages;
    if new_conditions.is_none() && !messages_changed && !stale_generation {
        return None;
    }

    let null_if_empty = |v: Vec<Value>| {
        if v.is_empty() {
            Value::Null
        } else {
            Value::Array(v)
        }
    };
    let mut status = Map::new();
    if let Some(conditions) = new_conditions {
        status.insert("conditions".into(), null_if_empty(conditions));
    }
    if messages_changed {
        status.insert("validationMessages".into(), null_if_empty(messages));
    }
    if let Some(g) = generation {
        // int64 fields are strings in Istio's JSON.
        status.insert("observedGeneration".into(), g.to_string().into());
    }
    Some(json!({ "status": status }))
}

fn validation_message() -> Value {
    json!({
        "type": {"code": MESSAGE_CODE, "name": MESSAGE_NAME},
        "level": "ERROR",
        "documentationUrl": DOCUMENTATION_URL,
    })
}

fn is_our_message(m: &Value) -> bool {
    m.get("type")
        .and_then(|t| t.get("code"))
        .and_then(Value::as_str)
        == Some(MESSAGE_CODE)
}

fn observed(status: Option<&Map<String, Value>>) -> Option<i64> {
    match status?.get("observedGeneration")? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    /// Applies a merge patch's status to a status, as the API server does.
    fn merged(current: Option<&Value>, patch: &Value) -> Value {
        let mut out = current.cloned().unwrap_or_else(|| json!({}));
        for (k, v) in patch["status"].as_object().unwrap() {
            if v.is_null() {
                out.as_object_mut().unwrap().remove(k);
            } else {
                out[k] = v.clone();
            }
        }
        out
    }

    #[test]
    fn a_refused_object_gets_the_condition_once() {
        let p = patch(
            None,
            Some("spec.http[0].route: weights sum to 90"),
            None,
            Some(2),
            NOW,
        )
        .unwrap();
        let status = merged(None, &p);
        assert_eq!(status["conditions"][0]["type"], "Reconciled");
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["conditions"][0]["reason"], "ValidationFailed");
        assert_eq!(
            status["conditions"][0]["message"],
            "spec.http[0].route: weights sum to 90"
        );
        assert_eq!(status["validationMessages"][0]["type"]["code"], "IST0106");
        assert_eq!(status["observedGeneration"], "2");
        // The watch event of our own write asks for nothing more, even later.
        assert_eq!(
            patch(
                Some(&status),
                Some("spec.http[0].route: weights sum to 90"),
                None,
                Some(2),
                "2027-01-01T00:00:00Z"
            ),
            None
        );
        // A different problem is written.
        let p2 = patch(
            Some(&status),
            Some("spec.hosts: required"),
            None,
            Some(3),
            NOW,
        )
        .unwrap();
        let status2 = merged(Some(&status), &p2);
        assert_eq!(status2["conditions"][0]["message"], "spec.hosts: required");
        assert_eq!(status2["conditions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_valid_object_is_cleared_and_other_conditions_stay() {
        let current = json!({
            "conditions": [
                {"type": "Other", "status": "True"},
                {"type": "Reconciled", "status": "False", "reason": "ValidationFailed", "message": "x"},
            ],
            "validationMessages": [
                {"type": {"code": "IST0106", "name": "SchemaValidationError"}, "level": "ERROR"},
            ],
            "observedGeneration": "1",
        });
        let p = patch(Some(&current), None, None, Some(2), NOW).unwrap();
        let status = merged(Some(&current), &p);
        assert_eq!(
            status["conditions"],
            json!([{"type": "Other", "status": "True"}])
        );
        assert!(status.get("validationMessages").is_none());
        assert_eq!(patch(Some(&status), None, None, Some(2), NOW), None);
    }

    #[test]
    fn valid_objects_without_our_status_are_not_written() {
        assert_eq!(patch(None, None, None, Some(1), NOW), None);
        let reconciled = json!({"conditions": [{"type": "Reconciled", "status": "True"}]});
        assert_eq!(patch(Some(&reconciled), None, None, Some(1), NOW), None);
    }

    fn dangling() -> Finding {
        Finding {
            level: "ERROR",
            code: "IST0101",
            name: "ReferencedResourceNotFound",
            field: "spec.provider.name".into(),
            message: "Referenced extension provider not found: \"ext\"".into(),
        }
    }

    #[test]
    fn findings_are_listed_beside_the_refusal_and_cleared_when_gone() {
        let findings = [dangling()];
        let p = patch(None, None, Some(&findings), Some(1), NOW).unwrap();
        let status = merged(None, &p);
        let messages = status["validationMessages"].as_array().unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["type"]["code"], "IST0101");
        assert_eq!(messages[0]["level"], "ERROR");
        assert_eq!(
            messages[0]["documentationUrl"],
            "https://istio.io/latest/docs/reference/config/analysis/ist0101/"
        );
        assert_eq!(
            messages[0]["description"],
            "spec.provider.name: Referenced extension provider not found: \"ext\""
        );
        assert!(status.get("conditions").is_none(), "accepted: no condition");
        assert_eq!(
            patch(Some(&status), None, Some(&findings), Some(1), NOW),
            None
        );
        // A refusal comes first, the findings stay.
        let p = patch(
            Some(&status),
            Some("spec.rules: bad"),
            Some(&findings),
            Some(2),
            NOW,
        );
        let refused = merged(Some(&status), &p.unwrap());
        let codes: Vec<_> = refused["validationMessages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["type"]["code"].clone())
            .collect();
        assert_eq!(codes, [json!("IST0106"), json!("IST0101")]);
        // A store that does not own the analysis keeps its messages as they are.
        assert_eq!(
            patch(Some(&refused), Some("spec.rules: bad"), None, Some(2), NOW),
            None
        );
        let p = patch(Some(&refused), None, None, Some(3), NOW).unwrap();
        let fixed = merged(Some(&refused), &p);
        assert_eq!(fixed["validationMessages"].as_array().unwrap().len(), 1);
        assert_eq!(fixed["validationMessages"][0]["type"]["code"], "IST0101");
        // The analysis no longer finds anything: the messages go.
        let p = patch(Some(&fixed), None, Some(&[]), Some(3), NOW).unwrap();
        let clean = merged(Some(&fixed), &p);
        assert!(clean.get("validationMessages").is_none());
        assert_eq!(patch(Some(&clean), None, Some(&[]), Some(3), NOW), None);
    }
}
