//! The injection config: what ConfigMap `istio-sidecar-injector` holds under its `config`
//! key, as in Istio, with a YAML template instead of a Go one.
//!
//! ```yaml
//! policy: enabled        # or disabled: only pods annotated sidecar.istio.io/inject: "true"
//! sidecarMode: native    # or plain: the proxy in `containers`, as Istio 1.0 did
//! values: {...}          # defaults of the placeholders (see below), over the built-in ones
//! template: {...}        # or a string holding that YAML, as Istio's Go template is
//! ```
//!
//! The template is a pod spec fragment with `initContainers`, `containers`, `volumes` and
//! `imagePullSecrets`, rendered as [`super::template`] says. Its `containers` become native
//! sidecars (init containers with `restartPolicy: Always`, right after the template's own
//! init containers and before the app's) in `native` mode, and are appended to the app's
//! containers in `plain` mode (then the template's init containers come after the app's, so
//! those still reach the network before iptables redirects it to a proxy not yet running).
//!
//! The placeholders are the `values` (an operator may add their own), each pod annotation
//! of [`ANNOTATIONS`] overriding its value, and what injection computes per pod
//! ([`COMPUTED`]).

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::InjectError;
use super::template::{self, Values};

/// Whether pods without an `sidecar.istio.io/inject` annotation (or label) are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Inject unless the pod says `"false"`.
    Enabled,
    /// Inject only when the pod says `"true"`.
    Disabled,
}

/// Where the template's `containers` go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarMode {
    /// Kubernetes native sidecars: init containers with `restartPolicy: Always` (1.29+).
    #[default]
    Native,
    /// Plain containers beside the app's (Istio 1.0).
    Plain,
}

/// How a value (the config's, or the annotation overriding it) is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// An image reference: not empty, no whitespace.
    Image,
    /// `REDIRECT`, `TPROXY` or `NONE`.
    InterceptionMode,
    /// A Kubernetes quantity (`10m`, `64Mi`, `0.5`).
    Quantity,
    /// Comma-separated CIDRs, possibly none.
    Cidrs,
    /// `*` or comma-separated CIDRs.
    CidrsOrStar,
    /// Comma-separated ports (1-65535), possibly none.
    Ports,
    /// `*` or comma-separated ports.
    PortsOrStar,
    /// An integer of at least 0.
    Seconds,
    /// An integer of at least 1.
    Positive,
}

/// The annotations a pod may set, the value each overrides, and its check. Istio's names.
pub const ANNOTATIONS: &[(&str, &str, Check)] = &[
    ("sidecar.istio.io/proxyImage", "proxyImage", Check::Image),
    (
        "sidecar.istio.io/interceptionMode",
        "interceptionMode",
        Check::InterceptionMode,
    ),
    ("sidecar.istio.io/proxyCPU", "proxyCPU", Check::Quantity),
    (
        "sidecar.istio.io/proxyMemory",
        "proxyMemory",
        Check::Quantity,
    ),
    (
        "sidecar.istio.io/proxyCPULimit",
        "proxyCPULimit",
        Check::Quantity,
    ),
    (
        "sidecar.istio.io/proxyMemoryLimit",
        "proxyMemoryLimit",
        Check::Quantity,
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "includeOutboundIPRanges",
        Check::CidrsOrStar,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "excludeOutboundIPRanges",
        Check::Cidrs,
    ),
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        "includeInboundPorts",
        Check::PortsOrStar,
    ),
    (
        "traffic.sidecar.istio.io/excludeInboundPorts",
        "excludeInboundPorts",
        Check::Ports,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "excludeOutboundPorts",
        Check::Ports,
    ),
    (
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        "readinessInitialDelaySeconds",
        Check::Seconds,
    ),
    (
        "readiness.status.sidecar.istio.io/periodSeconds",
        "readinessPeriodSeconds",
        Check::Positive,
    ),
    (
        "readiness.status.sidecar.istio.io/failureThreshold",
        "readinessFailureThreshold",
        Check::Positive,
    ),
];

