//! The checks of `pilot check`, each an async function over the API server returning
//! [`CheckResult`]s, and the pure logic they use (version parsing, Deployment and Pod status,
//! CRD conditions, `/debug/syncz`), tested without a cluster. A missing field in an API answer
//! is a failed check, never a panic.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::pki::{self, Expiry};
use super::{CheckArgs, CheckError, CheckResult, unix_now};
use crate::install::names;

/// The oldest Kubernetes served: native sidecars (init containers with `restartPolicy:
/// Always`) are on by default from 1.29.
pub const MIN_VERSION: (u32, u32) = (1, 29);
/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A root with fewer days left than this is a warning.
const ROOT_WARN_DAYS: i64 = 30;
/// At most this many names in one reason.
const MAX_LISTED: usize = 5;

/// What every check needs: the client and the control plane's namespace.
pub struct Ctx {
    client: kube::Client,
    ns: String,
}

// === impl Ctx ===

impl Ctx {
    /// A client from `--kubeconfig` (or KUBECONFIG, or in-cluster); a failed check if none.
    pub async fn connect(args: &CheckArgs) -> Result<Ctx, CheckResult> {
        match mesh_runtime::kube_client::connect(args.kubeconfig.as_deref()).await {
            Ok(client) => Ok(Ctx {
                client,
                ns: args.namespace.clone(),
            }),
            Err(e) => Err(CheckResult::fail(
                "can initialize the Kubernetes client",
                e.to_string(),
                "pass --kubeconfig FILE or set KUBECONFIG (in a pod, the service account \
                 token must be mounted)",
            )),
        }
    }

    /// A context over any client (tests: a fake API server).
    #[cfg(test)]
    pub fn new(client: kube::Client, ns: &str) -> Ctx {
        Ctx {
            client,
            ns: ns.to_string(),
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn cluster_api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>,
        K::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    /// GET `path` of a Service of the control plane, through the API server's service proxy.
    async fn service_get(
        &self,
        service: &str,
        port: u16,
        path: &str,
    ) -> Result<String, CheckError> {
        let uri = format!(
            "/api/v1/namespaces/{}/services/http:{service}:{port}/proxy{path}",
            self.ns
        );
        let req = http::Request::get(uri).body(Vec::new())?;
        within(self.client.request_text(req)).await
    }

    /// `kubectl` with `-n NAMESPACE`, for hints.
    fn kubectl(&self, rest: &str) -> String {
        format!("kubectl -n {} {rest}", self.ns)
    }
}

/// `fut`, or [`CheckError::Timeout`] after [`REQUEST_TIMEOUT`].
async fn within<T>(fut: impl Future<Output = Result<T, kube::Error>>) -> Result<T, CheckError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CheckError::Timeout(REQUEST_TIMEOUT)),
    }
}

/// Why a check failed: an answer of the API server (or of the service behind its proxy) is
/// its code and message; other errors are followed by their sources.
fn reason(e: &CheckError) -> String {
    match e {
        CheckError::Kube(kube::Error::Api(s)) => match (s.code, s.message.trim()) {
            (0, m) => m.to_string(),
            (code, "") => format!("HTTP {code} {}", s.reason),
            (code, m) => format!("HTTP {code}: {m}"),
        },
        _ => with_sources(e),
    }
}

/// An error and its sources, each once: `kube::Error`'s own message is often only
/// "ServiceError: client error (Connect)", its sources say what failed.
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        source = cause.source();
    }
    s
}

/// The hint for an API error: permissions when it is a 403.
fn api_hint(e: &CheckError, otherwise: String) -> String {
    match e {
        CheckError::Kube(kube::Error::Api(s)) if s.code == 403 => {
            format!("the caller is not allowed to: {}", s.message)
        }
        _ => otherwise,
    }
}

// --- kubernetes-api ---

/// The API server answers, and is a supported version.
pub async fn kubernetes_api(ctx: &Ctx) -> Vec<CheckResult> {
    const NAME: &str = "can connect to the Kubernetes API";
    match within(ctx.client.apiserver_version()).await {
        Ok(info) => vec![CheckResult::ok(NAME), version_check(&info)],
        Err(e) => vec![CheckResult::fail(
            NAME,
            reason(&e),
            "is the API server up and the kubeconfig right? `kubectl cluster-info` tells \
             (--kubeconfig or KUBECONFIG selects the file)",
        )],
    }
}

/// The result of comparing the server version with [`MIN_VERSION`].
pub fn version_check(info: &Info) -> CheckResult {
    let (min_major, min_minor) = MIN_VERSION;
    let name = format!("Kubernetes version is supported (>= {min_major}.{min_minor})");
    match parse_version(info) {
        Ok(v) if v >= MIN_VERSION => CheckResult::ok(format!(
            "Kubernetes version {}.{} is supported (>= {min_major}.{min_minor})",
            v.0, v.1
        )),
        Ok(v) => CheckResult::fail(
            name,
            format!("the API server is {}.{} ({})", v.0, v.1, info.git_version),
            format!(
                "the mesh needs Kubernetes {min_major}.{min_minor} or later (native sidecar \
                 containers): upgrade the cluster"
            ),
        ),
        Err(e) => CheckResult::fail(
            name,
            reason(&e),
            "the API server's /version answer is not one of Kubernetes'",
        ),
    }
}

