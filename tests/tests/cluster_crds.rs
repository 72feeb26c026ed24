//! The generated CRDs on a real API server (the local cluster of `tests/cluster/`):
//! `manifests/crds.yaml` applies and every CRD becomes Established; Istio's own networking,
//! policy and rbac files (`../shared/conformance`, when present) and this repository's
//! fixtures (`proto/tests/fixtures`, always) apply with strict server-side validation; a wrong
//! field or type is refused with a message naming it; and bookinfo's platform objects give
//! Running pods with `127.1.x.x` IPs and EndpointSlices.
//!
//! These tests fail when the cluster cannot be started; `MESH_SKIP_CLUSTER=1` skips them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::ListParams;
use mesh_tests::cluster::{Cluster, FIELD_MANAGER, move_to_namespace};
use mesh_tests::repo_root;

/// How long pods and EndpointSlices may take to appear.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// The shared conformance corpus: `<repo>/../shared/conformance`, absent from most clones.
fn conformance_dir() -> Option<PathBuf> {
    let dir = repo_root().join("../shared/conformance");
    dir.is_dir().then_some(dir)
}

/// Every `*.yaml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Applies each file into `ns` (documents naming another namespace are moved there), checks
/// kubectl reports every document applied; returns the failures, one line per file.
/// Removes the mesh-wide singletons some files define (Istio 1.0's MeshPolicy `default`
/// and (Cluster)RbacConfig `default`), which the namespace's cleanup does not reach: left
/// behind, they would turn on STRICT mutual TLS or RBAC for every later test.
async fn remove_mesh_wide(cluster: &Cluster) -> Option<String> {
    cluster
        .kubectl_ok([
            "delete",
            "meshpolicies.authentication.istio.io,clusterrbacconfigs.rbac.istio.io,rbacconfigs.rbac.istio.io",
            "--all",
            "-A",
            "--ignore-not-found",
        ])
        .await
        .err()
        .map(|e| format!("removing mesh-wide objects: {e:#}"))
}

async fn apply_files(cluster: &Cluster, ns: &str, root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut failures = apply_each(cluster, ns, root, files).await;
    failures.extend(remove_mesh_wide(cluster).await);
    failures
}

async fn apply_each(cluster: &Cluster, ns: &str, root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for file in files {
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let result = async {
            let text = std::fs::read_to_string(file)?;
            let (docs, n) = move_to_namespace(&text, ns)?;
            let out = cluster.apply(ns, &docs).await?;
            let applied = out
                .lines()
                .filter(|l| l.ends_with("serverside-applied"))
                .count();
            if applied != n {
                bail!("{n} documents but {applied} applied:\n{out}");
            }
            anyhow::Ok(n)
        }
        .await;
        match result {
            Ok(n) => eprintln!("applied {shown} ({n} objects)"),
            Err(e) => failures.push(format!("{shown}: {e:#}")),
        }
    }
    failures
}

