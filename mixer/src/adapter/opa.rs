//! `opa`: authorization checks decided by Rego policies, evaluated in process by `regorus`.
//!
//! Parameters (Istio's): `policy` (a list of Rego modules, in Rego v0 syntax as Istio 1.0's
//! OPA took them; a module may `import rego.v1`), `checkMethod` (the rule that decides, e.g.
//! `data.mixerauthz.allow`) and `failClose`.
//!
//! An `authorization` instance becomes the policy's `input` the way Istio's adapter built it:
//! `{"subject": {"user", "groups": [groups], "properties"}, "action": {"namespace",
//! "service", "method", "path", "properties"}}`, leaving out empty strings and empty maps.
//! `true` allows, `false` denies with PERMISSION_DENIED; an undefined or non-boolean result,
//! or an evaluation error, denies only with `failClose` (as in Istio).
//!
//! Unlike Istio, policies that do not parse or compile, and a `checkMethod` that names no
//! rule, are refused when the config loads whatever `failClose` says, so a broken policy
//! never replaces a working one. Each evaluation is bounded by [`EVAL_TIME_LIMIT`].

use std::num::NonZeroU32;
use std::time::Duration;

use parking_lot::Mutex;
use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::{Map, Value};

use super::params::{self, bad};
use super::{AdapterError, CheckResult, Handler, InstanceValues, Status, code};

/// The longest one policy evaluation may run before it fails.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(200);

/// How often (in evaluation steps) the time limit is looked at.
const TIME_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::new(32).unwrap();

/// How many prepared engines are kept for reuse between checks.
const POOL_SIZE: usize = 16;

/// Why a policy could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum OpaError {
    #[error("evaluating {method}: {message}")]
    Eval { method: String, message: String },
    #[error("{method} is undefined for this request")]
    Undefined { method: String },
    #[error("{method} is {value}, not a boolean")]
    NotBoolean { method: String, value: String },
}

/// The opa handler.
#[derive(Debug)]
pub struct Opa {
    check_method: String,
    fail_close: bool,
    /// A compiled, prepared engine: cloned for each evaluation that finds the pool empty.
    engine: regorus::Engine,
    pool: Mutex<Vec<regorus::Engine>>,
}

// === impl Opa ===

