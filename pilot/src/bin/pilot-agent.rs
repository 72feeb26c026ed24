//! `pilot-agent`: the mesh's agent in each pod (`pilot-agent iptables` in the init
//! container; the sidecar's Envoy supervisor to come). A thin main over [`pilot::agent`].

fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("PILOT_AGENT", pilot::agent::main)
}
