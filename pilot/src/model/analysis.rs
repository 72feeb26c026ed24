//! Cross-object analysis of the config in force, as Istio's `istioctl analyze` does it for
//! the mistakes that silently break traffic: a VirtualService routing to a subset that no
//! DestinationRule defines (its requests get 503 from Envoy, for a cluster it was never
//! sent), or to a host the registry does not know; an authorization reference that does not
//! resolve (a CUSTOM policy's extension provider, a ServiceRoleBinding's ServiceRole), which
//! makes workloads fail closed. Messages use Istio's codes and names
//! (IST0101 `ReferencedResourceNotFound`), and are served on `/debug/analyzez` and by
//! `pilot check`.

use std::collections::BTreeMap;

use mesh_proto::Kind;
use mesh_proto::networking::{Destination, VirtualService};
use mesh_runtime::ConfigKey;
use mesh_runtime::config::status::{Finding, Findings};
use serde::Serialize;

use super::PushContext;
use super::push_context::Named;

/// Istio's code for a reference to something that does not exist.
pub const REFERENCED_RESOURCE_NOT_FOUND: (&str, &str) = ("IST0101", "ReferencedResourceNotFound");

/// How bad a message is (Istio's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

/// One finding about one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Message {
    pub level: Level,
    pub code: &'static str,
    pub name: &'static str,
    /// The object's kind, namespace and name.
    pub kind: &'static str,
    pub namespace: String,
    pub object: String,
    /// Where in the object (e.g. `spec.http[0].route[1].destination`).
    pub field: String,
    pub message: String,
}

// === impl Message ===

impl Message {
    /// Istio's one-line form: `Error [IST0101] (VirtualService default/reviews) ...`.
    pub fn render(&self) -> String {
        format!(
            "{:?} [{}] ({} {}/{}) {}: {}",
            self.level, self.code, self.kind, self.namespace, self.object, self.field, self.message
        )
    }
}

/// `messages` by object, as the config store writes them to status and `/debug/configz`
/// shows them.
pub fn findings(messages: &[Message]) -> Findings {
    let kinds: Vec<Kind> = Kind::all()
        .into_iter()
        .filter(|k| k.group().ends_with("istio.io"))
        .collect();
    let mut out: Findings = BTreeMap::new();
    for m in messages {
        let Some(kind) = kinds.iter().find(|k| k.name() == m.kind) else {
            continue;
        };
        let key = ConfigKey::new(kind.clone(), m.namespace.clone(), m.object.clone());
        out.entry(key).or_default().push(Finding {
            level: match m.level {
                Level::Error => "ERROR",
                Level::Warning => "WARNING",
                Level::Info => "INFO",
            },
            code: m.code,
            name: m.name,
            field: m.field.clone(),
            message: m.message.clone(),
        });
    }
    out
}

/// Every finding about the config of `ctx`, sorted.
pub fn analyze(ctx: &PushContext) -> Vec<Message> {
    let mut out = Vec::new();
    for vs in ctx.all_virtual_services() {
        virtual_service(ctx, vs, &mut out);
    }
    let (code, name) = REFERENCED_RESOURCE_NOT_FOUND;
    for (kind, namespace, object, field, message) in ctx.authz.dangling(&ctx.mesh) {
        out.push(Message {
            level: Level::Error,
            code,
            name,
            kind,
            namespace,
            object,
            field,
            message,
        });
    }
    custom_provider_services(ctx, &mut out);
    out.sort();
    out.dedup();
    out
}

/// A CUSTOM policy whose ext_authz provider names a service (or port) the registry lacks:
/// its workloads cannot ask, so they deny what its rules match.
fn custom_provider_services(ctx: &PushContext, out: &mut Vec<Message>) {
    let (code, name) = REFERENCED_RESOURCE_NOT_FOUND;
    for (namespace, object, provider_name) in ctx.authz.custom() {
        let Some(provider) = ctx
            .mesh
            .extension_provider(provider_name)
            .and_then(|e| e.ext_authz())
        else {
            continue; // Said by `Authz::dangling`.
        };
        let host = provider.hostname();
        let message = match ctx.registry.service(host) {
            None => format!(
                "Referenced service of extension provider {provider_name:?} not found: \
                 {host:?}; what its rules match is denied"
            ),
            Some(s) if !s.ports.iter().any(|p| p.number == provider.port()) => format!(
                "Referenced port {} of extension provider {provider_name:?} not found on \
                 service {host:?}; what its rules match is denied",
                provider.port()
            ),
            Some(_) => continue,
        };
        out.push(Message {
            level: Level::Error,
            code,
            name,
            kind: "AuthorizationPolicy",
            namespace: namespace.to_string(),
            object: object.to_string(),
            field: "spec.provider.name".to_string(),
            message,
        });
    }
}

