//! The CustomResourceDefinitions of every kind this control plane serves, generated from the
//! spec types so that the API server validates (and prunes) objects exactly as [`parse_spec`]
//! reads them.
//!
//! Typed kinds get their schema from the spec type (through kube's `CustomResource` derive and
//! schemars); the per-adapter and per-template Mixer kinds get a spec that preserves unknown
//! fields. Every CRD serves all of the kind's [`versions`](Kind::versions) with one schema, the
//! first being the storage version; `spec` is optional and nullable (Istio allows empty specs,
//! and its own files write `spec:` with nothing after it, e.g. a `checknothing` instance) and
//! `status` is free-form, served as the `status` subresource (as in Istio's CRDs).
//! `manifests/crds.yaml` is the output of [`crds_yaml`]:
//! `cargo run -p mesh-proto --bin gen-crds -- --out manifests/crds.yaml`.
//!
//! [`parse_spec`]: crate::parse_spec

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::kind::Kind;
use crate::{authentication, networking, policy, rbac, routing, security};

/// The first lines of `manifests/crds.yaml`.
pub const YAML_HEADER: &str = "\
# CustomResourceDefinitions of every Istio kind the mesh serves.
# Generated from the types of the mesh-proto crate; do not edit. Regenerate with:
#   cargo run -p mesh-proto --bin gen-crds -- --out manifests/crds.yaml
";

/// The CRD of a kind, or `None` for kinds that no CRD of ours defines (the core
/// ServiceAccount, and [`Kind::Other`]).
pub fn crd(kind: &Kind) -> Option<CustomResourceDefinition> {
    let derived = match kind {
        Kind::ServiceEntry => networking::ServiceEntryResource::crd(),
        Kind::VirtualService => networking::VirtualServiceResource::crd(),
        Kind::DestinationRule => networking::DestinationRuleResource::crd(),
        Kind::Gateway => networking::GatewayResource::crd(),
        Kind::Sidecar => networking::SidecarResource::crd(),
        Kind::WorkloadEntry => networking::WorkloadEntryResource::crd(),
        Kind::Rule => policy::RuleResource::crd(),
        Kind::Handler => policy::HandlerResource::crd(),
        Kind::Instance => policy::InstanceResource::crd(),
        Kind::AttributeManifest => policy::AttributeManifestResource::crd(),
        Kind::Adapter => policy::AdapterResource::crd(),
        Kind::Template => policy::TemplateResource::crd(),
        Kind::CompiledAdapter(_) | Kind::CompiledTemplate(_) => free_form_crd(kind),
        Kind::QuotaSpec => policy::QuotaSpecResource::crd(),
        Kind::QuotaSpecBinding => policy::QuotaSpecBindingResource::crd(),
        Kind::HttpApiSpec => policy::HttpApiSpecResource::crd(),
        Kind::HttpApiSpecBinding => policy::HttpApiSpecBindingResource::crd(),
        Kind::RouteRule => routing::RouteRuleResource::crd(),
        Kind::DestinationPolicy => routing::DestinationPolicyResource::crd(),
        Kind::EgressRule => routing::EgressRuleResource::crd(),
        Kind::ServiceRole => rbac::ServiceRoleResource::crd(),
        Kind::ServiceRoleBinding => rbac::ServiceRoleBindingResource::crd(),
        Kind::RbacConfig => rbac::RbacConfigResource::crd(),
        Kind::ClusterRbacConfig => rbac::ClusterRbacConfigResource::crd(),
        Kind::AuthorizationPolicy => security::AuthorizationPolicyResource::crd(),
        Kind::PeerAuthentication => security::PeerAuthenticationResource::crd(),
        Kind::RequestAuthentication => security::RequestAuthenticationResource::crd(),
        Kind::AuthenticationPolicy => authentication::PolicyResource::crd(),
        Kind::MeshPolicy => authentication::MeshPolicyResource::crd(),
        Kind::ServiceAccount | Kind::Other { .. } => return None,
    };
    Some(finish(kind, derived))
}

/// The CRDs of every kind in [`Kind::all`] that has one, in that order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    Kind::all().iter().filter_map(crd).collect()
}

