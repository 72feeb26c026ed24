//! A mesh of any size for benchmarks: `services` services spread over `namespaces`, each with
//! `endpoints_per_service` endpoints, VirtualServices and DestinationRules with subsets for a
//! share of them, and Sidecar resources keeping the proxies of a share of the namespaces to
//! their own namespace. Written as the YAML a user would apply:
//!
//! - [`Form::Files`]: for Pilot's file mode (`--config-dir`), the registry as ServiceEntries
//!   with their endpoints inline (as `pilot/benches/bookinfo.yaml` does);
//! - [`Form::Cluster`]: for a Kubernetes cluster, Namespaces, Services without selector and
//!   EndpointSlices naming their endpoints (at most 100 to a slice, as the EndpointSlice
//!   controller makes them), plus the same Istio objects.
//!
//! Names: namespace `ns-K`, service `svc-I` in namespace `ns-(I % namespaces)`, one HTTP port
//! 8080 named `http`. Endpoint `J` of service `I` has address [`MeshGen::endpoint_ip`] and, in
//! file form, labels `app: svc-I, version: vN` (N = J % subsets + 1) and service account
//! `svc-I`; on Kubernetes endpoint labels come from Pods, which are not generated, so subset
//! clusters there have no endpoints (the config pushed is the same size). Routed services
//! (every `1/routed_share`-th, starting with `svc-0`) get a VirtualService sending header
//! `end-user: canary` to the last subset and splitting the rest 90/10 between the first two,
//! and a DestinationRule defining the subsets. Scoped namespaces (the first
//! `sidecar_share * namespaces`) get a Sidecar `default` with egress `./*` and
//! `istio-system/*`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{ProxyBuilder, mk_sidecar};

/// The service port of every generated service.
pub const PORT: u16 = 8080;
/// The cluster domain of the generated hostnames.
pub const DOMAIN: &str = "cluster.local";
/// Endpoints per EndpointSlice in [`Form::Cluster`] (the EndpointSlice controller's default).
pub const SLICE_SIZE: usize = 100;

/// Which YAML to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// ServiceEntries for Pilot's `--config-dir`.
    Files,
    /// Kubernetes Namespaces, Services and EndpointSlices for `kubectl apply`.
    Cluster,
}

/// The parameters of a generated mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshGen {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Namespaces the services are spread over (round robin); at least 1.
    pub namespaces: usize,
    /// Share of services (0 to 1) with a VirtualService and a DestinationRule with subsets.
    pub routed_share: f64,
    /// Share of namespaces (0 to 1), and so of proxies, scoped by a Sidecar resource.
    pub sidecar_share: f64,
    /// Subsets per routed service (endpoints are spread over them by their `version`).
    pub subsets: usize,
}

impl Default for MeshGen {
    fn default() -> Self {
        Self::new(100, 10)
    }
}

/// The objects a generated mesh has, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub namespaces: usize,
    pub services: usize,
    pub endpoints: usize,
    pub virtual_services: usize,
    pub destination_rules: usize,
    pub sidecars: usize,
}

impl MeshGen {
    /// `services` with `endpoints_per_service` each, 20 services to a namespace, a fifth of
    /// them routed with 2 subsets, no Sidecar.
    pub fn new(services: usize, endpoints_per_service: usize) -> Self {
        Self {
            services,
            endpoints_per_service,
            namespaces: services.div_ceil(20).max(1),
            routed_share: 0.2,
            sidecar_share: 0.0,
            subsets: 2,
        }
    }

    pub fn namespaces(mut self, n: usize) -> Self {
        self.namespaces = n.max(1);
        self
    }

    pub fn routed_share(mut self, share: f64) -> Self {
        self.routed_share = share.clamp(0.0, 1.0);
        self
    }

    pub fn sidecar_share(mut self, share: f64) -> Self {
        self.sidecar_share = share.clamp(0.0, 1.0);
        self
    }

    pub fn subsets(mut self, n: usize) -> Self {
        self.subsets = n.max(1);
        self
    }

    fn namespace_count(&self) -> usize {
        self.namespaces.clamp(1, self.services.max(1))
    }

    /// The namespace of service `i`.
    pub fn namespace_of(&self, i: usize) -> String {
        format!("ns-{}", i % self.namespace_count())
    }

    /// The name of service `i`.
    pub fn service_name(i: usize) -> String {
        format!("svc-{i}")
    }

    /// The FQDN of service `i`.
    pub fn hostname(&self, i: usize) -> String {
        format!("svc-{i}.{}.svc.{DOMAIN}", self.namespace_of(i))
    }

    /// The address of endpoint `j` of service `i`: unique, in 172.16.0.0/12, never `.0`.
    pub fn endpoint_ip(&self, i: usize, j: usize) -> String {
        let k = i * self.endpoints_per_service.max(1) + j;
        let (a, last) = (k / 250, k % 250 + 1);
        format!("172.{}.{}.{last}", 16 + a / 256, a % 256)
    }