/// `(major, minor)` of a server version: from `major`/`minor` (providers write `"27+"`), or
/// else from `gitVersion` (`v1.33.1-gke.100`).
pub fn parse_version(info: &Info) -> Result<(u32, u32), CheckError> {
    fn leading_number(s: &str) -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    if let (Some(major), Some(minor)) = (leading_number(&info.major), leading_number(&info.minor)) {
        return Ok((major, minor));
    }
    let git = info.git_version.trim_start_matches('v');
    let mut parts = git.split('.');
    match (
        parts.next().and_then(leading_number),
        parts.next().and_then(leading_number),
    ) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(CheckError::Version(format!(
            "{}.{} ({})",
            info.major, info.minor, info.git_version
        ))),
    }
}

// --- kubernetes-setup (--pre) ---

/// What `manifests/install.yaml` creates, as (API group, resource, namespaced).
const CREATED: &[(&str, &str, bool)] = &[
    ("", "namespaces", false),
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("apps", "deployments", true),
    ("", "services", true),
    ("", "configmaps", true),
    ("", "serviceaccounts", true),
];

/// The caller may create everything install.yaml creates (SelfSubjectAccessReviews).
pub async fn can_create_all(ctx: &Ctx) -> Vec<CheckResult> {
    join_all(
        CREATED
            .iter()
            .map(|&(group, resource, namespaced)| can_create(ctx, group, resource, namespaced)),
    )
    .await
}

