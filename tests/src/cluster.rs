//! The local Kubernetes test cluster (`tests/cluster/`), shared by every test of a run.
//!
//! [`Cluster::shared`] runs `tests/cluster/cluster.sh up` once per test process: the first
//! caller builds (cold: several minutes) or starts (cached: about 10 s) the cluster, or finds
//! it already up and reuses it; every later caller gets the same [`Cluster`] (or the same
//! error). A lock file (`target/cluster.lock`) serialises `up` across test binaries running at
//! the same time. The cluster is left running: `tests/cluster/cluster.sh down` (or
//! `make cluster-down`) stops it; CI does so at the end of `.ci/run`.
//!
//! Tests that need the cluster live in `tests/tests/cluster_*.rs` and start with
//! [`Cluster::for_test`]. When the cluster cannot be started they **fail**; setting
//! `MESH_SKIP_CLUSTER=1` makes them print a line and pass without running instead (for
//! machines without Go). Each test works in its own namespace ([`Cluster::namespace`]),
//! deleted when the [`TestNamespace`] is dropped (`MESH_KEEP_NAMESPACES=1` keeps them for a
//! look after a failure).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mesh_tests::cluster::Cluster;
//! let Some(cluster) = Cluster::for_test().await? else { return Ok(()) };
//! cluster.install_crds().await?;
//! let ns = cluster.namespace("demo").await?;
//! cluster.kubectl_ok(["apply", "--server-side", "-n", ns.name(), "-f", "x.yaml"]).await?;
//! let client = cluster.client().await?;
//! # let _ = client;
//! ns.cleanup().await
//! # }
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::OnceCell;

use crate::repo_root;

/// Set to `1` to skip cluster tests (they print a line and pass) instead of failing when the
/// cluster cannot be started.
pub const SKIP_ENV: &str = "MESH_SKIP_CLUSTER";
/// Set to `1` to keep test namespaces instead of deleting them.
pub const KEEP_NAMESPACES_ENV: &str = "MESH_KEEP_NAMESPACES";
/// The field manager of everything the tests apply server-side.
pub const FIELD_MANAGER: &str = "mesh-tests";
/// How long [`Cluster::install_crds`] waits for every CRD to become Established.
pub const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

/// The toleration of the kwok node's taint (`kwok.x-k8s.io/node=fake:NoSchedule`), as
/// `PodTolerationRestriction`'s namespace annotation writes it.
const KWOK_TOLERATIONS: &str =
    r#"[{"key":"kwok.x-k8s.io/node","operator":"Equal","value":"fake","effect":"NoSchedule"}]"#;

/// The reference of one of the mesh's images (`images/`), as loaded into the real node's
/// containerd: `docker.io/mesh/NAME:VERSION`.
pub fn real_node_image(name: &str) -> String {
    format!("docker.io/mesh/{name}:{}", env!("CARGO_PKG_VERSION"))
}

/// Which node a test namespace's pods go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Kwok,
    Real,
}

