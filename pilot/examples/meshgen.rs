//! Writes a generated mesh (`pilot::testutil::meshgen`) to a directory, one file per
//! namespace:
//!
//! ```sh
//! cargo run -p pilot --example meshgen -- --services 1000 --endpoints 10 --out /tmp/mesh
//! pilot --config-dir /tmp/mesh                       # file mode: ServiceEntries
//! cargo run -p pilot --example meshgen -- --form cluster --out /tmp/mesh-k8s
//! kubectl apply -f /tmp/mesh-k8s                     # Namespaces, Services, EndpointSlices
//! ```

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use pilot::testutil::meshgen::{Form, MeshGen};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormArg {
    /// ServiceEntries, for Pilot's --config-dir.
    Files,
    /// Namespaces, Services and EndpointSlices, for kubectl apply.
    Cluster,
}

/// Writes a mesh of N services for benchmarks.
#[derive(Debug, Parser)]
struct Args {
    /// Services.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Namespaces the services are spread over (default: one per 20 services).
    #[arg(long)]
    namespaces: Option<usize>,
    /// Share of services (0 to 1) with a VirtualService and a DestinationRule with subsets.
    #[arg(long, default_value_t = 0.2)]
    routed_share: f64,
    /// Share of namespaces (0 to 1) whose proxies a Sidecar resource keeps to their namespace.
    #[arg(long, default_value_t = 0.0)]
    sidecar_share: f64,
    /// Subsets of each routed service.
    #[arg(long, default_value_t = 2)]
    subsets: usize,
    #[arg(long, value_enum, default_value_t = FormArg::Files)]
    form: FormArg,
    /// The directory written (created if missing; files ns-K.yaml).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut mesh = MeshGen::new(args.services, args.endpoints)
        .routed_share(args.routed_share)
        .sidecar_share(args.sidecar_share)
        .subsets(args.subsets);
    if let Some(n) = args.namespaces {
        mesh = mesh.namespaces(n);
    }
    let form = match args.form {
        FormArg::Files => Form::Files,
        FormArg::Cluster => Form::Cluster,
    };
    let paths = mesh.write(&args.out, form)?;
    let c = mesh.counts();
    eprintln!(
        "{} files in {}: {} namespaces, {} services, {} endpoints, {} VirtualServices, {} DestinationRules, {} Sidecars",
        paths.len(),
        args.out.display(),
        c.namespaces,
        c.services,
        c.endpoints,
        c.virtual_services,
        c.destination_rules,
        c.sidecars
    );
    Ok(())
}