async fn can_create(ctx: &Ctx, group: &str, resource: &str, namespaced: bool) -> CheckResult {
    let name = if namespaced {
        format!("can create {resource} in {}", ctx.ns)
    } else {
        format!("can create {resource}")
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("create".into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespaced.then(|| ctx.ns.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api = ctx.cluster_api::<SelfSubjectAccessReview>();
    let answer = within(api.create(&PostParams::default(), &review)).await;
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let hint = format!(
        "install as a cluster admin, or get `create` on {qualified} granted (install.yaml \
         creates cluster-wide objects)"
    );
    match answer.map(|r| r.status) {
        Ok(Some(status)) if status.allowed => CheckResult::ok(name),
        Ok(Some(status)) => {
            let why = [status.reason, status.evaluation_error]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            let reason = if why.is_empty() {
                "not allowed".to_string()
            } else {
                format!("not allowed: {why}")
            };
            CheckResult::fail(name, reason, hint)
        }
        Ok(None) => CheckResult::fail(name, "the SelfSubjectAccessReview has no status", hint),
        Err(e) => CheckResult::fail(name, reason(&e), hint),
    }
}

// --- istio-system (--pre) ---

/// The namespace does not exist yet, or holds none of the control plane's Deployments.
pub async fn namespace_is_free(ctx: &Ctx) -> CheckResult {
    let name = format!("no control plane in namespace {} yet", ctx.ns);
    let hint = || ctx.kubectl("get deployments");
    let ns = match within(ctx.cluster_api::<Namespace>().get_opt(&ctx.ns)).await {
        Ok(ns) => ns,
        Err(e) => return CheckResult::fail(name, reason(&e), api_hint(&e, hint())),
    };
    if ns.is_none() {
        return CheckResult::ok(format!("namespace {} does not exist yet", ctx.ns));
    }
    let deployments = match within(ctx.api::<Deployment>().list(&ListParams::default())).await {
        Ok(list) => list.items,
        Err(e) => return CheckResult::fail(name, reason(&e), api_hint(&e, hint())),
    };
    let ours: Vec<&str> = names::DEPLOYMENTS
        .iter()
        .copied()
        .filter(|d| {
            deployments
                .iter()
                .any(|dep| dep.metadata.name.as_deref() == Some(*d))
        })
        .collect();
    if ours.is_empty() {
        CheckResult::ok(format!(
            "namespace {} exists and holds no control plane Deployment",
            ctx.ns
        ))
    } else {
        CheckResult::fail(
            name,
            format!("it holds Deployment(s) {}", ours.join(", ")),
            format!(
                "the control plane is installed already: `pilot check` (without --pre) checks \
                 it; `kubectl delete namespace {}` removes it",
                ctx.ns
            ),
        )
    }
}

// --- istio-system ---

/// The namespace exists, the CRDs are established, every Deployment is available.
pub async fn istio_system(ctx: &Ctx) -> Vec<CheckResult> {
    let install = "kubectl apply -f manifests/install.yaml";
    let ns_name = format!("namespace {} exists", ctx.ns);
    let ns = match within(ctx.cluster_api::<Namespace>().get_opt(&ctx.ns)).await {
        Ok(Some(_)) => CheckResult::ok(ns_name),
        Ok(None) => CheckResult::fail(ns_name, "not found", install),
        Err(e) => CheckResult::fail(ns_name, reason(&e), api_hint(&e, install.into())),
    };
    let ns_missing = ns.is_fail();
    let mut results = vec![ns, crds_established(ctx).await];
    if !ns_missing {
        results.extend(join_all(names::DEPLOYMENTS.iter().map(|d| deployment_ready(ctx, d))).await);
    }
    results
}

/// The names of the CRDs in `manifests/crds.yaml`.
pub fn expected_crds() -> Vec<String> {
    mesh_proto::crd::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}

async fn crds_established(ctx: &Ctx) -> CheckResult {
    let expected = expected_crds();
    let name = format!("the mesh's {} CRDs are established", expected.len());
    let hint = "kubectl apply -f manifests/crds.yaml";
    let api = ctx.cluster_api::<CustomResourceDefinition>();
    match within(api.list(&ListParams::default())).await {
        Ok(list) => match crd_problems(&expected, &list.items) {
            None => CheckResult::ok(name),
            Some(reason) => CheckResult::fail(name, reason, hint),
        },
        Err(e) => CheckResult::fail(name, reason(&e), api_hint(&e, hint.into())),
    }
}

/// Which of `expected` are missing or not Established among `crds`; `None` when all are.
pub fn crd_problems(expected: &[String], crds: &[CustomResourceDefinition]) -> Option<String> {
    let mut missing = Vec::new();
    let mut pending = Vec::new();
    for want in expected {
        match crds
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(want.as_str()))
        {
            None => missing.push(want.clone()),
            Some(crd) => {
                let established = crd
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if !established {
                    pending.push(want.clone());
                }
            }
        }
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), listed(&missing)));
    }
    if !pending.is_empty() {
        parts.push(format!(
            "{} not established: {}",
            pending.len(),
            listed(&pending)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The first [`MAX_LISTED`] names, and how many more.
fn listed(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_LISTED {
        s.push_str(&format!(" and {} more", names.len() - MAX_LISTED));
    }
    s
}

async fn deployment_ready(ctx: &Ctx, deployment: &str) -> CheckResult {
    let name = format!("deployment {deployment} is available");
    let describe = ctx.kubectl(&format!("describe deployment {deployment}"));
    let d = match within(ctx.api::<Deployment>().get_opt(deployment)).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return CheckResult::fail(name, "not found", "kubectl apply -f manifests/install.yaml");
        }
        Err(e) => return CheckResult::fail(name, reason(&e), api_hint(&e, describe)),
    };
    let Some(problem) = deployment_problem(&d) else {
        return CheckResult::ok(name);
    };
    // Why its pods are not ready: a crash-looping container's last words, usually a settings
    // problem.
    let pods = match selector(&d) {
        Some(sel) => within(ctx.api::<Pod>().list(&ListParams::default().labels(&sel)))
            .await
            .map(|l| l.items)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let pod_problems: Vec<String> = pods.iter().flat_map(pod_problems).collect();
    let mut reason = problem;
    for p in pod_problems.iter().take(3) {
        reason.push_str("; ");
        reason.push_str(p);
    }
    let hint = if pod_problems.iter().any(|p| p.contains("CrashLoopBackOff")) {
        format!(
            "{describe}; {}",
            ctx.kubectl(&format!("logs deployment/{deployment} --previous"))
        )
    } else {
        describe
    };
    CheckResult::fail(name, reason, hint)
}

/// Why a Deployment is not Available with all replicas ready; `None` when it is.
pub fn deployment_problem(d: &Deployment) -> Option<String> {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if desired == 0 {
        return Some("scaled to 0 replicas".into());
    }
    let status = d.status.as_ref();
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let condition = |ty: &str| conditions.iter().find(|c| c.type_ == ty);
    let mut problems = Vec::new();
    if ready < desired {
        problems.push(format!("{ready}/{desired} replicas ready"));
    }
    match condition("Available") {
        Some(c) if c.status == "True" => {}
        // With replicas missing, "does not have minimum availability" says nothing more.
        Some(_) if !problems.is_empty() => {}
        Some(c) => problems.push(format!(
            "not Available: {}",
            c.message.as_deref().or(c.reason.as_deref()).unwrap_or("")
        )),
        None => problems.push("no Available condition yet".into()),
    }
    // A rollout whose new pods do not become ready leaves the old ones serving (maxUnavailable
    // 0): every replica ready, yet the settings or image just applied are not in force.
    let generation = d.metadata.generation;
    let observed = status.and_then(|s| s.observed_generation);
    if let (Some(g), Some(o)) = (generation, observed)
        && o < g
    {
        problems.push(format!(
            "rollout not yet seen by the controller (generation {g}, observed {o})"
        ));
    } else if let Some(updated) = status.and_then(|s| s.updated_replicas)
        && updated < desired
    {
        problems.push(format!(
            "rollout incomplete: {updated}/{desired} replicas run the current pod template"
        ));
    }
    if let Some(c) = condition("Progressing").filter(|c| c.status == "False") {
        problems.push(format!(
            "rollout stuck: {}",
            c.message.as_deref().or(c.reason.as_deref()).unwrap_or("")
        ));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// A label selector of a Deployment's `matchLabels`.
fn selector(d: &Deployment) -> Option<String> {
    let labels = d.spec.as_ref()?.selector.match_labels.as_ref()?;
    let sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (!sel.is_empty()).then(|| sel.join(","))
}

/// What keeps a pod from running: unschedulable, or containers waiting (CrashLoopBackOff with
/// the last line of the container's termination message, image pull errors, ...), failed or
/// not ready.
pub fn pod_problems(pod: &Pod) -> Vec<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            let why = c.message.as_deref().or(c.reason.as_deref()).unwrap_or("");
            out.push(format!("pod {name} is not scheduled: {why}"));
        }
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in containers {
        if let Some(p) = container_problem(cs) {
            out.push(format!("pod {name} container {}: {p}", cs.name));
        }
    }
    out
}

fn container_problem(cs: &ContainerStatus) -> Option<String> {
    let state = cs.state.as_ref()?;
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or("Waiting");
        if matches!(reason, "ContainerCreating" | "PodInitializing") {
            return None;
        }
        let exit = last
            .map(|t| format!(" (exit code {})", t.exit_code))
            .unwrap_or_default();
        let detail = last
            .and_then(|t| last_line(t.message.as_deref()))
            .or_else(|| last_line(w.message.as_deref()));
        return Some(match detail {
            Some(d) => format!("{reason}{exit}: {d}"),
            None => format!("{reason}{exit}"),
        });
    }
    if let Some(t) = &state.terminated {
        if t.exit_code == 0 {
            return None;
        }
        let reason = t.reason.as_deref().unwrap_or("Terminated");
        return Some(match last_line(t.message.as_deref()) {
            Some(d) => format!("{reason} (exit code {}): {d}", t.exit_code),
            None => format!("{reason} (exit code {})", t.exit_code),
        });
    }
    (state.running.is_some() && !cs.ready)
        .then(|| format!("running but not ready ({} restart(s))", cs.restart_count))
}

/// The last non-blank line of a message.
fn last_line(message: Option<&str>) -> Option<String> {
    message?
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

// --- webhooks ---

/// Both webhook configurations (validation and sidecar injection) exist, their caBundles
/// hold certificates, and they verify Pilot's serving certificate (Citadel's secret for
/// Pilot's service account).
pub async fn webhooks(ctx: &Ctx) -> Vec<CheckResult> {
    let validating = within(
        ctx.cluster_api::<ValidatingWebhookConfiguration>()
            .get_opt(names::VALIDATING_WEBHOOK),
    )
    .await
    .map(|c| {
        c.map(|c| {
            let hooks = c.webhooks.unwrap_or_default().into_iter();
            hooks.map(|h| (h.name, h.client_config)).collect()
        })
    });
    let mut results = webhook_config(
        ctx,
        "ValidatingWebhookConfiguration",
        names::VALIDATING_WEBHOOK,
        names::VALIDATION_WEBHOOK_NAME,
        validating,
    )
    .await;
    let mutating = within(
        ctx.cluster_api::<MutatingWebhookConfiguration>()
            .get_opt(names::MUTATING_WEBHOOK),
    )
    .await
    .map(|c| {
        c.map(|c| {
            let hooks = c.webhooks.unwrap_or_default().into_iter();
            hooks.map(|h| (h.name, h.client_config)).collect()
        })
    });
    results.extend(
        webhook_config(
            ctx,
            "MutatingWebhookConfiguration",
            names::MUTATING_WEBHOOK,
            names::INJECTION_WEBHOOK_NAME,
            mutating,
        )
        .await,
    );
    results
}

/// The checks of one webhook configuration, given what the API server answered for it (its
/// webhooks' names and client configs).
async fn webhook_config(
    ctx: &Ctx,
    kind: &str,
    config: &str,
    hook_name: &str,
    got: Result<Option<Vec<(String, WebhookClientConfig)>>, CheckError>,
) -> Vec<CheckResult> {
    let install = "kubectl apply -f manifests/install.yaml";
    let exists = format!("{kind} {config} exists");
    let hooks = match got {
        Ok(Some(hooks)) => hooks,
        Ok(None) => return vec![CheckResult::fail(exists, "not found", install)],
        Err(e) => {
            return vec![CheckResult::fail(
                exists,
                reason(&e),
                api_hint(&e, install.into()),
            )];
        }
    };
    let mut results = vec![CheckResult::ok(exists)];

    let bundle_name = format!("the caBundle of webhook {hook_name} holds CA certificates");
    let pilot_logs = ctx.kubectl(&format!("logs deployment/{}", names::PILOT));
    let keeper_hint = format!("Pilot writes the caBundle once it serves the webhook: {pilot_logs}");
    let Some((_, client_config)) = hooks.iter().find(|(name, _)| name == hook_name) else {
        let have: Vec<&str> = hooks.iter().map(|(name, _)| name.as_str()).collect();
        results.push(CheckResult::fail(
            bundle_name,
            format!(
                "{config} has no webhook {hook_name} (it has: {})",
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ),
            install,
        ));
        return results;
    };
    let bundle = client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    if bundle.is_empty() {
        results.push(CheckResult::fail(
            bundle_name,
            "caBundle is empty",
            keeper_hint,
        ));
        return results;
    }
    match pki::pem_certificates(&bundle, "caBundle")
        .and_then(|ders| pki::parse_all(&ders, "caBundle").map(|c| c.len()))
    {
        Ok(n) => results.push(CheckResult::ok(format!("{bundle_name} ({n})"))),
        Err(e) => {
            results.push(CheckResult::fail(bundle_name, reason(&e), keeper_hint));
            return results;
        }
    }
    results.push(serving_cert_verifies(ctx, hook_name, &bundle).await);
    results
}

async fn serving_cert_verifies(ctx: &Ctx, hook_name: &str, bundle: &[u8]) -> CheckResult {
    let dns = format!("{}.{}.svc", names::PILOT, ctx.ns);
    let name = format!(
        "the caBundle of webhook {hook_name} verifies Pilot's serving certificate for {dns}"
    );
    let secret = format!("istio.{}", names::PILOT_ACCOUNT);
    let citadel_logs = ctx.kubectl(&format!("logs deployment/{}", names::CITADEL));
    let chain = match secret_key(ctx, &secret, "cert-chain.pem").await {
        Ok(chain) => chain,
        Err(e) => {
            return CheckResult::fail(
                name,
                reason(&e),
                api_hint(&e, format!("Citadel writes this secret: {citadel_logs}")),
            );
        }
    };
    match pki::verify_serving_chain(&chain, bundle, &dns, unix_now()) {
        Ok(_) => CheckResult::ok(name),
        Err(e) => CheckResult::fail(
            name,
            format!("secret {secret}: {e}"),
            format!(
                "the API server cannot call the webhook with this caBundle; Pilot keeps it in \
                 step with Citadel's root: {}; {citadel_logs}",
                ctx.kubectl(&format!("logs deployment/{}", names::PILOT))
            ),
        ),
    }
}

/// The bytes of `key` in a secret of the namespace.
async fn secret_key(ctx: &Ctx, secret: &str, key: &str) -> Result<Vec<u8>, CheckError> {
    let Some(s) = within(ctx.api::<Secret>().get_opt(secret)).await? else {
        return Err(CheckError::Missing(format!(
            "secret {secret} not found in {}",
            ctx.ns
        )));
    };
    match s.data.and_then(|mut d| d.remove(key)) {
        Some(v) if !v.0.is_empty() => Ok(v.0),
        _ => Err(CheckError::Missing(format!(
            "secret {secret} has no key {key}"
        ))),
    }
}

// --- citadel ---

/// Citadel's self-signed root (`istio-ca-secret`, or a plugged-in `cacerts`) parses and is
/// valid: a warning under [`ROOT_WARN_DAYS`] days, a failure once expired.
pub async fn citadel_root(ctx: &Ctx) -> CheckResult {
    let citadel_logs = ctx.kubectl(&format!("logs deployment/{}", names::CITADEL));
    let (secret, key, pem) = match secret_key(ctx, names::CA_SECRET, "ca-cert.pem").await {
        Ok(pem) => (names::CA_SECRET, "ca-cert.pem", pem),
        Err(CheckError::Missing(why)) => match secret_key(ctx, "cacerts", "root-cert.pem").await {
            Ok(pem) => ("cacerts", "root-cert.pem", pem),
            Err(_) => {
                return CheckResult::fail(
                    "Citadel's root certificate is valid",
                    why,
                    format!("Citadel creates it on its first start: {citadel_logs}"),
                );
            }
        },
        Err(e) => {
            return CheckResult::fail(
                "Citadel's root certificate is valid",
                reason(&e),
                api_hint(&e, citadel_logs),
            );
        }
    };
    root_result(secret, key, &pem, unix_now(), &citadel_logs)
}

/// The result for a root certificate `pem` read from `secret`/`key` at `now`.
pub fn root_result(secret: &str, key: &str, pem: &[u8], now: i64, logs: &str) -> CheckResult {
    let name = "Citadel's root certificate is valid";
    let what = format!("secret {secret} key {key}");
    match pki::root_expiry(pem, &what, now) {
        Ok((_, Expiry::Valid { days_left })) if days_left >= ROOT_WARN_DAYS => {
            CheckResult::ok(format!("{name} ({days_left} days left, secret {secret})"))
        }
        Ok((subject, Expiry::Valid { days_left })) => CheckResult::warn(
            name,
            format!(
                "{subject} expires in {days_left} day(s); Citadel rotates a self-signed root \
                 before then (a plugged-in one is yours to replace): {logs}"
            ),
        ),
        Ok((subject, Expiry::Expired { days_ago })) => CheckResult::fail(
            name,
            format!("{subject} ({what}) expired {days_ago} day(s) ago"),
            format!("mTLS fails until the root is replaced: {logs}"),
        ),
        Ok((subject, Expiry::NotYetValid)) => CheckResult::fail(
            name,
            format!("{subject} ({what}) is not valid yet"),
            "check the clocks of the nodes and of this machine",
        ),
        Err(e) => CheckResult::fail(name, reason(&e), logs),
    }
}

// --- pilot ---

/// Pilot answers `/ready`, and `/debug/syncz` shows how its proxies are synced.
pub async fn pilot(ctx: &Ctx) -> Vec<CheckResult> {
    let ready = ready(ctx, names::PILOT).await;
    if ready.is_fail() {
        return vec![ready];
    }
    let name = "proxies are in sync with Pilot";
    let syncz = match ctx
        .service_get(names::PILOT, names::MONITORING_PORT, "/debug/syncz")
        .await
        .and_then(|text| summarize_syncz(&text))
    {
        Ok(s) => s.result(name),
        Err(e) => CheckResult::fail(
            name,
            format!("/debug/syncz: {e}"),
            api_hint(
                &e,
                ctx.kubectl(&format!("logs deployment/{}", names::PILOT)),
            ),
        ),
    };
    let mesh_name = "Pilot's MeshConfig (ConfigMap istio, key mesh) is in force";
    let mesh = match ctx
        .service_get(names::PILOT, names::MONITORING_PORT, "/debug/meshz")
        .await
        .and_then(|text| mesh_refusal(&text))
    {
        Ok(None) => CheckResult::ok(mesh_name),
        Ok(Some(why)) => CheckResult::fail(
            mesh_name,
            format!("refused, the last good one serves: {why}"),
            ctx.kubectl(&format!("edit configmap {}", names::MESH_CONFIGMAP)),
        ),
        Err(e) => CheckResult::warn(mesh_name, format!("/debug/meshz: {e}")),
    };
    let analysis_name = "the config in force has no broken references (IST0101)";
    let analysis = match ctx
        .service_get(names::PILOT, names::MONITORING_PORT, "/debug/analyzez")
        .await
        .and_then(|text| analysis_messages(&text))
    {
        Ok(messages) if messages.is_empty() => CheckResult::ok(analysis_name),
        Ok(messages) => CheckResult::warn(
            analysis_name,
            format!("{} problem(s): {}", messages.len(), listed(&messages)),
        ),
        Err(e) => CheckResult::warn(analysis_name, format!("/debug/analyzez: {e}")),
    };
    vec![ready, syncz, mesh, analysis]
}

/// The messages of `/debug/analyzez`, in Istio's one-line form.
pub fn analysis_messages(text: &str) -> Result<Vec<String>, CheckError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CheckError::Missing(format!("not JSON: {e}")))?;
    let messages = value
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or_else(|| CheckError::Missing("no \"messages\" list".into()))?;
    Ok(messages
        .iter()
        .map(|m| {
            let s = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("?");
            format!(
                "{} [{}] ({} {}/{}) {}: {}",
                s("level"),
                s("code"),
                s("kind"),
                s("namespace"),
                s("object"),
                s("field"),
                s("message")
            )
        })
        .collect())
}