/// The placeholders injection computes for each pod; `values` cannot set them.
pub const COMPUTED: &[(&str, &str)] = &[
    (
        "excludeInboundPortsAll",
        "the proxy's own ports (15090, 15021, 15020) and excludeInboundPorts, for iptables -d",
    ),
    (
        "captureTraffic",
        "true unless interceptionMode is NONE (then no istio-init)",
    ),
    (
        "proxyCapabilities",
        "null: the proxy gets no capabilities (TPROXY, which would need NET_ADMIN, is refused)",
    ),
    (
        "serviceAccount",
        "the pod's serviceAccountName, or `default`",
    ),
    (
        "podPorts",
        "JSON of the app containers' ports (ISTIO_META_POD_PORTS)",
    ),
    (
        "appContainers",
        "the app containers' names, comma-separated",
    ),
    (
        "labelsJSON",
        "JSON of the pod's labels (ISTIO_METAJSON_LABELS)",
    ),
    ("version", "this build's version"),
];

/// Names the defaults leave `null` (unset) yet a template may use.
const UNSET: &[&str] = &["proxyCPULimit", "proxyMemoryLimit", "includeInboundPorts"];

/// A usable injection config.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub policy: Policy,
    pub sidecar_mode: SidecarMode,
    /// The defaults of the placeholders: the built-in ones under the config's.
    pub values: Values,
    /// The template: a mapping with some of `initContainers`, `containers`, `volumes`,
    /// `imagePullSecrets`.
    pub template: Value,
    /// Hash of the config, the `version` of the status annotation.
    pub version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    policy: Policy,
    #[serde(default)]
    sidecar_mode: SidecarMode,
    #[serde(default)]
    values: Values,
    template: Value,
}

/// The keys a template may have.
const TEMPLATE_KEYS: &[&str] = &[
    "initContainers",
    "containers",
    "volumes",
    "imagePullSecrets",
];

// === impl InjectConfig ===

impl InjectConfig {
    /// Parses the `config` value of ConfigMap `istio-sidecar-injector`, or that whole
    /// ConfigMap (`kind: ConfigMap`, `data.config`).
    pub fn parse(text: &str) -> Result<Self, InjectError> {
        let doc: Value = yaml_serde::from_str(text).map_err(|e| config_err("(file)", e))?;
        if doc.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
            let Some(config) = doc.pointer("/data/config").and_then(Value::as_str) else {
                return Err(config_err(
                    "data.config",
                    "the ConfigMap has no `config` key",
                ));
            };
            return Self::parse(config);
        }
        let de = serde_json::Value::deserialize(doc).map_err(|e| config_err("(file)", e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            config_err(&field, e.into_inner())
        })?;
        let template = match raw.template {
            Value::String(s) => yaml_serde::from_str(&s).map_err(|e| config_err("template", e))?,
            other => other,
        };
        let Value::Object(map) = &template else {
            return Err(config_err(
                "template",
                "expected a mapping (or a string of one)",
            ));
        };
        for (key, v) in map {
            if !TEMPLATE_KEYS.contains(&key.as_str()) {
                return Err(config_err(
                    &format!("template.{key}"),
                    format!("unknown key; expected one of {}", TEMPLATE_KEYS.join(", ")),
                ));
            }
            if !v.is_array() {
                return Err(config_err(&format!("template.{key}"), "expected a list"));
            }
        }
        let mut values = builtin_values();
        for (name, v) in raw.values {
            if COMPUTED.iter().any(|(c, _)| *c == name) {
                return Err(config_err(
                    &format!("values.{name}"),
                    "computed for each pod; it cannot be set",
                ));
            }
            if let Some((_, _, check)) = ANNOTATIONS.iter().find(|(_, n, _)| *n == name)
                && !v.is_null()
            {
                let text = scalar_text(&v).ok_or_else(|| {
                    config_err(&format!("values.{name}"), "expected a string or number")
                })?;
                check_value(*check, &text)
                    .map_err(|r| config_err(&format!("values.{name}"), format!("{text:?}: {r}")))?;
            }
            values.insert(name, v);
        }
        // Every placeholder must have a value, or be computed.
        for name in template::placeholders(&template)? {
            if !values.contains_key(&name) && !COMPUTED.iter().any(|(c, _)| *c == name) {
                return Err(config_err(
                    "template",
                    format!("unknown placeholder ${{{name}}} (not in values, not computed)"),
                ));
            }
        }
        let version = hex(&Sha256::digest(text.as_bytes()));
        Ok(Self {
            policy: raw.policy,
            sidecar_mode: raw.sidecar_mode,
            values,
            template,
            version,
        })
    }

    /// The built-in config ([`default_config_yaml`]).
    pub fn builtin() -> Self {
        // The built-in text is tested to parse (`builtin_config_parses`).
        Self::parse(&default_config_yaml()).expect("the built-in injection config parses")
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self::builtin()
    }
}