/// All the CRDs as one multi-document YAML file, with a header saying how it was made.
pub fn crds_yaml() -> String {
    let mut out = String::from(YAML_HEADER);
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}

/// Applies what every CRD shares: one version entry per served version, optional and nullable
/// `spec`, free-form `status`, and no schema defaults (the API server would write them into
/// objects).
fn finish(kind: &Kind, mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let template = crd
        .spec
        .versions
        .first()
        .cloned()
        .expect("a CRD has a version");
    let schema = template
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("a schema serializes"))
        .map(finish_schema)
        .map(|s| serde_json::from_value::<JSONSchemaProps>(s).expect("a schema deserializes"));
    crd.spec.versions = kind
        .versions()
        .iter()
        .enumerate()
        .map(|(i, version)| CustomResourceDefinitionVersion {
            name: version.to_string(),
            served: true,
            storage: i == 0,
            schema: Some(CustomResourceValidation {
                open_api_v3_schema: schema.clone(),
            }),
            subresources: Some(status_subresource()),
            ..template.clone()
        })
        .collect();
    crd
}

/// The `status` subresource, as Istio's CRDs have it: the control plane writes status
/// (conditions on refused objects) through `/status`, and `kubectl apply` of the spec never
/// touches it.
fn status_subresource() -> CustomResourceSubresources {
    CustomResourceSubresources {
        status: Some(CustomResourceSubresourceStatus(json!({}))),
        scale: None,
    }
}

fn finish_schema(mut root: Value) -> Value {
    strip_defaults(&mut root);
    if let Some(obj) = root.as_object_mut() {
        // The Rust name of the root type means nothing to users.
        obj.remove("title");
        if let Some(required) = obj.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                obj.remove("required");
            }
        }
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            if let Some(spec) = props.get_mut("spec").and_then(Value::as_object_mut) {
                // `spec:` with no value is null; Istio accepts it as an empty spec.
                spec.insert("nullable".into(), Value::Bool(true));
            }
            props.insert(
                "status".into(),
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
    }
    root
}

/// Removes `default` from every schema node (not from property names that happen to be
/// `default`).
fn strip_defaults(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("default");
    if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
        props.values_mut().for_each(strip_defaults);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            strip_defaults(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(subs) = obj.get_mut(key).and_then(Value::as_array_mut) {
            subs.iter_mut().for_each(strip_defaults);
        }
    }
}

/// The CRD of a compiled-in Mixer adapter or template kind: a free-form spec, which the adapter
/// validates itself.
fn free_form_crd(kind: &Kind) -> CustomResourceDefinition {
    let (what, description) = match kind {
        Kind::CompiledAdapter(a) => ("adapter", format!("A handler of Mixer's {a} adapter.")),
        Kind::CompiledTemplate(t) => ("template", format!("An instance of Mixer's {t} template.")),
        _ => unreachable!("only compiled adapters and templates are free-form"),
    };
    let schema = json!({
        "type": "object",
        "description": description,
        "properties": {
            "spec": {
                "type": "object",
                "description": format!("The {what}'s params, checked by Mixer when it loads them."),
                "nullable": true,
                "x-kubernetes-preserve-unknown-fields": true,
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let name = kind.name().to_string();
    let plural = kind.plural();
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{}", kind.group())),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: kind.group().to_string(),
            names: CustomResourceDefinitionNames {
                kind: name.clone(),
                plural,
                singular: Some(name.to_ascii_lowercase()),
                categories: Some(vec!["istio-io".into(), "policy-istio-io".into()]),
                ..Default::default()
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: kind.versions()[0].to_string(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(
                        serde_json::from_value(schema).expect("a valid schema"),
                    ),
                }),
                subresources: Some(status_subresource()),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_removed_but_not_properties_named_default() {
        let mut schema = json!({
            "type": "object",
            "default": {},
            "properties": {
                "default": {"type": "string", "default": "x"},
                "list": {"type": "array", "default": [], "items": {"type": "string", "default": ""}},
            },
        });
        strip_defaults(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "default": {"type": "string"},
                    "list": {"type": "array", "items": {"type": "string"}},
                },
            })
        );
    }
}