/// Why Pilot refused the MeshConfig file as it is now (`/debug/meshz`), if it did.
pub fn mesh_refusal(text: &str) -> Result<Option<String>, CheckError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CheckError::Missing(format!("not JSON: {e}")))?;
    match value.get("refused") {
        Some(serde_json::Value::String(why)) => Ok(Some(why.clone())),
        Some(serde_json::Value::Null) => Ok(None),
        _ => Err(CheckError::Missing("no \"refused\" field".into())),
    }
}

/// `service` answers `/ready` on its monitoring port, through the API server.
async fn ready(ctx: &Ctx, service: &str) -> CheckResult {
    let name = format!("{service} is ready (/ready)");
    match ctx
        .service_get(service, names::MONITORING_PORT, "/ready")
        .await
    {
        Ok(_) => CheckResult::ok(name),
        Err(e) => {
            let hint = match &e {
                CheckError::Kube(kube::Error::Api(s)) if s.code == 403 => format!(
                    "the caller needs `get` on services/proxy in {}: {}",
                    ctx.ns, s.message
                ),
                _ => ctx.kubectl(&format!("logs deployment/{service}")),
            };
            CheckResult::fail(name, reason(&e), hint)
        }
    }
}

/// How the proxies connected to Pilot are synced, from `/debug/syncz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub connected: usize,
    pub synced: usize,
    /// Proxies with a response not ACKed yet.
    pub stale: Vec<String>,
    /// Proxies whose last response of some type was NACKed.
    pub nacked: Vec<String>,
}

