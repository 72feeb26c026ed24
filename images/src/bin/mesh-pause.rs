//! `mesh-pause`: the pod sandbox image's process (see `mesh_images::pause`).

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match mesh_images::pause::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-pause: {e}");
            ExitCode::FAILURE
        }
    }
}
