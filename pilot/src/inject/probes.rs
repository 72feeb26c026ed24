//! Rewriting the app's HTTP probes to the agent's status port, as Istio's injector does
//! (`sidecar.istio.io/rewriteAppHTTPProbers`, on by default).
//!
//! With the pod's inbound traffic captured, the kubelet's probe of `httpGet :9080/health`
//! lands on the sidecar's inbound listener, which under STRICT mutual TLS refuses a client
//! without a mesh certificate: the app would never be ready. So each `httpGet` probe of an
//! app container becomes `httpGet :15020/app-health/CONTAINER/{readyz,livez,startupz}`, and
//! the original goes, as JSON, into the proxy container's `ISTIO_KUBE_APP_PROBERS`; the agent
//! (`pilot-agent`'s status server) calls the app's own endpoint on 127.0.0.1 (which the
//! capture rules leave alone) and answers with its status.
//!
//! A probe on a named port is resolved through the container's `ports`; one whose port
//! cannot be resolved, and `tcpSocket`, `exec` and `grpc` probes, are left as they are.

use serde_json::{Map, Value, json};

/// The annotation that turns the rewrite off (`"false"`).
pub const REWRITE_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// The proxy container's variable the agent reads the original probes from.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";
/// The agent's status port.
pub const STATUS_PORT: u16 = 15020;

/// The probes rewritten, and the path each gets on the status port.
const PROBES: [(&str, &str); 3] = [
    ("readinessProbe", "readyz"),
    ("livenessProbe", "livez"),
    ("startupProbe", "startupz"),
];

/// Whether the pod's annotations ask for the rewrite (anything but a no does).
pub fn wanted(annotations: &Value) -> bool {
    let v = match annotations.get(REWRITE_ANNOTATION) {
        Some(Value::Bool(b)) => return *b,
        Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
        _ => return true,
    };
    !matches!(v.as_str(), "false" | "no" | "n" | "off")
}

/// Rewrites the HTTP probes of `containers` in place; the `ISTIO_KUBE_APP_PROBERS` map of
/// what they were (empty when nothing was rewritten).
pub fn rewrite(containers: &mut [Value]) -> Map<String, Value> {
    let mut probers = Map::new();
    for c in containers.iter_mut() {
        let Some(c) = c.as_object_mut() else { continue };
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ports = c.get("ports").cloned().unwrap_or(Value::Null);
        for (key, suffix) in PROBES {
            let Some(probe) = c.get_mut(key).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(http) = probe.get("httpGet").and_then(Value::as_object) else {
                continue;
            };
            let Some(port) = resolve_port(http.get("port"), &ports) else {
                continue;
            };
            let path = format!("/app-health/{name}/{suffix}");
            let mut original = http.clone();
            original.insert("port".into(), json!(port));
            let mut entry = Map::new();
            entry.insert("httpGet".into(), Value::Object(original));
            if let Some(t) = probe.get("timeoutSeconds") {
                entry.insert("timeoutSeconds".into(), t.clone());
            }
            probers.insert(path.clone(), Value::Object(entry));
            probe.insert(
                "httpGet".into(),
                json!({"path": path, "port": STATUS_PORT, "scheme": "HTTP"}),
            );
        }
    }
    probers
}

/// Adds `ISTIO_KUBE_APP_PROBERS` to the env of the container named `proxy` among
/// `containers`, replacing one the template set.
pub fn set_env(containers: &mut [Value], proxy: &str, probers: &Map<String, Value>) {
    let Some(c) = containers
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(proxy))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let text = Value::Object(probers.clone()).to_string();
    let env = c.entry("env").or_insert_with(|| json!([]));
    if !env.is_array() {
        *env = json!([]);
    }
    if let Some(env) = env.as_array_mut() {
        env.retain(|e| e.get("name").and_then(Value::as_str) != Some(PROBERS_ENV));
        env.push(json!({"name": PROBERS_ENV, "value": text}));
    }
}

/// A probe's port as a number: itself, or the named port of the container.
fn resolve_port(port: Option<&Value>, ports: &Value) -> Option<u16> {
    match port? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => ports.as_array()?.iter().find_map(|p| {
                (p.get("name").and_then(Value::as_str) == Some(s.as_str()))
                    .then(|| p.get("containerPort")?.as_u64())
                    .flatten()
                    .and_then(|n| u16::try_from(n).ok())
            }),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_probes_go_to_the_status_port_and_the_originals_to_the_env() {
        let mut containers = vec![json!({
            "name": "app",
            "ports": [{"name": "http", "containerPort": 9080}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 9081, "scheme": "HTTP"}},
            "startupProbe": {"tcpSocket": {"port": 9080}},
        })];
        let probers = rewrite(&mut containers);
        let c = &containers[0];
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"})
        );
        assert_eq!(c["readinessProbe"]["timeoutSeconds"], 2);
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"],
            "/app-health/app/livez"
        );
        assert_eq!(c["startupProbe"], json!({"tcpSocket": {"port": 9080}}));
        assert_eq!(
            probers["/app-health/app/readyz"],
            json!({"httpGet": {"path": "/health", "port": 9080}, "timeoutSeconds": 2})
        );
        assert_eq!(probers.len(), 2);
        // What the agent reads back.
        let text = Value::Object(probers.clone()).to_string();
        let parsed = crate::agent::status::parse_probers(&text).unwrap();
        assert_eq!(parsed["/app-health/app/livez"].http_get.port, 9081);

        let mut proxy = vec![json!({"name": "istio-proxy", "env": [{"name": "A", "value": "1"}]})];
        set_env(&mut proxy, "istio-proxy", &probers);
        assert_eq!(proxy[0]["env"][1]["name"], PROBERS_ENV);
        assert_eq!(proxy[0]["env"][1]["value"], text);
    }

    #[test]
    fn unresolvable_ports_stay_and_the_annotation_turns_it_off() {
        let mut containers = vec![json!({
            "name": "app",
            "readinessProbe": {"httpGet": {"path": "/health", "port": "nope"}},
        })];
        assert!(rewrite(&mut containers).is_empty());
        assert_eq!(containers[0]["readinessProbe"]["httpGet"]["port"], "nope");
        assert!(wanted(&json!({})));
        assert!(wanted(&json!({REWRITE_ANNOTATION: "true"})));
        assert!(!wanted(&json!({REWRITE_ANNOTATION: "false"})));
        assert!(!wanted(&json!({REWRITE_ANNOTATION: false})));
    }
}