fn config_err(field: &str, reason: impl std::fmt::Display) -> InjectError {
    InjectError::Config {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// A string or number as text.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The values every config starts from (the `values` of [`default_config_yaml`] for the
/// default image).
fn builtin_values() -> Values {
    let mut v = match json!({
        "proxyImage": format!("docker.io/mesh/proxy:{}", env!("CARGO_PKG_VERSION")),
        "imagePullPolicy": "IfNotPresent",
        "discoveryAddress": "istio-pilot.istio-system.svc:15010",
        "proxyUID": 1337,
        "concurrency": 2,
        "clusterID": "Kubernetes",
        "interceptionMode": "REDIRECT",
        "includeOutboundIPRanges": "*",
        "excludeOutboundIPRanges": "",
        "excludeInboundPorts": "",
        "excludeOutboundPorts": "",
        "proxyCPU": "10m",
        "proxyMemory": "64Mi",
        "readinessInitialDelaySeconds": 1,
        "readinessPeriodSeconds": 2,
        "readinessFailureThreshold": 30,
    }) {
        Value::Object(m) => m,
        _ => Values::new(),
    };
    for name in UNSET {
        v.insert((*name).to_string(), Value::Null);
    }
    v
}

/// Checks one value; the reason when it is unusable.
pub fn check_value(check: Check, v: &str) -> Result<(), String> {
    match check {
        Check::Image => {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                return Err("expected an image reference (no spaces)".into());
            }
        }
        Check::InterceptionMode => {
            if !matches!(v, "REDIRECT" | "TPROXY" | "NONE") {
                return Err("expected REDIRECT, TPROXY or NONE".into());
            }
        }
        Check::Quantity => check_quantity(v)?,
        Check::Cidrs => list(v, check_cidr)?,
        Check::CidrsOrStar => {
            if v.trim() != "*" {
                list(v, check_cidr)?;
            }
        }
        Check::Ports => list(v, check_port)?,
        Check::PortsOrStar => {
            if v.trim() != "*" {
                list(v, check_port)?;
            }
        }
        Check::Seconds | Check::Positive => {
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| "expected a whole number".to_string())?;
            if check == Check::Positive && n == 0 {
                return Err("expected at least 1".into());
            }
        }
    }
    Ok(())
}

/// Each comma-separated item of `v` (none when `v` is blank) passes `f`.
fn list(v: &str, f: fn(&str) -> Result<(), String>) -> Result<(), String> {
    if v.trim().is_empty() {
        return Ok(());
    }
    for item in v.split(',') {
        f(item.trim()).map_err(|r| format!("{:?}: {r}", item.trim()))?;
    }
    Ok(())
}

fn check_cidr(s: &str) -> Result<(), String> {
    let Some((ip, len)) = s.split_once('/') else {
        return Err("expected a CIDR (address/prefix length)".into());
    };
    let ip: std::net::IpAddr = ip.parse().map_err(|_| "not an IP address".to_string())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .map_err(|_| "the prefix length is not a number".to_string())?;
    if len > max {
        return Err(format!("prefix length {len} is over {max}"));
    }
    Ok(())
}

fn check_port(s: &str) -> Result<(), String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("expected a port (1-65535)".into()),
    }
}

/// A Kubernetes quantity: a non-negative decimal with an optional suffix (`m`, `k`, `Mi`,
/// `e3`, ...).
fn check_quantity(s: &str) -> Result<(), String> {
    let bad = || Err("expected a Kubernetes quantity, e.g. 100m, 0.5, 128Mi".to_string());
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return bad();
    }
    let ok = match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())),
    };
    if ok { Ok(()) } else { bad() }
}