/// The running local cluster: its kubeconfig, and helpers to talk to it.
pub struct Cluster {
    root: PathBuf,
    kubeconfig: PathBuf,
    crds: OnceCell<Result<(), String>>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster of this test run, started (or found up) on first use.
    ///
    /// The outcome of the first call, success or failure, is kept for the whole process, so
    /// a failed start is not retried by every test.
    pub async fn shared() -> anyhow::Result<&'static Cluster> {
        static SHARED: OnceCell<Result<Cluster, String>> = OnceCell::const_new();
        let outcome = SHARED
            .get_or_init(|| async {
                let root = repo_root();
                tokio::task::spawn_blocking(move || start(&root))
                    .await
                    .map_err(|e| format!("starting the cluster panicked: {e}"))
                    .and_then(|r| r.map_err(|e| format!("{e:#}")))
            })
            .await;
        match outcome {
            Ok(cluster) => Ok(cluster),
            Err(e) => bail!(
                "the local Kubernetes cluster could not be started: {e}\n\
                 (set {SKIP_ENV}=1 to skip the cluster tests instead)"
            ),
        }
    }

    /// [`Cluster::shared`] for a test: `None` (after printing why) when `MESH_SKIP_CLUSTER=1`
    /// is set, so the test returns early; otherwise the cluster, or an error that fails the
    /// test.
    pub async fn for_test() -> anyhow::Result<Option<&'static Cluster>> {
        if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
            // Straight to stderr, past the test harness's capture: a skip should be seen.
            let _ = writeln!(
                std::io::stderr(),
                "{SKIP_ENV}=1: skipping a test that needs the local Kubernetes cluster"
            );
            return Ok(None);
        }
        Self::shared().await.map(Some)
    }

    /// The admin kubeconfig (`target/cluster/kubeconfig`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }

    /// Whether the cluster has the real node (`mesh-node-0`), which `cluster.sh up` starts
    /// when it runs as root unless `MESH_CLUSTER_REAL_NODE=0`.
    pub fn has_real_node(&self) -> bool {
        self.root.join("target/cluster/real-node").is_file()
    }

    /// Packets the real node's egress guard (the `MESH-NODE-GUARD` chain on the machine's
    /// outward interfaces) has dropped since the cluster started: 0 unless something of the
    /// pod or Service networks tried to leave the machine.
    pub fn egress_guard_drops(&self) -> anyhow::Result<u64> {
        let out = std::process::Command::new("bash")
            .arg(self.root.join("tests/cluster/cluster.sh"))
            .arg("guard")
            .output()
            .context("running cluster.sh guard")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "cluster.sh guard failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        text.trim()
            .parse()
            .with_context(|| format!("cluster.sh guard printed {text:?}"))
    }

    /// The repository root the cluster was started from.
    pub fn repo_root(&self) -> &Path {
        &self.root
    }

    /// A new client of the cluster (the kubeconfig's admin user).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        mesh_runtime::kube_client::connect(Some(&self.kubeconfig))
            .await
            .with_context(|| format!("kube client from {}", self.kubeconfig.display()))
    }

    /// Runs `kubectl --kubeconfig <ours> ARGS`, whatever its exit status (an error only when
    /// kubectl cannot be run).
    pub async fn kubectl<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_stdin(args, None).await
    }

    /// [`Cluster::kubectl`] that fails (with kubectl's output) unless kubectl exits with 0;
    /// returns its stdout.
    pub async fn kubectl_ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.kubectl(&args).await?;
        checked(&args, out)
    }

    /// Runs kubectl with `input` on its stdin (e.g. `apply -f -`), whatever its exit status.
    pub async fn kubectl_with_stdin<I, S>(
        &self,
        args: I,
        input: Option<&[u8]>,
    ) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("running kubectl")?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input).await.context("kubectl stdin")?;
            // Dropping stdin closes it: kubectl sees the end of its input.
        }
        child
            .wait_with_output()
            .await
            .context("waiting for kubectl")
    }

    /// Server-side applies a YAML (or JSON) stream into `namespace`, strictly validated by
    /// the API server; fails with kubectl's message when any object is refused.
    pub async fn apply(&self, namespace: &str, yaml: &str) -> anyhow::Result<String> {
        let args = apply_args(namespace);
        let out = self
            .kubectl_with_stdin(&args, Some(yaml.as_bytes()))
            .await?;
        checked(&args, out)
    }

    /// Installs the mesh's CRDs (`manifests/crds.yaml`, server-side apply: idempotent) and
    /// waits until every one of them is Established. Done once per process; later calls
    /// return the first call's outcome.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        let outcome = self
            .crds
            .get_or_init(|| async { self.install_crds_now().await.map_err(|e| format!("{e:#}")) })
            .await;
        outcome
            .clone()
            .map_err(|e| anyhow::anyhow!("installing manifests/crds.yaml: {e}"))
    }

    async fn install_crds_now(&self) -> anyhow::Result<()> {
        let path = self.root.join("manifests/crds.yaml");
        let names = crd_names(&path)?;
        let manifest = path.to_string_lossy().into_owned();
        self.kubectl_ok([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            FIELD_MANAGER,
            "-f",
            &manifest,
        ])
        .await?;
        self.wait_established(&names, CRD_ESTABLISHED_TIMEOUT).await
    }

    /// Waits until each named CRD has the condition `Established=True`.
    pub async fn wait_established(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for name in names {
                let established = api.get_opt(name).await?.is_some_and(|crd| {
                    crd.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                if !established {
                    pending.push(name.as_str());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} CRDs not Established after {timeout:?}: {}",
                    pending.len(),
                    pending.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates a namespace named `<prefix>-<unique suffix>` for one test, whose pods go to
    /// the kwok node: they are statuses with loopback IPs (`127.1.x.x`), on which the test
    /// binds the servers itself. (The namespace carries the `PodNodeSelector` and
    /// `PodTolerationRestriction` annotations that send its pods there past the taint the
    /// kwok node has beside the real one.)
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        self.create_namespace(prefix, NodeKind::Kwok, &[]).await
    }

    /// Creates a namespace for one test whose pods run for real on the real node
    /// (`mesh-node-0`: containerd, pod network, cluster DNS), with these extra labels (e.g.
    /// `istio-injection=enabled`).
    pub async fn namespace_on_real_node(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<TestNamespace> {
        self.create_namespace(prefix, NodeKind::Real, labels).await
    }

    async fn create_namespace(
        &self,
        prefix: &str,
        node: NodeKind,
        extra_labels: &[(&str, &str)],
    ) -> anyhow::Result<TestNamespace> {
        let name = unique_name(prefix);
        let client = self.client().await?;
        let api: Api<Namespace> = Api::all(client.clone());
        let mut labels: std::collections::BTreeMap<String, String> =
            [("mesh-tests".to_string(), "true".to_string())].into();
        labels.extend(
            extra_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let annotations = match node {
            NodeKind::Kwok => Some(
                [
                    (
                        "scheduler.alpha.kubernetes.io/node-selector".to_string(),
                        "type=kwok".to_string(),
                    ),
                    (
                        "scheduler.alpha.kubernetes.io/defaultTolerations".to_string(),
                        KWOK_TOLERATIONS.to_string(),
                    ),
                ]
                .into(),
            ),
            NodeKind::Real => None,
        };
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                annotations,
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            client,
            kubeconfig: self.kubeconfig.clone(),
            done: false,
        })
    }
}

/// A `kubectl port-forward` child: [`PortForward::port`] on 127.0.0.1 reaches the target's
/// port while it lives (killed on drop).
#[derive(Debug)]
pub struct PortForward {
    /// The local port.
    pub port: u16,
    _child: tokio::process::Child,
}

// === impl Cluster (helpers of the real-node tests) ===

impl Cluster {
    /// `kubectl -n NS port-forward TARGET :PORT` (TARGET e.g. `deploy/istio-pilot` or
    /// `pod/NAME`), once it says where it listens.
    pub async fn port_forward(
        &self,
        namespace: &str,
        target: &str,
        port: u16,
    ) -> anyhow::Result<PortForward> {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", namespace, "port-forward", target, &format!(":{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("kubectl port-forward")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:43567 -> 15014"
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("port-forward said nothing")??
            .context("port-forward ended")?;
        let port = line
            .split_once("127.0.0.1:")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("port-forward said {line:?}"))?;
        // Keep reading its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PortForward {
            port,
            _child: child,
        })
    }
}

