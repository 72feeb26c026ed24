// Mixer's report path allocates a little per instance; mimalloc keeps that cheap and
// contention-free across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("MIXER", mixer::run)
}
