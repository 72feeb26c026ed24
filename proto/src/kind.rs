//! The registry of known kinds and the typed [`Spec`] each one carries.

use serde::de::DeserializeOwned;

use crate::networking;

/// A kind of configuration object, identified by API group and kind name.
///
/// Kinds this control plane types are listed by name; any other kind of an Istio API group is
/// kept as [`Kind::Other`] with an untyped spec so that nothing a user applies is lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.istio.io/ServiceEntry`
    ServiceEntry,
    /// `networking.istio.io/VirtualService`
    VirtualService,
    /// `networking.istio.io/DestinationRule`
    DestinationRule,
    /// `networking.istio.io/Gateway`
    Gateway,
    /// `networking.istio.io/Sidecar`
    Sidecar,
    /// `networking.istio.io/WorkloadEntry`
    WorkloadEntry,
    /// Core `v1/ServiceAccount`: the identities Citadel issues certificates for.
    ServiceAccount,
    /// Any other kind of an Istio API group (`*.istio.io`), kept with an untyped spec.
    Other {
        /// API group, e.g. `config.istio.io`.
        group: String,
        /// Kind name, e.g. `rule`.
        kind: String,
    },
}

/// The typed spec of a configuration object.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    ServiceEntry(networking::ServiceEntry),
    VirtualService(serde_json::Value),
    DestinationRule(serde_json::Value),
    Gateway(serde_json::Value),
    Sidecar(serde_json::Value),
    WorkloadEntry(serde_json::Value),
    /// ServiceAccounts carry no spec of interest: their name and namespace are the identity.
    ServiceAccount,
    /// The spec of a kind this control plane does not type (yet), kept as written.
    Other(serde_json::Value),
}

/// Why a spec could not be turned into its typed form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec does not match the kind's schema; `path` names the offending field
    /// (e.g. `spec.ports[0].number`).
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted path of the field, starting at `spec`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The apiVersion/kind pair is not one this control plane accepts.
    #[error("unknown kind {kind} in apiVersion {api_version}")]
    UnknownKind {
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
}

// === impl Kind ===

impl Kind {
    /// Resolves an `apiVersion` and `kind` pair, as written in a document.
    pub fn from_api_version(api_version: &str, kind: &str) -> Result<Self, SpecError> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let known = match (group, kind) {
            ("networking.istio.io", "ServiceEntry") => Kind::ServiceEntry,
            ("networking.istio.io", "VirtualService") => Kind::VirtualService,
            ("networking.istio.io", "DestinationRule") => Kind::DestinationRule,
            ("networking.istio.io", "Gateway") => Kind::Gateway,
            ("networking.istio.io", "Sidecar") => Kind::Sidecar,
            ("networking.istio.io", "WorkloadEntry") => Kind::WorkloadEntry,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            (g, k) if g.ends_with(".istio.io") && !k.is_empty() => Kind::Other {
                group: g.to_string(),
                kind: k.to_string(),
            },
            _ => {
                return Err(SpecError::UnknownKind {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                });
            }
        };
        Ok(known)
    }

    /// The API group of this kind (empty for the core group).
    pub fn group(&self) -> &str {
        match self {
            Kind::ServiceEntry
            | Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::Sidecar
            | Kind::WorkloadEntry => "networking.istio.io",
            Kind::ServiceAccount => "",
            Kind::Other { group, .. } => group,
        }
    }

    /// The kind name, as written in documents.
    pub fn name(&self) -> &str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Other { kind, .. } => kind,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.group() {
            "" => f.write_str(self.name()),
            g => write!(f, "{}.{}", self.name(), g),
        }
    }
}

// === impl Spec ===

/// Parses the `spec` of a document of the given kind into its typed form.
///
/// A missing spec is passed as `Value::Null` and treated as an empty object.
pub fn parse_spec(kind: &Kind, spec: serde_json::Value) -> Result<Spec, SpecError> {
    let spec = match spec {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        v => v,
    };
    Ok(match kind {
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec)?),
        Kind::VirtualService => Spec::VirtualService(spec),
        Kind::DestinationRule => Spec::DestinationRule(spec),
        Kind::Gateway => Spec::Gateway(spec),
        Kind::Sidecar => Spec::Sidecar(spec),
        Kind::WorkloadEntry => Spec::WorkloadEntry(spec),
        Kind::ServiceAccount => Spec::ServiceAccount,
        Kind::Other { .. } => Spec::Other(spec),
    })
}

fn typed<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            "spec".to_string()
        } else if inner.starts_with('[') {
            format!("spec{inner}")
        } else {
            format!("spec.{inner}")
        };
        SpecError::Invalid {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_kinds() {
        assert_eq!(
            Kind::from_api_version("networking.istio.io/v1alpha3", "ServiceEntry").unwrap(),
            Kind::ServiceEntry
        );
        assert_eq!(
            Kind::from_api_version("v1", "ServiceAccount").unwrap(),
            Kind::ServiceAccount
        );
        assert!(matches!(
            Kind::from_api_version("config.istio.io/v1alpha2", "rule").unwrap(),
            Kind::Other { .. }
        ));
        assert!(Kind::from_api_version("apps/v1", "Deployment").is_err());
    }

    #[test]
    fn names_the_bad_field() {
        let spec = serde_json::json!({"hosts": ["a"], "ports": [{"number": "x", "name": "http"}]});
        let err = parse_spec(&Kind::ServiceEntry, spec).unwrap_err();
        match err {
            SpecError::Invalid { path, .. } => assert_eq!(path, "spec.ports[0].number"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