impl Opa {
    /// Validates parameters and compiles the policies.
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(p, "", &["policy", "checkMethod", "failClose"])?;
        let policies = params::strings(p, "policy", "policy")?;
        if policies.is_empty() {
            return Err(bad("policy", "policies are not configured"));
        }
        let check_method = params::string(p, "checkMethod", "checkMethod")?
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                bad(
                    "checkMethod",
                    "check method is not configured (e.g. data.mixerauthz.allow)",
                )
            })?;
        if !check_method.starts_with("data.") {
            return Err(bad(
                "checkMethod",
                format!("{check_method}: must be a rule under data, e.g. data.mixerauthz.allow"),
            ));
        }
        let fail_close = params::boolean(p, "failClose", "failClose")?.unwrap_or(false);

        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(true);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: TIME_CHECK_INTERVAL,
        });
        for (i, policy) in policies.iter().enumerate() {
            engine
                .add_policy(format!("opa_policy.{i}"), policy.clone())
                .map_err(|e| {
                    bad(
                        &format!("policy[{i}]"),
                        format!("does not parse: {}", one_line(&e.to_string())),
                    )
                })?;
        }
        // The first evaluation analyzes and links the modules (unknown functions, rule
        // conflicts, bad imports, ...) and checks that the rule exists; with an empty input,
        // a sound policy only yields values or undefined.
        engine.set_input(regorus::Value::new_object());
        if let Err(e) = engine.eval_rule(check_method.clone()) {
            let message = one_line(&e.to_string());
            return Err(if message.contains("not a valid rule path") {
                bad(
                    "checkMethod",
                    format!("{check_method} is not a rule of the policies ({message})"),
                )
            } else {
                bad(
                    "policy",
                    format!("does not compile (evaluating {check_method}): {message}"),
                )
            });
        }
        Ok(Self {
            check_method,
            fail_close,
            engine,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// Evaluates the check method for `input`.
    fn decide(&self, input: Value) -> Result<bool, OpaError> {
        let mut engine = self
            .pool
            .lock()
            .pop()
            .unwrap_or_else(|| self.engine.clone());
        engine.set_input(regorus::Value::from(input));
        let result = engine.eval_rule(self.check_method.clone());
        {
            let mut pool = self.pool.lock();
            if pool.len() < POOL_SIZE {
                pool.push(engine);
            }
        }
        let value = result.map_err(|e| OpaError::Eval {
            method: self.check_method.clone(),
            message: e.to_string(),
        })?;
        match value {
            regorus::Value::Bool(b) => Ok(b),
            regorus::Value::Undefined => Err(OpaError::Undefined {
                method: self.check_method.clone(),
            }),
            other => Err(OpaError::NotBoolean {
                method: self.check_method.clone(),
                value: other.to_string(),
            }),
        }
    }
}

/// A regorus diagnostic (location line, source excerpt, `error:` line) as one line:
/// `opa_policy.0:2:17: could not find function nosuchfn`.
fn one_line(message: &str) -> String {
    let location = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .map(str::trim);
    let error = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::trim);
    match (location, error) {
        (Some(l), Some(e)) => format!("{l}: {e}"),
        _ => message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The policy input for an `authorization` instance, as Istio's OPA adapter built it.
pub fn input(instance: &InstanceValues<'_>) -> Value {
    let mut subject = Map::new();
    let mut action = Map::new();
    let mut subject_props = Map::new();
    let mut action_props = Map::new();
    for (i, field) in instance.instance.fields.iter().enumerate() {
        let Some(Some(value)) = instance.values.get(i) else {
            continue;
        };
        let (obj, props, rest) = if let Some(rest) = field.strip_prefix("subject.") {
            (&mut subject, &mut subject_props, rest)
        } else if let Some(rest) = field.strip_prefix("action.") {
            (&mut action, &mut action_props, rest)
        } else {
            continue;
        };
        if let Some(key) = rest.strip_prefix("properties.") {
            props.insert(key.to_string(), value.to_json());
            continue;
        }
        let mut text = String::new();
        value.write_text(&mut text);
        if text.is_empty() {
            continue;
        }
        if rest == "groups" {
            // Istio's template has one string of groups; its adapter passed it as a list.
            obj.insert("groups".into(), Value::Array(vec![Value::String(text)]));
        } else {
            obj.insert(rest.to_string(), Value::String(text));
        }
    }
    if !subject_props.is_empty() {
        subject.insert("properties".into(), Value::Object(subject_props));
    }
    if !action_props.is_empty() {
        action.insert("properties".into(), Value::Object(action_props));
    }
    let mut out = Map::new();
    out.insert("action".into(), Value::Object(action));
    out.insert("subject".into(), Value::Object(subject));
    Value::Object(out)
}

impl Handler for Opa {
    fn check(&self, instance: &InstanceValues<'_>) -> CheckResult {
        let status = match self.decide(input(instance)) {
            Ok(true) => Status::default(),
            Ok(false) => Status::new(code::PERMISSION_DENIED, "opa: request was rejected"),
            Err(e) => {
                tracing::warn!(error = %e, instance = %instance.instance.name, "opa policy evaluation failed");
                if self.fail_close {
                    Status::new(
                        code::PERMISSION_DENIED,
                        format!("opa: request was rejected: {e}"),
                    )
                } else {
                    Status::default()
                }
            }
        };
        CheckResult {
            status,
            ..CheckResult::ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PATHS: &str = r#"
package mixerauthz

default allow = false

allow {
    startswith(input.action.path, "/public")
}

allow {
    input.subject.user == "admin"
    input.action.method == "GET"
}
"#;

    fn opa(p: Value) -> Result<Opa, AdapterError> {
        Opa::build(&p)
    }

    #[test]
    fn decides_on_the_input_istio_builds() {
        let h = opa(json!({"policy": [PATHS], "checkMethod": "data.mixerauthz.allow"})).unwrap();
        let allow = |input: Value| h.decide(input).unwrap();
        assert!(allow(
            json!({"action": {"path": "/public/x"}, "subject": {}})
        ));
        assert!(!allow(
            json!({"action": {"path": "/private"}, "subject": {}})
        ));
        assert!(allow(
            json!({"action": {"path": "/private", "method": "GET"}, "subject": {"user": "admin"}})
        ));
        assert!(!allow(
            json!({"action": {"path": "/private", "method": "POST"}, "subject": {"user": "admin"}})
        ));
        // Evaluations reuse engines without leaking one request's input into the next.
        for _ in 0..40 {
            assert!(!allow(json!({"action": {"path": "/x"}, "subject": {}})));
        }
    }

    #[test]
    fn istio_sample_policy_with_several_modules() {
        let mixerauthz = r#"
package mixerauthz
import data.service_graph
import data.org_chart

default allow = false

allow {
    service_graph.allow
    org_chart.allow
}
"#;
        let org_chart = r#"
package org_chart

parsed_path = p {
    trimmed := trim(input.action.path, "/")
    p := split(trimmed, "/")
}

employees = {
    "alice": {"manager": "janet", "roles": ["engineering"]},
    "janet": {"roles": ["engineering"]},
    "ken": {"roles": ["hr"]},
}

allow { not is_sensitive_api }

is_sensitive_api { parsed_path[0] = "reviews" }

allow {
    parsed_path = ["reviews", user]
    input.subject.user = employees[user].manager
}

allow { employees[input.subject.user].roles[_] = "hr" }
"#;
        let graph = r#"
package service_graph

service_graph = {
    "landing_page": ["details", "reviews"],
}

default allow = false

allow { input.action.properties.target = "landing_page" }

allow {
    allowed_targets = service_graph[input.action.properties.source]
    input.action.properties.target = allowed_targets[_]
}
"#;
        let h = opa(json!({
            "policy": [mixerauthz, org_chart, graph],
            "checkMethod": "data.mixerauthz.allow",
            "failClose": true,
        }))
        .unwrap();
        let req = |user: &str, path: &str, target: &str| {
            json!({
                "subject": {"user": user},
                "action": {"path": path, "properties": {"source": "details", "target": target}},
            })
        };
        assert!(
            h.decide(req("janet", "/detail/alice", "landing_page"))
                .unwrap()
        );
        assert!(
            h.decide(req("janet", "/reviews/alice", "landing_page"))
                .unwrap()
        );
        assert!(
            h.decide(req("ken", "/reviews/janet", "landing_page"))
                .unwrap()
        );
        assert!(
            !h.decide(req("alice", "/reviews/janet", "landing_page"))
                .unwrap()
        );
        assert!(
            !h.decide(req("janet", "/detail/ken", "landing_pages"))
                .unwrap()
        );
    }

    #[test]
    fn undefined_results_follow_fail_close() {
        let policy = "package p\nallow { input.action.path == \"/ok\" }\n";
        let open = opa(json!({"policy": [policy], "checkMethod": "data.p.allow"})).unwrap();
        assert!(matches!(
            open.decide(json!({"action": {}, "subject": {}})),
            Err(OpaError::Undefined { .. })
        ));
        let counts =
            opa(json!({"policy": ["package p\nallow = 3\n"], "checkMethod": "data.p.allow"}))
                .unwrap();
        assert!(matches!(
            counts.decide(json!({})),
            Err(OpaError::NotBoolean { .. })
        ));
    }

    #[test]
    fn broken_policies_are_refused_with_the_field() {
        let e = opa(json!({"policy": ["package p\nallow { "], "checkMethod": "data.p.allow"}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.policy[0]: does not parse: opa_policy.0:2:7: expecting }"
        );
        assert!(e.message.contains("does not parse"), "{e}");
        let e = opa(json!({"policy": ["package p\nallow { nosuchfn(1) }\n"], "checkMethod": "data.p.allow"}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.policy: does not compile (evaluating data.p.allow): opa_policy.0:2:17: could not find function nosuchfn"
        );
        let e =
            opa(json!({"policy": ["package p\nallow = true\n"], "checkMethod": "data.q.allow"}))
                .unwrap_err();
        assert_eq!(e.field, "checkMethod", "{e}");
        assert!(
            e.message
                .starts_with("data.q.allow is not a rule of the policies"),
            "{e}"
        );
        let e = opa(json!({"policy": ["package p\nallow = true\n"]})).unwrap_err();
        assert_eq!(e.field, "checkMethod", "{e}");
        let e = opa(json!({"checkMethod": "data.p.allow"})).unwrap_err();
        assert_eq!(e.field, "policy", "{e}");
        let e = opa(json!({"policy": ["package p\nallow = true\n"], "checkMethod": "allow"}))
            .unwrap_err();
        assert_eq!(e.field, "checkMethod", "{e}");
        let e = opa(json!({"policy": ["package p\nallow = true\n"], "checkMethod": "data.p.allow", "failClose": 1}))
            .unwrap_err();
        assert_eq!(e.field, "failClose", "{e}");
        let e = opa(json!({"policy": ["package p\nallow = true\n"], "checkMethod": "data.p.allow", "fail_open": true}))
            .unwrap_err();
        assert_eq!(e.field, "fail_open", "{e}");
    }

    #[test]
    fn runaway_policies_are_cut_off() {
        // A hundred million iterations, but only when the input asks for them.
        let policy = r#"
package p
allow {
    input.spin == true
    numbers.range(1, 10000)[a]
    numbers.range(1, 10000)[b]
    a * b < 0
}
"#;
        let h = opa(json!({"policy": [policy], "checkMethod": "data.p.allow"})).unwrap();
        let start = std::time::Instant::now();
        let e = h.decide(json!({"spin": true})).unwrap_err();
        assert!(matches!(e, OpaError::Eval { .. }), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn authorization_instances_become_istios_input() {
        use crate::attribute::Value as Attr;
        use crate::config::{Instance, Variety};
        use std::borrow::Cow;
        let fields = [
            "subject.user",
            "subject.groups",
            "subject.properties.version",
            "action.namespace",
            "action.service",
            "action.method",
            "action.path",
            "action.properties.port",
        ];
        let instance = Instance {
            name: "authz.authorization.istio-system".into(),
            short_name: "authz".into(),
            namespace: "istio-system".into(),
            template: "authorization".into(),
            variety: Variety::Check,
            fields: fields.iter().map(|f| (*f).into()).collect(),
            exprs: Vec::new(),
        };
        let values = vec![
            Some(Attr::String(Cow::Borrowed("alice"))),
            Some(Attr::String(Cow::Borrowed("admins"))),
            Some(Attr::String(Cow::Borrowed("v1"))),
            Some(Attr::String(Cow::Borrowed("default"))),
            Some(Attr::String(Cow::Borrowed(""))),
            Some(Attr::String(Cow::Borrowed("GET"))),
            None,
            Some(Attr::Int64(8080)),
        ];
        let input = input(&InstanceValues {
            instance: &instance,
            values,
        });
        assert_eq!(
            input,
            json!({
                "subject": {"user": "alice", "groups": ["admins"], "properties": {"version": "v1"}},
                "action": {"namespace": "default", "method": "GET", "properties": {"port": 8080}},
            })
        );
    }
}