    /// Whether service `i` has a VirtualService and a DestinationRule.
    pub fn routed(&self, i: usize) -> bool {
        shared(i, self.routed_share)
    }

    /// Whether namespace `k` has a Sidecar resource.
    pub fn scoped(&self, k: usize) -> bool {
        (k as f64) < (self.sidecar_share * self.namespace_count() as f64).round()
    }

    /// Proxy `i` of the mesh: a sidecar of service `i % services`, at the address of one of
    /// its endpoints (endpoint `(i / services) % endpoints_per_service`), with that endpoint's
    /// labels. Proxies beyond `services * endpoints_per_service` repeat addresses.
    pub fn proxy(&self, i: usize) -> ProxyBuilder {
        let s = i % self.services.max(1);
        let j = (i / self.services.max(1)) % self.endpoints_per_service.max(1);
        let version = format!("v{}", j % self.subsets.max(1) + 1);
        mk_sidecar(&self.namespace_of(s), &self.endpoint_ip(s, j))
            .pod(&format!("svc-{s}-{i}"))
            .labels(&[("app", &Self::service_name(s)), ("version", &version)])
    }

    /// What the mesh holds.
    pub fn counts(&self) -> Counts {
        let routed = (0..self.services).filter(|&i| self.routed(i)).count();
        Counts {
            namespaces: self.namespace_count(),
            services: self.services,
            endpoints: self.services * self.endpoints_per_service,
            virtual_services: routed,
            destination_rules: routed,
            sidecars: (0..self.namespace_count())
                .filter(|&k| self.scoped(k))
                .count(),
        }
    }

    /// The YAML of namespace `k` (index), in `form`: its services and their endpoints,
    /// routing and Sidecar. Empty when the namespace has no service.
    pub fn namespace_yaml(&self, k: usize, form: Form) -> String {
        let mut out = String::new();
        let ns = format!("ns-{k}");
        let doc = |out: &mut String, text: &str| {
            if !out.is_empty() {
                out.push_str("---\n");
            }
            out.push_str(text);
        };
        if form == Form::Cluster {
            doc(
                &mut out,
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{istio-injection: enabled}}\n"
                ),
            );
        }
        if self.scoped(k) {
            doc(&mut out, &sidecar(&ns));
        }
        for i in (k..self.services).step_by(self.namespace_count()) {
            match form {
                Form::Files => doc(&mut out, &self.service_entry(i)),
                Form::Cluster => {
                    doc(&mut out, &self.kube_service(i));
                    for slice in self.endpoint_slices(i) {
                        doc(&mut out, &slice);
                    }
                }
            }
            if self.routed(i) {
                doc(&mut out, &self.virtual_service(i));
                doc(&mut out, &self.destination_rule(i));
            }
        }
        out
    }

    /// The whole mesh as one YAML stream.
    pub fn yaml(&self, form: Form) -> String {
        let mut out = String::new();
        for k in 0..self.namespace_count() {
            let text = self.namespace_yaml(k, form);
            if text.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str("---\n");
            }
            out.push_str(&text);
        }
        out
    }

    /// Writes one file per namespace, `DIR/ns-K.yaml` (written beside and renamed, so a Pilot
    /// watching `dir` never reads half a file). Returns the paths.
    pub fn write(&self, dir: &Path, form: Form) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut paths = Vec::new();
        for k in 0..self.namespace_count() {
            let name = format!("ns-{k}.yaml");
            write_atomic(dir, &name, &self.namespace_yaml(k, form))?;
            paths.push(dir.join(name));
        }
        Ok(paths)
    }

    /// The ServiceEntry of service `i` with its endpoints.
    pub fn service_entry(&self, i: usize) -> String {
        self.service_entry_with(i, |_, ip| ip)
    }

    /// The ServiceEntry of service `i`, each endpoint's address passed through `address(j,
    /// ip)`: the benchmarks move one endpoint with it.
    pub fn service_entry_with(
        &self,
        i: usize,
        address: impl Fn(usize, String) -> String,
    ) -> String {
        let name = Self::service_name(i);
        let mut s = format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {PORT}, name: http, protocol: HTTP}}
",
            ns = self.namespace_of(i),
            host = self.hostname(i),
        );
        if self.endpoints_per_service == 0 {
            s.push_str("  endpoints: []\n");
            return s;
        }
        s.push_str("  endpoints:\n");
        for j in 0..self.endpoints_per_service {
            let _ = writeln!(
                s,
                "  - {{address: {}, labels: {{app: {name}, version: v{}}}, serviceAccount: {name}}}",
                address(j, self.endpoint_ip(i, j)),
                j % self.subsets.max(1) + 1
            );
        }
        s
    }

    /// The Kubernetes Service of service `i` (no selector: its EndpointSlices are ours).
    pub fn kube_service(&self, i: usize) -> String {
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}}}
spec:
  ports:
  - {{name: http, port: {PORT}, targetPort: {PORT}, protocol: TCP}}
