//! `pilot-agent`: the mesh's agent in each pod: `pilot-agent iptables` in the init container,
//! `pilot-agent proxy sidecar|router` as the proxy container's main process (Envoy's
//! bootstrap, supervision, drain and readiness). A thin main over [`pilot::agent`].

fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("PILOT_AGENT", pilot::agent::main)
}
