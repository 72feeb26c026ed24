fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("PILOT", pilot::main)
}