",
            name = Self::service_name(i),
            ns = self.namespace_of(i),
        )
    }

    /// The EndpointSlices of service `i`, [`SLICE_SIZE`] endpoints to a slice.
    pub fn endpoint_slices(&self, i: usize) -> Vec<String> {
        let name = Self::service_name(i);
        let ns = self.namespace_of(i);
        let ends: Vec<usize> = (0..self.endpoints_per_service).collect();
        ends.chunks(SLICE_SIZE)
            .enumerate()
            .map(|(n, chunk)| {
                let mut s = format!(
                    "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{n}
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: meshgen}}
addressType: IPv4
ports:
- {{name: http, port: {PORT}, protocol: TCP}}
endpoints:
"
                );
                for &j in chunk {
                    let _ = writeln!(
                        s,
                        "- {{addresses: [{}], conditions: {{ready: true}}}}",
                        self.endpoint_ip(i, j)
                    );
                }
                s
            })
            .collect()
    }

    /// The VirtualService of service `i`.
    pub fn virtual_service(&self, i: usize) -> String {
        let name = Self::service_name(i);
        let last = self.subsets.max(1);
        let split = if last >= 2 {
            format!(
                "    - {{destination: {{host: {name}, subset: v1}}, weight: 90}}
    - {{destination: {{host: {name}, subset: v2}}, weight: 10}}
"
            )
        } else {
            format!("    - {{destination: {{host: {name}, subset: v1}}}}\n")
        };
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts: [{name}]
  http:
  - match:
    - headers:
        end-user: {{exact: canary}}
    route:
    - destination: {{host: {name}, subset: v{last}}}
  - route:
{split}",
            ns = self.namespace_of(i),
        )
    }

    /// The DestinationRule of service `i`, with its subsets.
    pub fn destination_rule(&self, i: usize) -> String {
        let name = Self::service_name(i);
        let mut s = format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: {name}
  namespace: {ns}
spec:
  host: {name}
  subsets:
",
            ns = self.namespace_of(i),
        );
        for v in 1..=self.subsets.max(1) {
            let _ = writeln!(s, "  - {{name: v{v}, labels: {{version: v{v}}}}}");
        }
        s
    }
}

/// Whether item `i` is among a `share` of items spread evenly, item 0 first: of `n` items,
/// `ceil(n * share)` are.
fn shared(i: usize, share: f64) -> bool {
    // In millionths, so that shares like 0.1 count exactly.
    let p = (share.clamp(0.0, 1.0) * 1e6).round() as u64;
    let i = i as u64;
    ((i + 1) * p).div_ceil(1_000_000) > (i * p).div_ceil(1_000_000)
}

fn sidecar(ns: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata:
  name: default
  namespace: {ns}
spec:
  egress:
  - hosts: [\"./*\", \"istio-system/*\"]
"
    )
}

