fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("CITADEL", citadel::run)
}