#[tokio::test]
async fn crds_apply_and_every_one_becomes_established() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    cluster.install_crds().await?;

    // Applying again is a no-op, not an error (server-side apply, same field manager).
    let manifest = repo_root().join("manifests/crds.yaml");
    let manifest = manifest.to_string_lossy();
    cluster
        .kubectl_ok([
            "apply",
            "--server-side",
            "--field-manager",
            FIELD_MANAGER,
            "-f",
            &manifest,
        ])
        .await?;

    let api: Api<CustomResourceDefinition> = Api::all(cluster.client().await?);
    let expected = mesh_proto::crd::crds();
    let mut problems = Vec::new();
    for want in &expected {
        let name = want.metadata.name.clone().unwrap();
        let got = api.get(&name).await.with_context(|| name.clone())?;
        let conditions = got
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if !conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            problems.push(format!("{name}: not Established: {conditions:?}"));
        }
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == "NonStructuralSchema" && c.status == "True")
        {
            problems.push(format!("{name}: non-structural schema: {:?}", c.message));
        }
        let versions = |crd: &CustomResourceDefinition| -> Vec<(String, bool, bool)> {
            crd.spec
                .versions
                .iter()
                .map(|v| (v.name.clone(), v.served, v.storage))
                .collect()
        };
        if versions(&got) != versions(want) {
            problems.push(format!(
                "{name}: versions {:?}, want {:?}",
                versions(&got),
                versions(want)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Networking is served at every version Istio ever served it.
    let vs = api.get("virtualservices.networking.istio.io").await?;
    let served: Vec<_> = vs
        .spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.as_str())
        .collect();
    for v in ["v1alpha3", "v1beta1", "v1"] {
        assert!(served.contains(&v), "VirtualService serves {served:?}");
    }
    Ok(())
}

#[tokio::test]
async fn istio_networking_policy_and_rbac_files_apply() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    let Some(dir) = conformance_dir() else {
        eprintln!("../shared/conformance is absent: no Istio conformance files to apply");
        return Ok(());
    };
    cluster.install_crds().await?;

    // Everything but the platform (Kubernetes workloads: the bookinfo test's) and Istio's own
    // CRDs, grouped by release so each release gets its own namespace.
    let mut by_release: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in yaml_files(&dir) {
        let rel = file.strip_prefix(&dir).unwrap();
        let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
        if parts.len() < 2
            || parts.iter().any(|p| p == "platform")
            || parts.last().unwrap() == "crds.yaml"
        {
            continue;
        }
        by_release
            .entry(parts[0].to_string())
            .or_default()
            .push(file);
    }
    let count: usize = by_release.values().map(Vec::len).sum();
    assert!(
        count >= 40,
        "only {count} conformance files found in {}",
        dir.display()
    );
    // The three groups the CRDs must take are all there.
    for group in ["networking", "policy", "rbac"] {
        assert!(
            by_release
                .values()
                .flatten()
                .any(|f| f.iter().any(|p| p == group)),
            "no {group} files in {}",
            dir.display()
        );
    }

    let mut failures = Vec::new();
    for (release, files) in &by_release {
        let ns = cluster.namespace(&format!("conformance-{release}")).await?;
        failures.extend(apply_files(cluster, ns.name(), &dir, files).await);
        ns.cleanup().await?;
    }
    assert!(
        failures.is_empty(),
        "{} of {count} conformance files refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn own_fixtures_apply() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    cluster.install_crds().await?;
    let dir = repo_root().join("proto/tests/fixtures");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 5,
        "only {} fixtures in {}",
        files.len(),
        dir.display()
    );
    let ns = cluster.namespace("fixtures").await?;
    let failures = apply_files(cluster, ns.name(), &dir, &files).await;
    ns.cleanup().await?;
    assert!(
        failures.is_empty(),
        "fixtures refused:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Applies one document that must be refused; returns kubectl's message.
async fn refused(cluster: &Cluster, ns: &str, args: &[&str], yaml: &str) -> anyhow::Result<String> {
    let mut all = args.to_vec();
    all.extend(["-n", ns, "-f", "-"]);
    let out = cluster
        .kubectl_with_stdin(&all, Some(yaml.as_bytes()))
        .await?;
    let message = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "`kubectl {}` accepted:\n{yaml}\n{message}",
        all.join(" ")
    );
    Ok(message)
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_are_refused_naming_the_field() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    cluster.install_crds().await?;
    let ns = cluster.namespace("refused").await?;
    let server_side = ["apply", "--server-side", "--validate=strict"];
    let client_side = ["create", "--validate=strict"];

    let unknown = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: unknown-field}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subsett: v1}
";
    for args in [&server_side[..], &client_side[..]] {
        let msg = refused(cluster, ns.name(), args, unknown).await?;
        assert!(msg.contains("destination.subsett"), "{msg}");
    }

    let wrong_type = "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: wrong-type}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {tcp: {maxConnections: lots}}}
";
    for args in [&server_side[..], &client_side[..]] {
        let msg = refused(cluster, ns.name(), args, wrong_type).await?;
        assert!(msg.contains("connectionPool.tcp.maxConnections"), "{msg}");
    }

    let not_a_list = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: not-a-list}
spec:
  hosts: reviews
";
    let msg = refused(cluster, ns.name(), &server_side, not_a_list).await?;
    assert!(msg.contains("spec.hosts"), "{msg}");

    // A Mixer rule of 1.0 with a misspelt field.
    let rule = "\
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: misspelt}
spec:
  matc: destination.labels[\"app\"] == \"ratings\"
  actions: []
";
    let msg = refused(cluster, ns.name(), &server_side, rule).await?;
    assert!(msg.contains("spec.matc"), "{msg}");

    // Nothing of the above was stored.
    let listed = cluster
        .kubectl_ok([
            "get",
            "virtualservices,destinationrules,rules",
            "-n",
            ns.name(),
            "-o",
            "name",
        ])
        .await?;
    assert_eq!(listed.trim(), "", "refused objects were stored");
    ns.cleanup().await
}

