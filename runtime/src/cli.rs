//! Command-line plumbing shared by the binaries: flags mirrored by environment variables, and
//! the flags every binary has (settings file, log format and level).

use std::path::PathBuf;

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::logging::LogFormat;

/// Flags every binary has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// YAML file with the settings an operator tunes (the same names as the flags, in
    /// camelCase); flags and environment variables win over it.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Log level or filter directive, e.g. `info` or `info,pilot::xds=debug`.
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,

    /// On SIGTERM, keep serving this long before shutting down (e.g. `5s`): on Kubernetes
    /// the pod leaves its Service's endpoints when its deletion starts, and clients (the
    /// sidecars) learn of it a moment later, so they keep reaching a pod that already stopped
    /// unless it waits. A second signal still stops at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", global = true)]
    pub shutdown_delay: mesh_proto::types::Duration,
}

/// Parses the command line of `C`, mirroring every long flag as an environment variable named
/// `PREFIX_FLAG_NAME` (e.g. `--grpc-addr` of pilot is `PILOT_GRPC_ADDR`). Exits with clap's
/// usage message on bad input, as clap does.
pub fn parse<C: CommandFactory + FromArgMatches>(prefix: &str) -> C {
    let matches = with_env(C::command(), prefix).get_matches();
    match C::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    }
}

/// Same as [`parse`], over explicit arguments (for tests).
pub fn try_parse_from<C: CommandFactory + FromArgMatches>(
    prefix: &str,
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<C, clap::Error> {
    let matches: ArgMatches = with_env(C::command(), prefix).try_get_matches_from(args)?;
    C::from_arg_matches(&matches)
}

fn with_env(cmd: Command, prefix: &str) -> Command {
    let prefix = prefix.to_string();
    let cmd = cmd.mut_args(|arg| match arg.get_long() {
        Some(long) if arg.get_env().is_none() && !matches!(long, "help" | "version") => {
            let name = format!("{prefix}_{}", long.replace('-', "_").to_ascii_uppercase());
            arg.env(name)
        }
        _ => arg,
    });
    cmd.mut_subcommands(|sub| with_env(sub, &prefix))
}

/// A binary's command line: anything clap parses that carries the [`CommonArgs`].
pub trait BinaryCli: CommandFactory + FromArgMatches {
    /// The flags every binary has.
    fn common(&self) -> &CommonArgs;
}

/// The whole of a binary's `main`: parses flags (mirrored by `PREFIX_*` environment variables),
/// sets up logging, starts a tokio runtime, and runs `run` with the shutdown signal.
pub fn main<C, F, Fut>(prefix: &str, run: F) -> anyhow::Result<()>
where
    C: BinaryCli,
    F: FnOnce(C, crate::Shutdown) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cli: C = parse(prefix);
    let common = cli.common();
    crate::logging::init(common.log_format, &common.log_level)?;
    let delay = common.shutdown_delay.as_std();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = crate::shutdown::on_signals_after(delay);
        let result = run(cli, shutdown).await;
        if let Err(e) = &result {
            tracing::error!(error = format!("{e:#}"), "exiting");
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long)]
        grpc_addr: Option<String>,
    }

    #[test]
    fn flags_are_mirrored_by_env() {
        let help = with_env(Cli::command(), "TESTBIN")
            .render_long_help()
            .to_string();
        assert!(help.contains("TESTBIN_GRPC_ADDR"), "{help}");
        assert!(help.contains("TESTBIN_LOG_FORMAT"), "{help}");
        let cli: Cli = try_parse_from("TESTBIN", ["x", "--grpc-addr", "1.2.3.4:5"]).unwrap();
        assert_eq!(cli.grpc_addr.as_deref(), Some("1.2.3.4:5"));
    }
}
