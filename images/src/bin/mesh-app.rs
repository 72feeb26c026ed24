//! `mesh-app`: the test workload (see `mesh_images::app`).
//!
//! `mesh-app` (or `mesh-app serve`) plays the service its environment names;
//! `mesh-app get URL [-H 'name: value']... [--count N]` calls a URL and prints each answer's
//! status and body (exit 0 when every answer is 2xx), for `kubectl exec` into images
//! without a shell; with `--latency`, one JSON line of how long the calls took instead
//! (for benchmarks: `{"count", "ok", "p50_us", "p90_us", "p99_us", "max_us"}`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_images::app;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-app",
    version,
    about = "The mesh's test workload (bookinfo-like)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve as $SERVICE_NAME $SERVICE_VERSION on $PORT (the default).
    Serve,
    /// GET a URL and print the status and body of each answer.
    Get {
        url: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// How many calls to make, one after the other.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The limit of each call.
        #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 3000)]
        timeout_ms: u64,
        /// Print one JSON line of the calls' latencies (percentiles, in microseconds, of
        /// the 2xx answers) instead of each answer.
        #[arg(long)]
        latency: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let result = match app::Config::from_env() {
                Ok(config) => app::run(config).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mesh-app: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Get {
            url,
            headers,
            count,
            timeout_ms,
            latency,
        } => {
            let mut parsed = Vec::new();
            for header in &headers {
                match app::parse_header(header) {
                    Ok(h) => parsed.push(h),
                    Err(e) => {
                        eprintln!("mesh-app: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let timeout = Duration::from_millis(timeout_ms);
            let mut all_ok = true;
            let mut took = Vec::new();
            for _ in 0..count.max(1) {
                let start = std::time::Instant::now();
                let answer = app::get(&url, &parsed, timeout).await;
                let elapsed = start.elapsed();
                match answer {
                    Ok(reply) if latency => {
                        let ok = (200..300).contains(&reply.status);
                        all_ok &= ok;
                        if ok {
                            took.push(elapsed);
                        }
                    }
                    Ok(reply) => {
                        all_ok &= (200..300).contains(&reply.status);
                        let body = String::from_utf8_lossy(&reply.body);
                        println!("{}", reply.status);
                        if body.ends_with('\n') {
                            print!("{body}");
                        } else {
                            println!("{body}");
                        }
                    }
                    Err(e) => {
                        all_ok = false;
                        eprintln!("mesh-app: {e}");
                    }
                }
            }
            if latency {
                println!("{}", app::latency_summary(count.max(1), &mut took));
            }
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
