//! `pilot-agent`: the per-pod side of the mesh, run from the `proxy` image.
//!
//! - [`iptables`]: `pilot-agent iptables`, the init container's job: installs the nat rules
//!   that send the pod's TCP traffic through the sidecar (Istio's `istio-iptables`).
//! - [`ca_client`] and [`sds`]: the workload certificate from Citadel's CSR API (key in
//!   memory, renewed at half its life), served to Envoy over SDS on a Unix socket.
//! - [`proxy`]: `pilot-agent proxy sidecar|router`, the proxy container's main process:
//!   node id and metadata from the Downward API ([`node`]), Envoy's bootstrap, Envoy run and
//!   restarted with backoff, drained on SIGTERM ([`supervise`]), and the status port 15020
//!   (`/healthz/ready`, `/stats/prometheus`, app probes: [`status`]), talking to Envoy's admin
//!   interface through [`admin`]; the workload certificate from [`ca_client`] over [`sds`] by
//!   default, or Istio 1.0's mounted files (`--cert-source files`).
//!
//! The binary is a thin `src/bin/pilot-agent.rs` over [`main`].

pub mod admin;
pub mod ca_client;
pub mod iptables;
pub mod node;
pub mod proxy;
pub mod sds;
pub mod status;
pub mod supervise;

use mesh_runtime::Shutdown;
use mesh_runtime::cli::{BinaryCli, CommonArgs};

/// pilot-agent: the mesh's agent in each pod, run from the proxy image.
///
/// Every flag can also be set by an environment variable (shown in each subcommand's --help).
#[derive(Debug, clap::Parser)]
#[command(name = "pilot-agent", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What pilot-agent does.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Capture the pod's TCP traffic for the sidecar (the init container's job, as root with
    /// NET_ADMIN): installs nat rules redirecting outbound connections to the proxy's port
    /// (-p, 15001) and inbound ones to its inbound port (-z, 15006), except the proxy's own
    /// (-u/-g, 1337). Prints the rules (iptables-restore input), then installs them; with
    /// --dry-run, only prints them.
    Iptables(iptables::IptablesArgs),
    /// Run Envoy as the pod's proxy (the istio-proxy container's main process): writes its
    /// bootstrap from the pod's Downward API environment (POD_NAME, POD_NAMESPACE,
    /// INSTANCE_IP, SERVICE_ACCOUNT, ISTIO_META_*, ISTIO_METAJSON_*), starts and supervises
    /// Envoy (restarts with backoff), serves readiness on --status-port (15020) and drains
    /// Envoy on SIGTERM. The workload certificate (--cert-source): by default from Citadel's
    /// CSR API, served to Envoy over SDS on --sds-socket (/etc/istio/proxy/SDS); or Istio
    /// 1.0's mounted files in --certs-dir (--cert-source files).
    Proxy(proxy::ProxyArgs),
}

impl BinaryCli for Cli {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// Runs the command line.
pub async fn main(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    match cli.command {
        Command::Iptables(args) => {
            // A one-shot of a few child processes: off the runtime's workers all the same.
            tokio::task::spawn_blocking(move || iptables::run(&args)).await?
        }
        Command::Proxy(args) => {
            let env = std::env::vars().collect();
            Ok(proxy::run(args, env, shutdown).await?)
        }
    }
}