/// The destinations of a VirtualService, with where they are.
fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].route[{j}].destination"),
                &d.destination,
            ));
        }
        if let Some(m) = &r.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
            ));
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.tls[{i}].route[{j}].destination"),
                &d.destination,
            ));
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.tcp[{i}].route[{j}].destination"),
                &d.destination,
            ));
        }
    }
    out
}

fn virtual_service(ctx: &PushContext, vs: &Named<VirtualService>, out: &mut Vec<Message>) {
    let (code, name) = REFERENCED_RESOURCE_NOT_FOUND;
    let msg = |field: String, message: String| Message {
        level: Level::Error,
        code,
        name,
        kind: "VirtualService",
        namespace: vs.namespace.clone(),
        object: vs.name.clone(),
        field,
        message,
    };
    for (field, d) in destinations(&vs.spec) {
        let host = ctx.resolve(&d.host, &vs.namespace);
        let Some(service) = ctx.registry.service(&host) else {
            out.push(msg(
                field,
                format!("Referenced host not found: {:?}", d.host),
            ));
            continue;
        };
        let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if ctx.subset(&vs.namespace, service, subset).is_none() {
            out.push(msg(
                field,
                format!(
                    "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                    d.host
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    #[test]
    fn a_missing_subset_and_an_unknown_host_are_named() {
        let ctx = testutil::push_context(
            "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v9}
      weight: 50
  - route:
    - destination: {host: nowhere}
",
        );
        let got: Vec<String> = analyze(&ctx).iter().map(Message::render).collect();
        assert_eq!(
            got,
            [
                "Error [IST0101] (VirtualService default/reviews) spec.http[0].route[1].destination: \
                 Referenced host+subset in destinationrule not found: \"reviews+v9\"",
                "Error [IST0101] (VirtualService default/reviews) spec.http[1].route[0].destination: \
                 Referenced host not found: \"nowhere\"",
            ]
        );
    }

    #[test]
    fn dangling_authorization_references_are_named() {
        let ctx = testutil::TestConfig::from_yaml(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: nowhere}
  rules: [{to: [{operation: {paths: [/x]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: known, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: [/y]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wrong-port, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa-admin}
  rules: [{to: [{operation: {paths: [/z]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-service, namespace: default}
spec:
  action: CUSTOM
  provider: {name: gone}
  rules: [{to: [{operation: {paths: [/w]}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: opa, namespace: default}
spec:
  hosts: [opa.default.svc.cluster.local]
  ports: [{number: 9191, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: dangling, namespace: default}
spec:
  subjects: [{user: '*'}]
  roleRef: {kind: ServiceRole, name: gone}
",
        )
        .mesh_yaml(
            "extensionProviders:
- name: opa
  envoyExtAuthzGrpc: {service: opa.default.svc.cluster.local, port: 9191}
- name: opa-admin
  envoyExtAuthzGrpc: {service: opa.default.svc.cluster.local, port: 9999}
- name: gone
  envoyExtAuthzHttp: {service: authz.elsewhere.svc.cluster.local, port: 8000}
",
        )
        .push_context();
        let messages = analyze(&ctx);
        let got: Vec<String> = messages.iter().map(Message::render).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].starts_with(
                "Error [IST0101] (AuthorizationPolicy default/ext) spec.provider.name: \
                 Referenced extension provider not found: \"nowhere\""
            ),
            "{}",
            got[0]
        );
        assert!(
            got[3].starts_with(
                "Error [IST0101] (ServiceRoleBinding default/dangling) spec.roleRef.name: \
                 Referenced ServiceRole not found: default/gone"
            ),
            "{}",
            got[3]
        );
        assert!(
            got[1].starts_with(
                "Error [IST0101] (AuthorizationPolicy default/no-service) spec.provider.name: \
                 Referenced service of extension provider \"gone\" not found: \
                 \"authz.elsewhere.svc.cluster.local\""
            ),
            "{}",
            got[1]
        );
        assert!(
            got[2].starts_with(
                "Error [IST0101] (AuthorizationPolicy default/wrong-port) spec.provider.name: \
                 Referenced port 9999 of extension provider \"opa-admin\" not found"
            ),
            "{}",
            got[2]
        );
        // By object, as statuses and /debug/configz carry them.
        let by_object = findings(&messages);
        assert_eq!(by_object.len(), 4);
        let key = ConfigKey::new(Kind::AuthorizationPolicy, "default", "wrong-port");
        assert_eq!(by_object[&key][0].code, "IST0101");
        assert_eq!(by_object[&key][0].level, "ERROR");
        assert_eq!(by_object[&key][0].field, "spec.provider.name");
    }
}
