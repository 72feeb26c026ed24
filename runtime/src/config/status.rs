//! Status conditions on refused objects: what the Kubernetes store writes to the `status` of
//! an object it refuses, so that `kubectl get -o yaml` says why, and what it clears once the
//! object is valid again.
//!
//! The status follows Istio's: its analysis writes `status.validationMessages` (here IST0106
//! `SchemaValidationError`, the message Istio's analyzers give an object that fails
//! validation), and its status distribution writes a `Reconciled` condition; a refused object
//! gets `Reconciled=False` with reason `ValidationFailed` and the problem (field and reason)
//! as its message, plus `observedGeneration`. Other conditions and fields of the status are
//! left alone.
//!
//! Writes only happen when what the object's status says differs from what it should say, so
//! the watch event caused by a write of ours asks for nothing more: no write storms, and
//! replicas that agree write nothing twice.

use serde_json::{Map, Value, json};

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

/// The merge patch (`{"status": {...}}`) that makes `current` (the object's `status`, if any)
/// say that the object is refused for `problem`, or that it is not (`None`); `None` when the
/// status already says so.
///
/// `now` is the `lastTransitionTime` written when the condition appears or its message
/// changes (RFC 3339).
pub fn patch(
    current: Option<&Value>,
    problem: Option<&str>,
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
    let messages = current.and_then(|s| s.get("validationMessages"));
    let mut status = Map::new();
    match problem {
        Some(problem) => {
            let same = ours.is_some_and(|c| {
                c.get("status").and_then(Value::as_str) == Some("False")
                    && c.get("reason").and_then(Value::as_str) == Some(REASON)
                    && c.get("message").and_then(Value::as_str) == Some(problem)
            }) && messages == Some(&validation_messages())
                && observed(current) == generation;
            if same {
                return None;
            }
            let mut all = others;
            all.push(json!({
                "type": CONDITION_TYPE,
                "status": "False",
                "reason": REASON,
                "message": problem,
                "lastTransitionTime": now,
            }));
            status.insert("conditions".into(), Value::Array(all));
            status.insert("validationMessages".into(), validation_messages());
            if let Some(g) = generation {
                // int64 fields are strings in Istio's JSON.
                status.insert("observedGeneration".into(), g.to_string().into());
            }
        }
        None => {
            let ours_refused =
                ours.is_some_and(|c| c.get("reason").and_then(Value::as_str) == Some(REASON));
            let our_messages = messages
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(is_our_message));
            if !ours_refused && !our_messages {
                return None;
            }
            if ours_refused {
                status.insert(
                    "conditions".into(),
                    if others.is_empty() {
                        Value::Null
                    } else {
                        Value::Array(others)
                    },
                );
            }
            if our_messages {
                let rest: Vec<Value> = messages
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|m| !is_our_message(m))
                    .cloned()
                    .collect();
                status.insert(
                    "validationMessages".into(),
                    if rest.is_empty() {
                        Value::Null
                    } else {
                        Value::Array(rest)
                    },
                );
            }
            if let Some(g) = generation {
                status.insert("observedGeneration".into(), g.to_string().into());
            }
        }
    }
    Some(json!({ "status": status }))
}

fn validation_messages() -> Value {
    json!([{
        "type": {"code": MESSAGE_CODE, "name": MESSAGE_NAME},
        "level": "ERROR",
        "documentationUrl": DOCUMENTATION_URL,
    }])
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
                Some(2),
                "2027-01-01T00:00:00Z"
            ),
            None
        );
        // A different problem is written.
        let p2 = patch(Some(&status), Some("spec.hosts: required"), Some(3), NOW).unwrap();
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
        let p = patch(Some(&current), None, Some(2), NOW).unwrap();
        let status = merged(Some(&current), &p);
        assert_eq!(
            status["conditions"],
            json!([{"type": "Other", "status": "True"}])
        );
        assert!(status.get("validationMessages").is_none());
        assert_eq!(patch(Some(&status), None, Some(2), NOW), None);
    }

    #[test]
    fn valid_objects_without_our_status_are_not_written() {
        assert_eq!(patch(None, None, Some(1), NOW), None);
        let reconciled = json!({"conditions": [{"type": "Reconciled", "status": "True"}]});
        assert_eq!(patch(Some(&reconciled), None, Some(1), NOW), None);
    }
}
