// Pilot's memory comes and goes in bursts (every connection's responses in flight after a
// config change, then freed): mimalloc gives freed pages back where glibc's arenas keep them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("PILOT", pilot::main)
}
