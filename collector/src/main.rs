//! `callwatch-collector`: the operator's program.

use anyhow::Result;
use callwatch_collector::{serve, ServeConfig};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "callwatch-collector",
    version,
    about = "Receives signed call-quality reports from callwatch agents, stores and aggregates them, and runs the UDP reflector agents test against.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector: QUIC ingest, reflector and HTTP API.
    ///
    /// On first start a self-signed certificate is made in DIR and its SHA-256 fingerprint is
    /// printed and written to DIR/collector.pin; give it to agents with
    /// `callwatch-agent init --pin`.
    ///
    /// Example:
    ///   callwatch-collector serve --data /var/lib/callwatch --listen 0.0.0.0:4433 \
    ///       --reflector 0.0.0.0:3479 --http 127.0.0.1:8080 --geo ip2asn-combined.tsv
    Serve {
        /// Data folder (created owner-only if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// QUIC address agents upload to.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// UDP address of the reflector; repeat for several ports.
        #[arg(long = "reflector", value_name = "ADDR", default_values_t = ["127.0.0.1:3479".parse::<SocketAddr>().expect("literal")])]
        reflectors: Vec<SocketAddr>,
        /// HTTP API address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Region table in ip2asn TSV format (range_start, range_end, AS number, country,
        /// description). Without it every sender is country ZZ, AS0.
        #[arg(long, value_name = "FILE")]
        geo: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("callwatch-collector: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            data,
            listen,
            reflectors,
            http,
            geo,
        } => {
            let mut cfg = ServeConfig::new(data);
            cfg.listen = listen;
            cfg.reflectors = reflectors;
            cfg.http = http;
            cfg.geo = geo;
            let collector = serve(cfg).await?;
            println!(
                "collector pin (SHA-256 of its certificate): {}",
                collector.pin
            );
            println!("QUIC ingest on {}", collector.quic_addr);
            for a in &collector.reflector.addrs {
                println!("reflector on udp {a}");
            }
            println!(
                "HTTP API on http://{}/api/v1/aggregation",
                collector.http_addr
            );
            wait_for_signal().await?;
            tracing::info!("shutting down");
            collector.shutdown().await;
            Ok(())
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