/// The built-in config (the `config` value of ConfigMap `istio-sidecar-injector`) with the
/// proxy image `docker.io/mesh/proxy:<this version>`.
pub fn default_config_yaml() -> String {
    config_yaml_for_image(&format!(
        "docker.io/mesh/proxy:{}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The built-in config with another proxy image (e.g. `pilot manifest --hub/--tag`'s).
pub fn config_yaml_for_image(image: &str) -> String {
    let image = serde_json::to_string(image).unwrap_or_default();
    DEFAULT_CONFIG.replace("@PROXY_IMAGE@", &image)
}

const DEFAULT_CONFIG: &str = r#"# Sidecar injection (pilot kube-inject; the injection webhook).
#
# policy: enabled injects every pod but those annotated (or labelled)
#   sidecar.istio.io/inject: "false"; disabled only those saying "true". Never injected:
#   hostNetwork pods, namespaces kube-system and kube-public, pods already injected.
# sidecarMode: native puts the template's containers among the init containers with
#   restartPolicy: Always (Kubernetes 1.29+); plain appends them to the app's containers.
#
# The template is YAML. In a string, ${name} is the value `name`; a string that is only
# ${name} takes the value's type (${name:string} does not), and a null value removes its key. `$when: ${name}` keeps a
# mapping only when the value is true. $${ is a literal ${.
# Values: those below (pod annotations override them: sidecar.istio.io/proxyImage,
# interceptionMode, proxyCPU, proxyMemory, proxyCPULimit, proxyMemoryLimit;
# traffic.sidecar.istio.io/includeOutboundIPRanges, excludeOutboundIPRanges,
# includeInboundPorts [default: the containers' TCP ports; none declared, none captured],
# excludeInboundPorts, excludeOutboundPorts; readiness.status.sidecar.istio.io/
# initialDelaySeconds, periodSeconds, failureThreshold), any you add, and per pod:
# excludeInboundPortsAll, captureTraffic, proxyCapabilities, serviceAccount, podPorts,
# appContainers, labelsJSON, version.
policy: enabled
sidecarMode: native
values:
  proxyImage: @PROXY_IMAGE@
  imagePullPolicy: IfNotPresent
  discoveryAddress: istio-pilot.istio-system.svc:15010
  proxyUID: 1337
  concurrency: 2
  clusterID: Kubernetes
  interceptionMode: REDIRECT
  includeOutboundIPRanges: "*"
  excludeOutboundIPRanges: ""
  excludeInboundPorts: ""
  excludeOutboundPorts: ""
  proxyCPU: 10m
  proxyMemory: 64Mi
  proxyCPULimit: null
  proxyMemoryLimit: null
  readinessInitialDelaySeconds: 1
  readinessPeriodSeconds: 2
  readinessFailureThreshold: 30
template:
  initContainers:
  - $when: ${captureTraffic}
    name: istio-init
    image: ${proxyImage}
    imagePullPolicy: ${imagePullPolicy}
    command: [/usr/local/bin/pilot-agent]
    args:
    - iptables
    - -p
    - "15001"
    - -z
    - "15006"
    - -u
    - ${proxyUID:string}
    - -m
    - ${interceptionMode}
    - -i
    - ${includeOutboundIPRanges}
    - -x
    - ${excludeOutboundIPRanges}
    - -b
    - ${includeInboundPorts}
    - -d
    - ${excludeInboundPortsAll}
    - -o
    - ${excludeOutboundPorts}
    resources:
      requests: {cpu: 10m, memory: 10Mi}
      limits: {cpu: 100m, memory: 50Mi}
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      runAsNonRoot: false
      allowPrivilegeEscalation: false
      privileged: false
      readOnlyRootFilesystem: false
      capabilities:
        add: [NET_ADMIN, NET_RAW]
        drop: [ALL]
  containers:
  - name: istio-proxy
    image: ${proxyImage}
    imagePullPolicy: ${imagePullPolicy}
    command: [/usr/local/bin/pilot-agent]
    args:
    - proxy
    - sidecar
    - --discovery-address
    - ${discoveryAddress}
    - --concurrency
    - ${concurrency:string}
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: INSTANCE_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: SERVICE_ACCOUNT
      valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}
    - name: ISTIO_META_POD_PORTS
      value: ${podPorts}
    - name: ISTIO_META_APP_CONTAINERS
      value: ${appContainers}
    - name: ISTIO_META_CLUSTER_ID
      value: ${clusterID}
    - name: ISTIO_META_INTERCEPTION_MODE
      value: ${interceptionMode}
    - name: ISTIO_METAJSON_LABELS
      value: ${labelsJSON}
    ports:
    - name: http-envoy-prom
      containerPort: 15090
      protocol: TCP
    # Native sidecars: the app's containers start once this succeeds (the proxy has its
    # listeners and clusters), so its first connections are not refused.
    startupProbe:
      httpGet: {path: /healthz/ready, port: 15020}
      periodSeconds: 1
      timeoutSeconds: 3
      failureThreshold: 600
    readinessProbe:
      httpGet: {path: /healthz/ready, port: 15020}
      initialDelaySeconds: ${readinessInitialDelaySeconds}
      periodSeconds: ${readinessPeriodSeconds}
      failureThreshold: ${readinessFailureThreshold}
    resources:
      requests:
        cpu: ${proxyCPU}
        memory: ${proxyMemory}
      limits:
        cpu: ${proxyCPULimit}
        memory: ${proxyMemoryLimit}
    securityContext:
      runAsUser: ${proxyUID}
      runAsGroup: ${proxyUID}
      runAsNonRoot: true
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      privileged: false
      capabilities:
        add: ${proxyCapabilities}
        drop: [ALL]
    volumeMounts:
    - name: istio-envoy
      mountPath: /etc/istio/proxy
    - name: istio-token
      mountPath: /var/run/secrets/tokens
    - name: istio-certs
      mountPath: /etc/certs
      readOnly: true
  volumes:
  - name: istio-envoy
    emptyDir: {medium: Memory}
  - name: istio-token
    projected:
      sources:
      - serviceAccountToken:
          audience: istio-ca
          expirationSeconds: 43200
          path: istio-token
  - name: istio-certs
    secret:
      secretName: istio.${serviceAccount}
      optional: true
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_config_parses() {
        let c = InjectConfig::parse(&default_config_yaml()).unwrap();
        assert_eq!(c.policy, Policy::Enabled);
        assert_eq!(c.sidecar_mode, SidecarMode::Native);
        assert_eq!(c.values["proxyUID"], 1337);
        assert_eq!(c.version.len(), 64);
        let other = InjectConfig::parse(&config_yaml_for_image("r.example/p:9")).unwrap();
        assert_eq!(other.values["proxyImage"], "r.example/p:9");
        assert_ne!(other.version, c.version);
    }

    #[test]
    fn configmap_and_string_template_are_read() {
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-sidecar-injector", "namespace": "istio-system"},
            "data": {"config": "policy: disabled\nsidecarMode: plain\ntemplate: |\n  containers:\n  - name: istio-proxy\n    image: ${proxyImage}\n"},
        });
        let c = InjectConfig::parse(&yaml_serde::to_string(&cm).unwrap()).unwrap();
        assert_eq!(c.policy, Policy::Disabled);
        assert_eq!(c.sidecar_mode, SidecarMode::Plain);
        assert_eq!(c.template["containers"][0]["image"], "${proxyImage}");
    }

    #[test]
    fn bad_configs_are_refused() {
        for (text, want) in [
            ("policy: sometimes\ntemplate: {}", "policy"),
            ("policy: enabled\ntemplate: {}\nextra: 1", "extra"),
            ("policy: enabled\ntemplate: {pods: []}", "template.pods"),
            (
                "policy: enabled\ntemplate: {containers: {}}",
                "expected a list",
            ),
            (
                "policy: enabled\ntemplate: {containers: [{image: '${nope}'}]}",
                "${nope}",
            ),
            (
                "policy: enabled\nvalues: {proxyCPU: lots}\ntemplate: {}",
                "values.proxyCPU",
            ),
            (
                "policy: enabled\nvalues: {podPorts: x}\ntemplate: {}",
                "values.podPorts",
            ),
            ("kind: ConfigMap\ndata: {}", "data.config"),
            ("[", "(file)"),
        ] {
            let e = InjectConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn checks() {
        use Check::*;
        for (c, v) in [
            (Quantity, "10m"),
            (Quantity, "0.5"),
            (Quantity, "64Mi"),
            (Quantity, "1e3"),
            (Cidrs, ""),
            (Cidrs, "10.0.0.0/8, 192.168.0.0/16"),
            (Cidrs, "fd00::/8"),
            (CidrsOrStar, "*"),
            (Ports, "80,8080"),
            (PortsOrStar, "*"),
            (Seconds, "0"),
            (InterceptionMode, "TPROXY"),
            (Image, "a/b:c"),
        ] {
            assert_eq!(check_value(c, v), Ok(()), "{c:?} {v:?}");
        }
        for (c, v) in [
            (Quantity, "lots"),
            (Quantity, ""),
            (Quantity, "-1"),
            (Quantity, "1.2.3"),
            (Quantity, "5Xi"),
            (Cidrs, "10.0.0.0/33"),
            (Cidrs, "10.0.0.0"),
            (Cidrs, "*"),
            (Cidrs, "x/8"),
            (Ports, "0"),
            (Ports, "70000"),
            (Ports, "*"),
            (Ports, "80,"),
            (Positive, "0"),
            (Seconds, "-1"),
            (InterceptionMode, "FOO"),
            (Image, "a b"),
        ] {
            assert!(check_value(c, v).is_err(), "{c:?} {v:?}");
        }
    }
}
