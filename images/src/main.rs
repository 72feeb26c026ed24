//! `mesh-image`: builds the mesh's container images as OCI + Docker archives, without Docker.
//! See `images/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_images::build::{self, Options, Profile};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-image",
    version,
    about = "Builds the mesh's container images without Docker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes OUT/NAME.tar for each image (all of the spec's when no NAME is given).
    Build {
        /// The images spec.
        #[arg(long, default_value = "images/images.yaml")]
        spec: PathBuf,
        /// Where the archives go.
        #[arg(long, default_value = "target/images")]
        out: PathBuf,
        /// Whose binaries ${PROFILE_DIR} names: target/debug (dev) or target/release.
        #[arg(long, value_enum, default_value = "release")]
        profile: Profile,
        /// Cargo's target directory (default: $CARGO_TARGET_DIR, else target/ beside the
        /// Cargo.lock above the spec).
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Do not strip debug info from the binaries marked `strip: true`.
        #[arg(long)]
        no_strip: bool,
        /// The images to build.
        names: Vec<String>,
    },
    /// Lists the spec's images, one name a line.
    List {
        #[arg(long, default_value = "images/images.yaml")]
        spec: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::List { spec } => {
            let spec = mesh_images::spec::Spec::load(&spec)?;
            for name in spec.images.keys() {
                println!("{name}");
            }
        }
        Command::Build {
            spec,
            out,
            profile,
            target_dir,
            no_strip,
            names,
        } => {
            let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(text) => text
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={text:?} is not seconds"))?,
                Err(_) => 0,
            };
            let built = build::build(&Options {
                spec,
                out,
                profile,
                target_dir,
                names,
                vars: None,
                epoch,
                default_version: env!("CARGO_PKG_VERSION").to_string(),
                strip: !no_strip,
            })?;
            print!("{}", mesh_images::table(&built));
        }
    }
    Ok(())
}
