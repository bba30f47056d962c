//! `callwatch-demo`: a whole callwatch deployment on this machine, end to end, in one command.

use callwatch_proto::Platform;
use callwatch_tests::demo::{run_demo, DemoConfig};
use clap::Parser;
use std::path::PathBuf;

/// Starts a collector (embedded sled store, reflector, HTTP API) and several agents on distinct
/// loopback addresses (127.0.0.2, 127.0.0.3, …) that a generated region table maps to different
/// countries and networks; the Russian ones reach the reflector through an emulated DPI box that
/// drops 10 % of STUN-framed packets. Each agent runs its call tests (generic, WhatsApp,
/// Telegram by default), uploads the signed reports over QUIC, and the aggregate by region and
/// platform is printed, with the share of tests that found the platform singled out.
/// Leaves nothing behind unless --keep is given.
#[derive(Parser)]
#[command(name = "callwatch-demo", version)]
struct Cli {
    /// Number of agents (1..=6).
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Length of each call test, seconds.
    /// (13 s at least for a verdict: see docs/DETECTION.md.)
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    duration: u32,
    /// Platforms each agent tests, in turn (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "generic,whatsapp,telegram"
    )]
    platforms: Vec<Platform>,
    /// Do not put the Russian networks behind the emulated DPI box.
    #[arg(long = "no-dpi")]
    no_dpi: bool,
    /// Keep the data (collector store, agent keys and queues) in this folder.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = DemoConfig {
        agents: cli.agents,
        duration_secs: cli.duration,
        platforms: cli.platforms,
        keep: cli.keep,
        dpi: !cli.no_dpi,
    };
    match run_demo(&cfg).await {
        Ok(result) => {
            print!("{}", result.table);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callwatch-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