/// The network namespace of the real node (`tests/cluster/node.sh`), from which the pod
/// network is reached directly.
pub fn node_netns() -> String {
    std::env::var("MESH_CLUSTER_NODE_NETNS").unwrap_or_else(|_| "mesh-node".into())
}

/// The certificate a TLS server at `addr` (`IP:PORT` on the pod network) presents, as
/// `openssl x509 -text` prints it; openssl runs in the real node's network namespace.
pub async fn served_certificate(addr: &str) -> anyhow::Result<String> {
    let script = format!(
        "openssl s_client -connect {addr} -showcerts </dev/null 2>/dev/null | openssl x509 -noout -text"
    );
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &node_netns(), "sh", "-c", &script])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "openssl to {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The control plane of `manifests/install.yaml` (with `manifests/crds.yaml`), removed again
/// when dropped (not waiting) unless [`ControlPlane::removed`] was called: a test stopping
/// half-way never leaves later tests a webhook of a control plane that is gone. Kept, like
/// the test namespaces, with `MESH_KEEP_NAMESPACES=1`.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
    install: PathBuf,
    done: bool,
}

/// How long [`Cluster::install_control_plane`] waits for every Deployment to be Available.
pub const CONTROL_PLANE_READY: Duration = Duration::from_secs(240);

