//! `pilot-agent`: the per-pod side of the mesh, run from the `proxy` image.
//!
//! - [`iptables`]: `pilot-agent iptables`, the init container's job: installs the nat rules
//!   that send the pod's TCP traffic through the sidecar (Istio's `istio-iptables`).
//! - [`ca_client`] and [`sds`]: the workload certificate from Citadel's CSR API (key in
//!   memory, renewed at half its life), served to Envoy over SDS on a Unix socket.
//! - `proxy` (to come): the sidecar's supervisor of Envoy (bootstrap, restarts, drain).
//!
//! The binary is a thin `src/bin/pilot-agent.rs` over [`main`].

pub mod ca_client;
pub mod iptables;
pub mod sds;

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
    // `Proxy(proxy::ProxyArgs)`, the sidecar's Envoy supervisor, comes here.
}

impl BinaryCli for Cli {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// Runs the command line.
pub async fn main(cli: Cli, _shutdown: Shutdown) -> anyhow::Result<()> {
    match cli.command {
        Command::Iptables(args) => {
            // A one-shot of a few child processes: off the runtime's workers all the same.
            tokio::task::spawn_blocking(move || iptables::run(&args)).await?
        }
    }
}
