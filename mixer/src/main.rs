fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("MIXER", mixer::run)
}