impl Cluster {
    /// The guard of an install that [`Cluster::install_control_plane`] then applies (taken
    /// first, so a failed apply is cleaned up too).
    pub fn control_plane(&self) -> ControlPlane {
        ControlPlane {
            kubeconfig: self.kubeconfig.clone(),
            install: self.root.join("manifests/install.yaml"),
            done: false,
        }
    }

    /// `kubectl apply -f manifests/crds.yaml -f manifests/install.yaml`, then waits until
    /// every Deployment of istio-system is Available (on a timeout the error has the pods
    /// and events), then `kubectl apply -f manifests/telemetry.yaml`.
    pub async fn install_control_plane(&self) -> anyhow::Result<()> {
        let crds = self.root.join("manifests/crds.yaml");
        let install = self.root.join("manifests/install.yaml");
        // An earlier test's install may still be going away (its guard does not wait).
        let phase = self
            .kubectl([
                "get",
                "namespace",
                "istio-system",
                "-o",
                "jsonpath={.status.phase}",
            ])
            .await?;
        if String::from_utf8_lossy(&phase.stdout) == "Terminating" {
            self.kubectl_ok([
                "wait",
                "--for=delete",
                "namespace/istio-system",
                "--timeout=180s",
            ])
            .await
            .context("istio-system of an earlier install still terminating")?;
        }
        self.kubectl_ok([
            OsStr::new("apply"),
            OsStr::new("-f"),
            crds.as_os_str(),
            OsStr::new("-f"),
            install.as_os_str(),
        ])
        .await
        .context("kubectl apply of the install")?;
        let timeout = format!("--timeout={}s", CONTROL_PLANE_READY.as_secs());
        let waited = self
            .kubectl([
                "-n",
                "istio-system",
                "wait",
                "--for=condition=Available",
                "deployment",
                "--all",
                &timeout,
            ])
            .await?;
        if !waited.status.success() {
            bail!(
                "the control plane did not become Available: {}\n{}",
                String::from_utf8_lossy(&waited.stderr),
                self.diagnose("istio-system").await
            );
        }
        // Mixer's default config, whose CRDs the first apply created.
        let telemetry = self.root.join("manifests/telemetry.yaml");
        self.kubectl_ok([OsStr::new("apply"), OsStr::new("-f"), telemetry.as_os_str()])
            .await
            .context("kubectl apply of manifests/telemetry.yaml")?;
        Ok(())
    }

    /// Waits until the pods `what` (a name, or `--all`, or `-l SELECTOR`) of `namespace` are
    /// Ready; on a timeout the error has the pods and events.
    pub async fn wait_pods_ready(
        &self,
        namespace: &str,
        what: &[&str],
        within: Duration,
    ) -> anyhow::Result<()> {
        let timeout = format!("--timeout={}s", within.as_secs());
        let mut args = vec!["-n", namespace, "wait", "--for=condition=Ready", "pod"];
        args.extend_from_slice(what);
        args.push(&timeout);
        let out = self.kubectl(&args).await?;
        if !out.status.success() {
            bail!(
                "pods {what:?} of {namespace} not Ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.diagnose(namespace).await
            );
        }
        Ok(())
    }

    /// The pods (wide) and events of `namespace`, for an error message.
    pub async fn diagnose(&self, namespace: &str) -> String {
        let mut out = String::new();
        for args in [
            &["-n", namespace, "get", "pods", "-o", "wide"][..],
            &["-n", namespace, "get", "events", "--sort-by=.lastTimestamp"],
        ] {
            if let Ok(o) = self.kubectl(args).await {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                out.push_str(&String::from_utf8_lossy(&o.stderr));
            }
        }
        out
    }
}

// === impl ControlPlane ===

impl ControlPlane {
    /// The test removed the install itself: nothing to do on drop.
    pub fn removed(&mut self) {
        self.done = true;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.done || std::env::var(KEEP_NAMESPACES_ENV).is_ok_and(|v| v == "1") {
            return;
        }
        let _ = std::process::Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "--ignore-not-found", "--wait=false", "-f"])
            .arg(&self.install)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Until `f` gives `Ok`, or `within` is over (then its last error, naming `what`); polls
