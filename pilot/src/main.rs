// mimalloc returns freed memory to the OS promptly, which keeps Pilot's resident memory close
// to what its connections hold rather than to its peak (measured by `make bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    mesh_runtime::cli::main("PILOT", pilot::main)
}
