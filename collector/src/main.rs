//! `callwatch-collector`: the operator's program.

use anyhow::{Context, Result};
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
        /// Publish an aggregate cell only when at least K distinct agents stand behind it.
        #[arg(long = "min-agents", default_value_t = 3, value_name = "K")]
        min_agents: usize,
        /// Count one agent's reports at most N times per cell and day.
        #[arg(long = "max-per-agent-day", default_value_t = 24, value_name = "N")]
        max_per_agent_day: usize,
    },
    /// Export from a stopped collector's store: raw signed reports (ndjson) or aggregates.
    ///
    /// ndjson: one report per line with its exact signed body, agent key and signature (check
    /// them with `verify`); json/csv: the aggregate by --axis-x [and --axis-y], as the HTTP API
    /// gives it.
    ///
    /// Examples:
    ///   callwatch-collector export --data /var/lib/callwatch > reports.ndjson
    ///   callwatch-collector export --data /var/lib/callwatch --format csv --axis-x asn --axis-y platform
    Export {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ExportFormat,
        /// With json/csv: day, country, asn or platform.
        #[arg(long = "axis-x", default_value = "country")]
        axis_x: String,
        #[arg(long = "axis-y")]
        axis_y: Option<String>,
        /// With ndjson: only reports received at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// With json/csv: the k threshold (see `serve --min-agents`).
        #[arg(long = "min-agents", default_value_t = 3, value_name = "K")]
        min_agents: usize,
    },
    /// Check every signature in an ndjson export, offline. Exit 0 when all verify, 1 otherwise.
    Verify {
        /// The export file ("-" for standard input).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Ndjson,
    Json,
    Csv,
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
            min_agents,
            max_per_agent_day,
        } => {
            let mut cfg = ServeConfig::new(data);
            cfg.policy.min_agents = min_agents;
            cfg.policy.max_per_agent_per_day = max_per_agent_day;
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
        Command::Export {
            data,
            format,
            axis_x,
            axis_y,
            since,
            min_agents,
        } => export(
            &data,
            format,
            &axis_x,
            axis_y.as_deref(),
            since.as_deref(),
            min_agents,
        ),
        Command::Verify { file } => {
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("opening {}", file.display()))?,
                ))
            };
            let summary = callwatch_collector::export::verify_export(input)?;
            for (line, reason) in &summary.invalid {
                eprintln!("line {line}: {reason}");
            }
            println!("{} valid, {} invalid", summary.valid, summary.invalid.len());
            if !summary.invalid.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn export(
    data: &std::path::Path,
    format: ExportFormat,
    axis_x: &str,
    axis_y: Option<&str>,
    since: Option<&str>,
    min_agents: usize,
) -> Result<()> {
    use callwatch_collector::aggregate::{aggregate, to_csv, Axis, Filter, Policy};
    use callwatch_collector::store::SledStore;
    use std::io::Write;
    let path = data.join("reports.sled");
    if !path.exists() {
        anyhow::bail!("{} holds no collector store", data.display());
    }
    let store = SledStore::open(&path).map_err(|e| {
        anyhow::anyhow!("{e} (is a collector still running on this folder? stop it first)")
    })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        ExportFormat::Ndjson => {
            let since_ms = match since {
                None => i64::MIN,
                Some(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .with_context(|| format!("--since {s:?} is not RFC 3339"))?
                    .timestamp_millis(),
            };
            let mut n = 0usize;
            let mut failed = None;
            callwatch_collector::export::page(&store, since_ms, usize::MAX, |r| {
                n += 1;
                match out.write_all(r.to_line().as_bytes()) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            out.flush()?;
            eprintln!("exported {n} reports");
        }
        ExportFormat::Json | ExportFormat::Csv => {
            let mut axes: Vec<Axis> = vec![axis_x
                .parse()
                .map_err(|e| anyhow::anyhow!("--axis-x: {e}"))?];
            if let Some(y) = axis_y {
                let y: Axis = y.parse().map_err(|e| anyhow::anyhow!("--axis-y: {e}"))?;
                if axes.contains(&y) {
                    anyhow::bail!("--axis-y must differ from --axis-x");
                }
                axes.push(y);
            }
            let observations = callwatch_collector::http::load_observations(&store)?;
            let policy = Policy {
                min_agents,
                ..Policy::default()
            };
            let cells = aggregate(&observations, &axes, &Filter::default(), &policy);
            if matches!(format, ExportFormat::Csv) {
                out.write_all(to_csv(&cells, &axes).as_bytes())?;
            } else {
                serde_json::to_writer_pretty(
                    &mut out,
                    &serde_json::json!({
                        "axis_x": axes[0].as_str(),
                        "axis_y": axes.get(1).map(|a| a.as_str()),
                        "result": cells,
                    }),
                )?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
    }
    Ok(())
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