/// every half second.
pub async fn retry<T, F, Fut>(within: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{what}: not within {within:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A namespace of one test; deleted (best effort, not waiting for its contents to go) when
/// dropped, or by [`TestNamespace::cleanup`].
pub struct TestNamespace {
    name: String,
    client: kube::Client,
    kubeconfig: PathBuf,
    done: bool,
}

impl fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client of the cluster (the one that created the namespace).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Deletes the namespace now (unless `MESH_KEEP_NAMESPACES=1`), reporting failures.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.done = true;
        if keep_namespaces() {
            eprintln!("{KEEP_NAMESPACES_ENV}=1: keeping namespace {}", self.name);
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.delete(&self.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting namespace {}", self.name)),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if keep_namespaces() {
            eprintln!("{KEEP_NAMESPACES_ENV}=1: keeping namespace {}", self.name);
            return;
        }
        // No runtime to await on here (it may be shutting down): a short blocking kubectl,
        // which asks for the deletion and does not wait for it.
        let _ = std::process::Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .args(["--ignore-not-found", "--request-timeout=10s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A YAML stream with every document that names a namespace moved to `namespace` (documents
/// without one are left as they are: `kubectl apply -n` puts namespaced ones there); empty
/// documents dropped. Returns the documents as JSON, separated by `---` lines, and how many.
///
/// Cross-references by name (`reviews.default.svc.cluster.local`, a handler's
/// `name.istio-system`) are strings the API server does not check, and stay as they are.
pub fn move_to_namespace(yaml: &str, namespace: &str) -> anyhow::Result<(String, usize)> {
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(yaml).enumerate() {
        let mut doc: serde_json::Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("YAML document {}", i + 1))?;
        if doc.is_null() {
            continue;
        }
        if let Some(ns) = doc.get_mut("metadata").and_then(|m| m.get_mut("namespace")) {
            *ns = namespace.into();
        }
        docs.push(serde_json::to_string(&doc)?);
    }
    let n = docs.len();
    Ok((docs.join("\n---\n"), n))
}

/// The arguments of a strict server-side apply of stdin into `namespace`.
fn apply_args(namespace: &str) -> Vec<String> {
    [
        "apply",
        "--server-side",
        "--force-conflicts",
        "--validate=strict",
        "--field-manager",
        FIELD_MANAGER,
        "-n",
        namespace,
        "-f",
        "-",
    ]
    .map(String::from)
    .to_vec()
}

fn checked<S: AsRef<OsStr>>(args: &[S], out: Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    bail!(
        "`kubectl {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl_bin() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

fn keep_namespaces() -> bool {
    std::env::var_os(KEEP_NAMESPACES_ENV).is_some_and(|v| v == "1")
}

/// `<prefix>-<pid>-<counter>-<time>`, cut to a DNS label (63 characters, lower case).
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let suffix = format!("{:x}{n:x}{:x}", std::process::id(), nanos & 0xffff);
    let mut prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    prefix.truncate(62 - suffix.len());
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() {
        format!("t-{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// The names of the CRDs in a manifest.
fn crd_names(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut names = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let doc: serde_json::Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if doc["kind"] == "CustomResourceDefinition"
            && let Some(name) = doc["metadata"]["name"].as_str()
        {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        bail!("{} holds no CustomResourceDefinition", path.display());
    }
    Ok(names)
}

/// Blocking: takes the lock file, then runs `cluster.sh up` (which returns at once when the
/// cluster is already up).
fn start(root: &Path) -> anyhow::Result<Cluster> {
    let target = root.join("target");
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let lock_path = target.join("cluster.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // Held until `lock` is dropped; the file is opened close-on-exec, so the cluster's
    // processes do not inherit it.
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let script = root.join("tests/cluster/cluster.sh");
    let t0 = Instant::now();
    // stdout/stderr are inherited: a cold build takes minutes and says what it is doing.
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg("up")
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!(
            "`{} up` failed ({status}) after {:.0?}; its logs are in target/cluster/logs/",
            script.display(),
            t0.elapsed()
        );
    }
    let kubeconfig = root.join("target/cluster/kubeconfig");
    if !kubeconfig.is_file() {
        bail!(
            "`cluster.sh up` succeeded but {} is missing",
            kubeconfig.display()
        );
    }
    ensure_scheduling(root, &kubeconfig)?;
    drop(lock);
    Ok(Cluster {
        root: root.to_path_buf(),
        kubeconfig,
        crds: OnceCell::new(),
    })
}

/// How long a probe pod may take to be bound to the node.
const SCHEDULING_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks that the scheduler binds pods, with a probe pod in `default`.
///
/// Once (on a loaded machine, right after a fresh start) kube-scheduler came up healthy but
/// never scheduled anything: its queue stayed empty for good and every pod stayed Pending.
/// When the probe is not bound in time, the scheduler (its pid from `cluster.sh`'s pid file)
/// is stopped and `cluster.sh up` starts it again; the probe is then retried once.
fn ensure_scheduling(root: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    if probe_scheduling(kubeconfig)? {
        return Ok(());
    }
    eprintln!(
        "[mesh-tests] kube-scheduler did not bind a probe pod within {SCHEDULING_TIMEOUT:?}; \
         restarting it"
    );
    let pid_file = root.join("target/cluster/kube-scheduler.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?;
    let pid = pid.trim();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    if exe.file_name().is_some_and(|n| n == "kube-scheduler") {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", pid])
            .status();
        for _ in 0..150 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let status = std::process::Command::new("bash")
        .arg(root.join("tests/cluster/cluster.sh"))
        .arg("up")
        .current_dir(root)
        .stdin(Stdio::null())
        .status()?;
    if !status.success() || !probe_scheduling(kubeconfig)? {
        bail!(
            "kube-scheduler does not schedule pods (a probe pod in `default` stayed Pending); \
             see target/cluster/logs/kube-scheduler.log"
        );
    }
    Ok(())
}

/// Creates a probe pod, waits for it to be bound to a node, deletes it; `Ok(false)` when it
/// was not bound in time.
fn probe_scheduling(kubeconfig: &Path) -> anyhow::Result<bool> {
    let name = unique_name("mesh-tests-scheduler-probe");
    let kubectl = |args: &[&str], input: Option<&str>| -> anyhow::Result<Output> {
        let mut child = std::process::Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["-n", "default"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.unwrap_or_default().as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    };
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"mesh-tests": "scheduler-probe"}},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            // On the kwok node: binding is what is probed, nothing is to run.
            "nodeSelector": {"type": "kwok"},
            "tolerations": serde_json::from_str::<serde_json::Value>(KWOK_TOLERATIONS)?,
            "containers": [{"name": "probe", "image": "mesh-tests/probe"}],
        },
    });
    let args = ["create", "-f", "-"];
    checked(&args, kubectl(&args, Some(&pod.to_string()))?)?;
    let deadline = Instant::now() + SCHEDULING_TIMEOUT;
    let bound = loop {
        let out = kubectl(
            &["get", "pod", &name, "-o", "jsonpath={.spec.nodeName}"],
            None,
        )?;
        if out.status.success() && !out.stdout.trim_ascii().is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = kubectl(
        &["delete", "pod", &name, "--wait=false", "--ignore-not-found"],
        None,
    );
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        let long = "A_very long prefix ".repeat(10);
        for prefix in ["crds", "", "--", long.as_str()] {
            let name = unique_name(prefix);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
        assert_ne!(unique_name("x"), unique_name("x"));
    }

    #[test]
    fn documents_move_to_the_namespace() {
        let yaml = "a: 1\nmetadata: {name: x, namespace: other}\n---\n---\nmetadata: {name: y}\n";
        let (out, n) = move_to_namespace(yaml, "ns").unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "{\"a\":1,\"metadata\":{\"name\":\"x\",\"namespace\":\"ns\"}}\n---\n{\"metadata\":{\"name\":\"y\"}}"
        );
    }

    #[test]
    fn the_manifest_names_every_crd() {
        let names = crd_names(&repo_root().join("manifests/crds.yaml")).unwrap();
        assert!(
            names
                .iter()
                .any(|n| n == "virtualservices.networking.istio.io")
        );
    }
}