/// Applies a bookinfo-like platform file and waits for a Running pod with a `127.1.x.x` IP per
/// Deployment replica, and an EndpointSlice per Service holding exactly the ready pod IPs of
/// its selector.
async fn bookinfo_comes_up(cluster: &Cluster, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let ns = cluster.namespace("bookinfo").await?;
    let (docs, _) = move_to_namespace(&text, ns.name())?;
    cluster.apply(ns.name(), &docs).await?;

    // What the file asks for: pods per Deployment, and each Service's selector.
    let mut want_pods = 0;
    let mut services = BTreeMap::new();
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let doc: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        match doc["kind"].as_str() {
            Some("Deployment") => want_pods += doc["spec"]["replicas"].as_i64().unwrap_or(1),
            Some("Service") => {
                let name = doc["metadata"]["name"].as_str().unwrap().to_string();
                let selector: BTreeMap<String, String> =
                    serde_json::from_value(doc["spec"]["selector"].clone())?;
                services.insert(name, selector);
            }
            _ => {}
        }
    }
    for s in ["details", "ratings", "reviews", "productpage"] {
        assert!(
            services.contains_key(s),
            "{} has no Service {s}",
            file.display()
        );
    }

    let client = ns.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let slices: Api<EndpointSlice> = Api::namespaced(client, ns.name());
    let deadline = Instant::now() + WORKLOAD_TIMEOUT;
    let last_problem = loop {
        let problem = async {
            let list = pods.list(&ListParams::default()).await?;
            let running: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            if running.len() as i64 != want_pods {
                return anyhow::Ok(Some(format!(
                    "{} of {want_pods} pods Running ({} pods)",
                    running.len(),
                    list.items.len()
                )));
            }
            let mut by_service: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
            for pod in &running {
                let ip = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default();
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                if !ip.starts_with("127.1.") {
                    bail!("pod {name} has IP {ip:?}, not in 127.1.0.0/16");
                }
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                for (svc, selector) in &services {
                    if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                        by_service.entry(svc).or_default().insert(ip.clone());
                    }
                }
            }
            for svc in services.keys() {
                let params =
                    ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
                let ready: BTreeSet<String> = slices
                    .list(&params)
                    .await?
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .flat_map(|e| e.addresses.iter().cloned())
                    .collect();
                let want = by_service.get(svc.as_str()).cloned().unwrap_or_default();
                if want.is_empty() {
                    bail!("no pod matches the selector of Service {svc}");
                }
                if ready != want {
                    return Ok(Some(format!(
                        "EndpointSlices of {svc} hold {ready:?}, want {want:?}"
                    )));
                }
            }
            Ok(None)
        }
        .await?;
        match problem {
            None => break None,
            Some(p) if Instant::now() > deadline => break Some(p),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    if let Some(problem) = last_problem {
        let pods = cluster
            .kubectl(["get", "pods,endpointslices", "-o", "wide", "-n", ns.name()])
            .await?;
        bail!(
            "{}: after {WORKLOAD_TIMEOUT:?}: {problem}\n{}",
            file.display(),
            String::from_utf8_lossy(&pods.stdout)
        );
    }
    eprintln!(
        "{}: {want_pods} pods Running, {} Services with endpoints",
        file.display(),
        services.len()
    );
    ns.cleanup().await
}

#[tokio::test]
async fn istio_bookinfo_gets_running_pods_and_endpoint_slices() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    let Some(dir) = conformance_dir() else {
        eprintln!(
            "../shared/conformance is absent: Istio's bookinfo.yaml not tested (our fixture is)"
        );
        return Ok(());
    };
    bookinfo_comes_up(cluster, &dir.join("istio-current/platform/bookinfo.yaml")).await
}

#[tokio::test]
async fn bookinfo_fixture_gets_running_pods_and_endpoint_slices() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    bookinfo_comes_up(cluster, &repo_root().join("tests/fixtures/bookinfo.yaml")).await
}
