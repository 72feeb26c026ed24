//! `pilot check`: is the cluster ready for the control plane (`--pre`), or is the installed
//! control plane healthy? Like `linkerd check` and `istioctl verify-install`: one line per
//! check, grouped under headings, with a hint for every failure, and a non-zero exit when
//! anything failed (warnings do not fail).
//!
//! - [`report`]: [`CheckResult`], and the text and JSON output.
//! - [`pki`]: PEM bundles, certificate chains and expiry, without a cluster.
//! - `cluster`: the checks themselves, one async function each, against the API server.
//!
//! The names checked are [`crate::install::names`]', the ones `manifests/install.yaml` uses.

mod cluster;
#[cfg(test)]
mod fake;
pub mod pki;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::types::Duration as IstioDuration;
use tokio::time::Instant;

use crate::install::names;
pub use report::{CheckResult, Group, Outcome, Totals};

/// How long a failing group waits before it is run again (`--wait`).
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Flags of `pilot check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Check that the cluster is ready for `kubectl apply -f manifests/install.yaml` instead:
    /// API server version, the caller's permissions, no control plane there already.
    #[arg(long)]
    pub pre: bool,

    /// Kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The control plane's namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE", default_value = names::NAMESPACE)]
    pub namespace: String,

    /// Run failing checks again until they pass or this much time is up, e.g. 2m.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub wait: IstioDuration,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// How `pilot check` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Headings and a line per check, printed as each group finishes.
    Text,
    /// One JSON document at the end.
    Json,
}

/// What goes wrong in `pilot check`: the command's own failure, and the reasons checks fail
/// (shown as a check's reason through `Display`).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{failed} check(s) failed")]
    ChecksFailed { failed: usize },
    #[error("cannot write the JSON output: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("cannot build the request: {0}")]
    Http(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("{0}")]
    Chain(String),
    #[error("the serving certificate has no DNS name {want:?} (it has {have:?})")]
    MissingSan { want: String, have: Vec<String> },
    #[error("cannot read the server version {0:?}")]
    Version(String),
    #[error("{0}")]
    Missing(String),
}

/// The groups of checks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    KubernetesApi,
    KubernetesSetup,
    PreInstall,
    IstioSystem,
    Webhooks,
    Citadel,
    Pilot,
    Mixer,
}

// === impl GroupKind ===

impl GroupKind {
    const PRE: &[GroupKind] = &[
        GroupKind::KubernetesApi,
        GroupKind::KubernetesSetup,
        GroupKind::PreInstall,
    ];
    const POST: &[GroupKind] = &[
        GroupKind::KubernetesApi,
        GroupKind::IstioSystem,
        GroupKind::Webhooks,
        GroupKind::Citadel,
        GroupKind::Pilot,
        GroupKind::Mixer,
    ];

    fn name(self) -> &'static str {
        match self {
            GroupKind::KubernetesApi => "kubernetes-api",
            GroupKind::KubernetesSetup => "kubernetes-setup",
            GroupKind::PreInstall | GroupKind::IstioSystem => "istio-system",
            GroupKind::Webhooks => "webhooks",
            GroupKind::Citadel => "citadel",
            GroupKind::Pilot => "pilot",
            GroupKind::Mixer => "mixer",
        }
    }

    async fn run(self, ctx: &cluster::Ctx) -> Vec<CheckResult> {
        match self {
            GroupKind::KubernetesApi => cluster::kubernetes_api(ctx).await,
            GroupKind::KubernetesSetup => cluster::can_create_all(ctx).await,
            GroupKind::PreInstall => vec![cluster::namespace_is_free(ctx).await],
            GroupKind::IstioSystem => cluster::istio_system(ctx).await,
            GroupKind::Webhooks => cluster::webhooks(ctx).await,
            GroupKind::Citadel => vec![cluster::citadel_root(ctx).await],
            GroupKind::Pilot => cluster::pilot(ctx).await,
            GroupKind::Mixer => cluster::mixer(ctx).await,
        }
    }
}

/// Runs `pilot check`, printing as it goes; an error when any check failed.
pub async fn run(args: CheckArgs) -> Result<(), CheckError> {
    let groups = collect(&args, |g| {
        if args.output == OutputFormat::Text {
            println!("{}", g.render());
        }
    })
    .await;
    match args.output {
        OutputFormat::Text => print!("{}", Totals::of(&groups).summary()),
        OutputFormat::Json => print!("{}", report::render_json(&groups)?),
    }
    match Totals::of(&groups).failed {
        0 => Ok(()),
        failed => Err(CheckError::ChecksFailed { failed }),
    }
}

/// Runs the groups of `args` (each again, while it fails, until `--wait` is up), calling
/// `done` with each as it finishes.
async fn collect(args: &CheckArgs, mut done: impl FnMut(&Group)) -> Vec<Group> {
    let deadline = Instant::now() + args.wait.as_std();
    let ctx = loop {
        match cluster::Ctx::connect(args).await {
            Ok(ctx) => break ctx,
            Err(failed) if Instant::now() + RETRY_EVERY >= deadline => {
                let group = Group {
                    name: GroupKind::KubernetesApi.name(),
                    results: vec![failed],
                };
                done(&group);
                return vec![group];
            }
            Err(_) => tokio::time::sleep(RETRY_EVERY).await,
        }
    };
    let plan = if args.pre {
        GroupKind::PRE
    } else {
        GroupKind::POST
    };
    let progress = args.output == OutputFormat::Text;
    run_groups(&ctx, plan, deadline, progress, done).await
}

/// Runs `plan` in order, each group again while it fails and `deadline` is not reached;
/// stops after `kubernetes-api` when the API server does not answer. `progress` says on
/// stderr what is being waited for.
async fn run_groups(
    ctx: &cluster::Ctx,
    plan: &[GroupKind],
    deadline: Instant,
    progress: bool,
    mut done: impl FnMut(&Group),
) -> Vec<Group> {
    let mut groups = Vec::new();
    for &kind in plan {
        let mut announced = false;
        let results = loop {
            let results = kind.run(ctx).await;
            let failing = results.iter().filter(|r| r.is_fail()).count();
            if failing == 0 || Instant::now() + RETRY_EVERY >= deadline {
                break results;
            }
            if progress && !announced {
                let left = deadline.saturating_duration_since(Instant::now());
                eprintln!(
                    "waiting up to {}s for {failing} failing check(s) of {}...",
                    left.as_secs(),
                    kind.name()
                );
                announced = true;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        };
        // Nothing else can be checked without the API server.
        let unreachable =
            kind == GroupKind::KubernetesApi && results.first().is_none_or(CheckResult::is_fail);
        let group = Group {
            name: kind.name(),
            results,
        };
        done(&group);
        groups.push(group);
        if unreachable {
            break;
        }
    }
    groups
}

/// Unix seconds now (0 if the clock is before 1970).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Check(CheckArgs),
    }

    fn parse(args: &[&str]) -> CheckArgs {
        let Sub::Check(a) = <Cli as clap::Parser>::try_parse_from(args).unwrap().command;
        a
    }

    #[test]
    fn flags_and_defaults() {
        let a = parse(&["pilot", "check"]);
        assert!(!a.pre);
        assert_eq!(a.namespace, "istio-system");
        assert_eq!(a.wait.as_std(), Duration::ZERO);
        assert_eq!(a.output, OutputFormat::Text);

        let a = parse(&[
            "pilot", "check", "--pre", "--wait", "2m", "-o", "json", "-n", "mesh",
        ]);
        assert!(a.pre);
        assert_eq!(a.wait.as_std(), Duration::from_secs(120));
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(a.namespace, "mesh");
    }

    #[tokio::test]
    async fn a_bad_kubeconfig_is_one_failed_check() {
        let a = parse(&["pilot", "check", "--kubeconfig", "/nonexistent/kubeconfig"]);
        let groups = collect(&a, |_| {}).await;
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].name, "kubernetes-api");
        let r = &groups[0].results[0];
        assert!(r.is_fail(), "{r:?}");
        assert!(r.render().contains("hint: "), "{}", r.render());
    }
}
