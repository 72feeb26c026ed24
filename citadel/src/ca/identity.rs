//! SPIFFE identities of service accounts: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT`.

use std::fmt;

use super::CaError;

/// The identity a workload certificate carries in its URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

// === impl Identity ===

impl Identity {
    /// Builds an identity, checking that every part is a DNS-label-like name (what Kubernetes
    /// allows for namespaces and service accounts), so the URI is always well formed.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, CaError> {
        check_part("trust domain", trust_domain)?;
        check_part("namespace", namespace)?;
        check_part("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses `spiffe://TD/ns/NS/sa/SA`.
    pub fn parse(uri: &str) -> Result<Self, CaError> {
        let bad = |why: &str| CaError::Identity {
            value: uri.to_string(),
            message: why.to_string(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(bad(
                "expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT",
            )),
        }
    }

    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn check_part(what: &str, value: &str) -> Result<(), CaError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(CaError::Identity {
            value: value.to_string(),
            message: format!(
                "{what} must be 1-253 lower-case letters, digits, '-' or '.', starting and \
                 ending with a letter or digit"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let id = Identity::new("cluster.local", "default", "bookinfo-reviews").unwrap();
        assert_eq!(
            id.uri(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(Identity::parse(&id.uri()).unwrap(), id);
    }

    #[test]
    fn refuses_bad_parts() {
        let e = Identity::new("cluster.local", "Default", "a").unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
        assert!(Identity::new("cluster.local", "ns", "a/b").is_err());
        assert!(Identity::new("", "ns", "a").is_err());
        assert!(Identity::parse("spiffe://td/ns/a").is_err());
        assert!(Identity::parse("https://td/ns/a/sa/b").is_err());
    }
}