/// Writes `dir/name` through a temporary file and a rename.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_proto::Kind;
    use mesh_runtime::config::{parse_file, validate};

    use super::*;
    use crate::testutil::TestConfig;
    use crate::validate::PilotValidator;

    /// Objects of the Istio kinds in `text` by kind, after Pilot's own validation; panics
    /// on any error.
    fn istio_kinds(text: &str) -> BTreeMap<Kind, usize> {
        let results = parse_file(Path::new("mesh.yaml"), text);
        let mut kinds = BTreeMap::new();
        let mut errors = Vec::new();
        for r in validate(results, Some(&PilotValidator)) {
            match r {
                Ok(obj) => *kinds.entry(obj.key.kind).or_insert(0) += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
        kinds
    }

    fn mesh() -> MeshGen {
        MeshGen::new(50, 7)
            .namespaces(4)
            .routed_share(0.3)
            .sidecar_share(0.5)
            .subsets(3)
    }

    #[test]
    fn meshgen_counts_follow_the_parameters() {
        let c = mesh().counts();
        assert_eq!(
            c,
            Counts {
                namespaces: 4,
                services: 50,
                endpoints: 350,
                virtual_services: 15,
                destination_rules: 15,
                sidecars: 2,
            }
        );
        assert_eq!(
            MeshGen::new(10, 1)
                .routed_share(0.0)
                .counts()
                .virtual_services,
            0
        );
        assert_eq!(
            MeshGen::new(10, 1)
                .routed_share(1.0)
                .counts()
                .virtual_services,
            10
        );
        assert_eq!(MeshGen::new(1000, 1).counts().virtual_services, 200);
        assert_eq!(MeshGen::new(1000, 1).counts().namespaces, 50);
        // 50,000 distinct addresses.
        let big = MeshGen::new(5000, 10);
        let ips: std::collections::BTreeSet<String> = (0..5000)
            .flat_map(|i| (0..10).map(move |j| (i, j)))
            .map(|(i, j)| big.endpoint_ip(i, j))
            .collect();
        assert_eq!(ips.len(), 50_000);
        assert!(
            ips.iter()
                .all(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        );
    }

    #[test]
    fn meshgen_files_form_validates_and_loads() {
        let m = mesh();
        let text = m.yaml(Form::Files);
        let c = m.counts();
        let kinds = istio_kinds(&text);
        assert_eq!(kinds.get(&Kind::ServiceEntry), Some(&c.services));
        assert_eq!(kinds.get(&Kind::VirtualService), Some(&c.virtual_services));
        assert_eq!(
            kinds.get(&Kind::DestinationRule),
            Some(&c.destination_rules)
        );
        assert_eq!(kinds.get(&Kind::Sidecar), Some(&c.sidecars));

        // Pilot's registry and push context of it: every service and endpoint, subsets
        // resolved, no analysis warning, and Sidecars scoping the proxies of their namespace.
        let config = TestConfig::from_yaml(&text);
        let ctx = config.push_context();
        assert_eq!(ctx.registry.services().count(), c.services);
        let endpoints: usize = (0..m.services)
            .map(|i| ctx.registry.endpoints(&m.hostname(i), PORT as u32).len())
            .sum();
        assert_eq!(endpoints, c.endpoints);
        let scoped = m.proxy(0).build(); // ns-0: scoped
        let open = m.proxy(3).build(); // ns-3: not scoped
        assert!(ctx.sidecar_for(&scoped).is_some());
        assert!(ctx.sidecar_for(&open).is_none());
        assert_eq!(ctx.services_for_proxy(&scoped).count(), 13);
        assert_eq!(ctx.services_for_proxy(&open).count(), 50);
        // A proxy is an endpoint of its service.
        assert!(
            ctx.registry
                .endpoints(&m.hostname(3), PORT as u32)
                .iter()
                .any(|e| Some(e.address.as_str()) == open.ips.first().map(String::as_str))
        );
    }

    #[test]
    fn meshgen_cluster_form_validates_and_has_the_counts() {
        use k8s_openapi::api::core::v1::{Namespace, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;

        let m = MeshGen::new(30, 250).namespaces(3).sidecar_share(1.0);
        let text = m.yaml(Form::Cluster);
        let c = m.counts();
        let kinds = istio_kinds(&text);
        assert_eq!(kinds.get(&Kind::ServiceEntry), None);
        assert_eq!(kinds.get(&Kind::VirtualService), Some(&c.virtual_services));
        assert_eq!(
            kinds.get(&Kind::DestinationRule),
            Some(&c.destination_rules)
        );
        assert_eq!(kinds.get(&Kind::Sidecar), Some(&3));

        // The Kubernetes objects, read as the API's types.
        let (mut namespaces, mut services, mut slices, mut endpoints) = (0, 0, 0, 0);
        for doc in text.split("\n---\n") {
            let value: serde_json::Value = yaml_serde::from_str(doc).unwrap();
            match value["kind"].as_str().unwrap() {
                "Namespace" => {
                    let _: Namespace = serde_json::from_value(value).unwrap();
                    namespaces += 1;
                }
                "Service" => {
                    let svc: Service = serde_json::from_value(value).unwrap();
                    let spec = svc.spec.unwrap();
                    assert!(spec.selector.is_none());
                    assert_eq!(spec.ports.unwrap()[0].port, PORT as i32);
                    services += 1;
                }
                "EndpointSlice" => {
                    let slice: EndpointSlice = serde_json::from_value(value).unwrap();
                    assert!(slice.endpoints.len() <= SLICE_SIZE);
                    let service = &slice.metadata.labels.unwrap()["kubernetes.io/service-name"];
                    assert!(service.starts_with("svc-"));
                    endpoints += slice.endpoints.len();
                    slices += 1;
                }
                _ => {}
            }
        }
        assert_eq!(namespaces, 3);
        assert_eq!(services, 30);
        assert_eq!(slices, 30 * 3);
        assert_eq!(endpoints, c.endpoints);
    }

    #[test]
    fn meshgen_writes_a_file_per_namespace() {
        let dir = std::env::temp_dir().join(format!("meshgen-test-{}", std::process::id()));
        let m = mesh();
        let paths = m.write(&dir, Form::Files).unwrap();
        assert_eq!(paths.len(), 4);
        let all: String = paths
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        assert_eq!(istio_kinds(&all), istio_kinds(&m.yaml(Form::Files)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