/// Reads `/debug/syncz`: a list of `{"proxy", "types": {TYPE: {"status"}}}`.
pub fn summarize_syncz(text: &str) -> Result<SyncSummary, CheckError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CheckError::Missing(format!("not JSON: {e}")))?;
    let conns = value
        .as_array()
        .ok_or_else(|| CheckError::Missing("not a JSON list of connections".into()))?;
    let mut s = SyncSummary {
        connected: conns.len(),
        ..Default::default()
    };
    for c in conns {
        let proxy = c
            .get("proxy")
            .and_then(|p| p.as_str())
            .unwrap_or("?")
            .to_string();
        let statuses: BTreeSet<&str> = c
            .get("types")
            .and_then(|t| t.as_object())
            .map(|types| {
                types
                    .values()
                    .filter_map(|t| t.get("status").and_then(|s| s.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if statuses.contains("NACKED") {
            s.nacked.push(proxy);
        } else if statuses.contains("STALE") {
            s.stale.push(proxy);
        } else {
            s.synced += 1;
        }
    }
    Ok(s)
}

// === impl SyncSummary ===

impl SyncSummary {
    /// Stale or NACKed proxies are a warning: a push in flight, or config Envoy refused.
    pub fn result(&self, name: &str) -> CheckResult {
        if self.connected == 0 {
            return CheckResult::ok(format!("{name} (no proxy connected)"));
        }
        if self.stale.is_empty() && self.nacked.is_empty() {
            return CheckResult::ok(format!("{name} ({} connected, all synced)", self.connected));
        }
        let mut why = format!("{} connected, {} synced", self.connected, self.synced);
        if !self.stale.is_empty() {
            why.push_str(&format!(
                ", {} stale (not ACKed yet: {})",
                self.stale.len(),
                listed(&self.stale)
            ));
        }
        if !self.nacked.is_empty() {
            why.push_str(&format!(
                ", {} NACKed (Envoy refused the config; `pilot`'s /debug/syncz names the \
                 error): {}",
                self.nacked.len(),
                listed(&self.nacked)
            ));
        }
        CheckResult::warn(name, why)
    }
}

// --- mixer ---

/// Both of Mixer's roles answer `/ready`, and answer a real Check: Mixer's `/live` sends an
/// ext_authz Check to its own gRPC port and says what came back (the API server's service
/// proxy cannot carry gRPC, so the check is made from inside the pod).
pub async fn mixer(ctx: &Ctx) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for service in [names::POLICY, names::TELEMETRY] {
        let ready = ready(ctx, service).await;
        let failed = ready.is_fail();
        out.push(ready);
        if !failed {
            out.push(answers_check(ctx, service).await);
        }
    }
    out
}

async fn answers_check(ctx: &Ctx, service: &str) -> CheckResult {
    let name = format!("{service} answers a Check (/live)");
    match ctx
        .service_get(service, names::MONITORING_PORT, "/live")
        .await
        .and_then(|text| live_answer(&text))
    {
        Ok(why) => CheckResult::ok(format!("{name}: {why}")),
        Err(e) => CheckResult::fail(
            name,
            reason(&e),
            ctx.kubectl(&format!("logs deployment/{service}")),
        ),
    }
}

/// What Mixer's `/live` says: `{"addr", "code", "millis"}`.
pub fn live_answer(text: &str) -> Result<String, CheckError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| CheckError::Missing(text.trim().to_string()))?;
    let code = value
        .get("code")
        .and_then(|c| c.as_i64())
        .ok_or_else(|| CheckError::Missing(format!("no \"code\" in {text}")))?;
    let millis = value.get("millis").and_then(|m| m.as_u64()).unwrap_or(0);
    Ok(format!("code {code} in {millis} ms"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        PodCondition, PodStatus,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::check::Outcome;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Default::default()
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version(&info("1", "33", "v1.33.1")).unwrap(), (1, 33));
        assert_eq!(
            parse_version(&info("1", "30+", "v1.30.2-gke.1")).unwrap(),
            (1, 30)
        );
        assert_eq!(
            parse_version(&info("", "", "v1.29.0-eks")).unwrap(),
            (1, 29)
        );
        assert!(parse_version(&info("", "", "weird")).is_err());

        assert_eq!(
            version_check(&info("1", "33", "v1.33.1")),
            CheckResult::ok("Kubernetes version 1.33 is supported (>= 1.29)")
        );
        let old = version_check(&info("1", "28", "v1.28.9"));
        assert!(
            old.render().contains("the API server is 1.28 (v1.28.9)"),
            "{}",
            old.render()
        );
        assert!(version_check(&info("x", "y", "z")).is_fail());
    }

    fn deployment(
        replicas: Option<i32>,
        ready: Option<i32>,
        available: Option<&str>,
    ) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas,
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: ready,
                conditions: available.map(|s| {
                    vec![DeploymentCondition {
                        type_: "Available".into(),
                        status: s.into(),
                        message: Some("Deployment does not have minimum availability.".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deployment_status() {
        assert_eq!(
            deployment_problem(&deployment(Some(2), Some(2), Some("True"))),
            None
        );
        assert_eq!(
            deployment_problem(&deployment(None, Some(1), Some("True"))),
            None
        );
        assert_eq!(
            deployment_problem(&deployment(None, None, Some("False"))).as_deref(),
            Some("0/1 replicas ready")
        );
        assert_eq!(
            deployment_problem(&deployment(Some(3), Some(1), None)).as_deref(),
            Some("1/3 replicas ready; no Available condition yet")
        );
        assert_eq!(
            deployment_problem(&deployment(Some(1), Some(1), Some("False"))).as_deref(),
            Some("not Available: Deployment does not have minimum availability.")
        );
        assert_eq!(
            deployment_problem(&deployment(Some(0), None, None)).as_deref(),
            Some("scaled to 0 replicas")
        );
        // Old pods ready, the new one crash-looping: the rollout is what is wrong.
        let mut stuck = deployment(Some(2), Some(2), Some("True"));
        stuck.metadata.generation = Some(3);
        if let Some(s) = stuck.status.as_mut() {
            s.observed_generation = Some(3);
            s.updated_replicas = Some(1);
        }
        assert_eq!(
            deployment_problem(&stuck).as_deref(),
            Some("rollout incomplete: 1/2 replicas run the current pod template")
        );
        stuck.metadata.generation = Some(4);
        assert_eq!(
            deployment_problem(&stuck).as_deref(),
            Some("rollout not yet seen by the controller (generation 4, observed 3)")
        );
        // No status at all is a problem, not a panic.
        assert!(deployment_problem(&Deployment::default()).is_some());
    }

    fn pod(statuses: Vec<ContainerStatus>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("istio-pilot-abc".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(statuses),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(state: ContainerState, last: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus {
            name: "discovery".into(),
            state: Some(state),
            last_state: last,
            restart_count: 4,
            ..Default::default()
        }
    }

    #[test]
    fn a_crash_loop_names_the_last_line_of_the_termination_message() {
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                message: Some("back-off 40s restarting failed container".into()),
            }),
            ..Default::default()
        };
        let last = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                message: Some(
                    "starting pilot\nError: /etc/istio/settings.yaml: unknown field `grpcAdr`\n\n"
                        .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_problems(&pod(vec![container(waiting.clone(), Some(last))])),
            [
                "pod istio-pilot-abc container discovery: CrashLoopBackOff (exit code 1): \
              Error: /etc/istio/settings.yaml: unknown field `grpcAdr`"
            ]
        );
        // Without a termination message, the waiting message.
        assert_eq!(
            pod_problems(&pod(vec![container(waiting, None)])),
            [
                "pod istio-pilot-abc container discovery: CrashLoopBackOff: back-off 40s \
              restarting failed container"
            ]
        );
    }

    #[test]
    fn other_pod_states() {
        let creating = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        };
        assert!(pod_problems(&pod(vec![container(creating, None)])).is_empty());
        let pull = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some("Back-off pulling image \"mesh/pilot:0.1.0\"".into()),
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_problems(&pod(vec![container(pull, None)])),
            [
                "pod istio-pilot-abc container discovery: ImagePullBackOff: Back-off pulling \
              image \"mesh/pilot:0.1.0\""
            ]
        );
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        };
        assert_eq!(
            pod_problems(&pod(vec![container(running, None)])),
            ["pod istio-pilot-abc container discovery: running but not ready (4 restart(s))"]
        );
        let mut unscheduled = pod(vec![]);
        unscheduled.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            message: Some("0/1 nodes are available: 1 Insufficient cpu.".into()),
            ..Default::default()
        }]);
        assert_eq!(
            pod_problems(&unscheduled),
            ["pod istio-pilot-abc is not scheduled: 0/1 nodes are available: 1 Insufficient cpu."]
        );
        assert!(pod_problems(&Pod::default()).is_empty());
    }

    fn crd(name: &str, established: Option<&str>) -> CustomResourceDefinition {
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: established.map(|s| CustomResourceDefinitionStatus {
                conditions: Some(vec![CustomResourceDefinitionCondition {
                    type_: "Established".into(),
                    status: s.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn crds() {
        let expected = expected_crds();
        assert!(expected.contains(&"virtualservices.networking.istio.io".to_string()));
        assert!(expected.len() > 10);
        let all: Vec<_> = expected.iter().map(|n| crd(n, Some("True"))).collect();
        assert_eq!(crd_problems(&expected, &all), None);

        let want: Vec<String> = ["a.x", "b.x", "c.x"].map(String::from).into();
        let have = [crd("a.x", Some("True")), crd("b.x", Some("False"))];
        assert_eq!(
            crd_problems(&want, &have).as_deref(),
            Some("1 missing: c.x; 1 not established: b.x")
        );
        let want: Vec<String> = (0..7).map(|i| format!("k{i}.x")).collect();
        assert_eq!(
            crd_problems(&want, &[crd("k0.x", None)]).as_deref(),
            Some("6 missing: k1.x, k2.x, k3.x, k4.x, k5.x and 1 more; 1 not established: k0.x")
        );
    }

    #[test]
    fn mesh_refusals() {
        assert_eq!(
            mesh_refusal(r#"{"file":"/m","refused":null}"#).unwrap(),
            None
        );
        assert_eq!(
            mesh_refusal(r#"{"refused":"connectTimeout: bad"}"#)
                .unwrap()
                .as_deref(),
            Some("connectTimeout: bad")
        );
        assert!(mesh_refusal("[]").is_err());
    }

    #[test]
    fn syncz() {
        let text = r#"[
          {"proxy": "sidecar~10.0.0.1~a.default~default.svc.cluster.local", "connection": 1,
           "types": {"cds": {"status": "SYNCED"}, "lds": {"status": "SYNCED"}}},
          {"proxy": "b.default", "types": {"cds": {"status": "STALE"}, "eds": {"status": "SYNCED"}}},
          {"proxy": "c.default", "types": {"lds": {"status": "NACKED"}, "cds": {"status": "STALE"}}},
          {"connection": 4}
        ]"#;
        let s = summarize_syncz(text).unwrap();
        assert_eq!(
            s,
            SyncSummary {
                connected: 4,
                synced: 2,
                stale: vec!["b.default".into()],
                nacked: vec!["c.default".into()],
            }
        );
        let r = s.result("proxies are in sync with Pilot");
        let Outcome::Warn(why) = &r.outcome else {
            panic!("{r:?}")
        };
        assert!(
            why.starts_with("4 connected, 2 synced, 1 stale (not ACKed yet: b.default), 1 NACKed"),
            "{why}"
        );

        let s = summarize_syncz("[]").unwrap();
        assert_eq!(s.result("x"), CheckResult::ok("x (no proxy connected)"));
        let one = r#"[{"proxy": "a", "types": {"cds": {"status": "SYNCED"}}}]"#;
        assert_eq!(
            summarize_syncz(one).unwrap().result("x"),
            CheckResult::ok("x (1 connected, all synced)")
        );
        assert!(summarize_syncz("{}").is_err());
        assert!(summarize_syncz("<html>").is_err());
    }

    #[test]
    fn root_results() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let t = time::OffsetDateTime::now_utc();
        p.not_before = t - time::Duration::days(1);
        p.not_after = t + time::Duration::days(100);
        let pem = p.self_signed(&key).unwrap().pem();
        let now = unix_now();
        let day = 86_400;
        let r = root_result(
            "istio-ca-secret",
            "ca-cert.pem",
            pem.as_bytes(),
            now,
            "logs",
        );
        assert!(
            matches!(r.outcome, Outcome::Ok) && r.name.contains("days left"),
            "{r:?}"
        );
        let r = root_result("s", "k", pem.as_bytes(), now + 80 * day, "logs");
        assert!(matches!(r.outcome, Outcome::Warn(_)), "{r:?}");
        let r = root_result("s", "k", pem.as_bytes(), now + 120 * day, "logs");
        assert!(r.is_fail() && r.render().contains("expired"), "{r:?}");
        let r = root_result("s", "k", b"nope", now, "logs");
        assert!(r.is_fail(), "{r:?}");
    }

    #[test]
    fn reasons_name_their_sources_once() {
        let io = std::io::Error::other("connection refused");
        let e = CheckError::Kube(kube::Error::Service(Box::new(io)));
        assert_eq!(reason(&e), "ServiceError: connection refused");
    }

    #[test]
    fn last_lines() {
        assert_eq!(last_line(Some("a\nb\n  \n")).as_deref(), Some("b"));
        assert_eq!(last_line(Some("\n \n")), None);
        assert_eq!(last_line(None), None);
    }
}
