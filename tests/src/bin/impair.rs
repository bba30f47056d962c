//! `callwatch-impair`: a UDP relay that loses, delays, jitters, reorders, duplicates and polices traffic
//! between agents and a reflector, with DPI-style rules that hit only matching packets, and prints the
//! ground truth as JSON when it stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use callwatch_tests::emulator::dpi::SYNTAX as DPI_SYNTAX;
use callwatch_tests::emulator::{
    DelayConfig, DpiRule, ImpairmentConfig, JitterShape, LossModel, PathConfig, PolicerConfig,
    Relay, RelayConfig, Route,
};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use serde::Serialize;
use tracing::info;

const EXAMPLES: &str = "\
Examples:
  # 5% loss up, 10% down, 30 ± 10 ms each way without reordering, seed 7, for one minute:
  callwatch-impair --listen 127.0.0.1:4000 --upstream 127.0.0.1:3479 \\
      --loss-up 0.05 --loss-down 0.1 --delay-ms 30 --jitter-ms 10 --seed 7 --duration 60

  # Bursty loss (Gilbert–Elliott, 4 packets per burst on average), 1% duplicates, reordering allowed,
  # and a 130 kbit/s policer per direction:
  callwatch-impair --listen 127.0.0.1:4000 --upstream 127.0.0.1:3479 \\
      --loss 0.05 --burst-len 4 --dup 0.01 --jitter-ms 10 --reorder --rate-kbps 130

  # What a call-blocking DPI box does: drop 30% of STUN-looking packets to or from port 3478 and
  # 50000-50100, leave everything else alone:
  callwatch-impair --listen 127.0.0.1:3478 --upstream 127.0.0.1:13478 \\
      --dpi 'name=stun,match=stun-cookie,ports=3478+50000-50100,side=either,loss=0.3'

  # Several routes: each --listen pairs with the --upstream at the same position.
  callwatch-impair --listen 127.0.0.1:3478 --upstream 127.0.0.1:13478 \\
      --listen 127.0.0.1:4000 --upstream 127.0.0.1:14000 --loss 0.02

Output: on Ctrl-C, SIGTERM or the end of --duration, one JSON object on stdout:
  {\"config\": …, \"ground_truth\": {\"up\": …, \"down\": …, \"rules\": …}, \"relay\": …}
ground_truth counts, per direction, the datagrams seen, delivered, duplicated and dropped by cause
(random_loss, burst_loss, policer, dpi), and logs each datagram's fate (dropped, or the delay each copy
got, in µs). Logs go to stderr; set RUST_LOG=debug for more.

Exit status: 0 after printing the ground truth, 1 if the relay could not start (e.g. a port in use),
2 for bad arguments.";

/// A UDP relay that impairs call-test traffic between agents and a reflector.
///
/// Each direction (up = agent → reflector, down = back) gets its own loss, delay and jitter,
/// duplication and rate policer, decided by a seeded model so a run can be repeated exactly. DPI rules
/// impair only the packets they match, the way censors single out call traffic.
#[derive(Parser, Debug)]
#[command(name = "callwatch-impair", version, after_long_help = EXAMPLES)]
struct Cli {
    /// Local UDP address to listen on for agents. Repeat for several routes.
    #[arg(long, value_name = "ADDR:PORT", required = true)]
    listen: Vec<SocketAddr>,

    /// Where to forward what arrives on the --listen at the same position (the reflector).
    #[arg(long, value_name = "ADDR:PORT", required = true)]
    upstream: Vec<SocketAddr>,

    /// Loss rate in both directions, a fraction 0..1.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction, conflicts_with_all = ["loss_up", "loss_down"])]
    loss: Option<f64>,

    /// Loss rate agent → reflector, a fraction 0..1.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    loss_up: Option<f64>,

    /// Loss rate reflector → agent, a fraction 0..1.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    loss_down: Option<f64>,

    /// Make the loss bursty: mean loss-burst length in packets (Gilbert–Elliott with the same loss rate).
    /// Without it loss is independent per packet.
    #[arg(long, value_name = "PACKETS", value_parser = parse_burst_len)]
    burst_len: Option<f64>,

    /// Fixed delay added in each direction, in ms.
    #[arg(long, value_name = "MS", default_value_t = 0.0, value_parser = parse_ms)]
    delay_ms: f64,

    /// Jitter around the delay in each direction, in ms: ± half-width (uniform) or standard deviation
    /// (normal).
    #[arg(long, value_name = "MS", default_value_t = 0.0, value_parser = parse_ms)]
    jitter_ms: f64,

    /// Shape of the jitter.
    #[arg(long, value_enum, default_value_t = Shape::Uniform)]
    jitter_shape: Shape,

    /// Let packets overtake each other. Without it jitter never reorders (a FIFO queue).
    #[arg(long)]
    reorder: bool,

    /// Probability that a packet is delivered twice, a fraction 0..1.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    dup: f64,

    /// Police each direction to this rate (UDP payload, kbit/s); packets over the rate are dropped.
    #[arg(long, value_name = "KBPS", value_parser = parse_rate)]
    rate_kbps: Option<f64>,

    /// The policer's bucket depth in bytes [default: 50 ms at the rate, at least 1500].
    #[arg(long, value_name = "BYTES", requires = "rate_kbps", value_parser = clap::value_parser!(u32).range(1..))]
    bucket_bytes: Option<u32>,

    /// Seed of every random decision [default: a random seed, printed in the output].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// A DPI rule, repeatable; the first rule that matches a packet applies. See the rule syntax below.
    #[arg(long, value_name = "RULE", value_parser = parse_dpi, long_help = dpi_long_help())]
    dpi: Vec<DpiRule>,

    /// A JSON file holding an array of DPI rules, tried after the --dpi ones.
    #[arg(long, value_name = "PATH")]
    dpi_file: Option<PathBuf>,

    /// Stop after this many seconds instead of waiting for Ctrl-C or SIGTERM.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,

    /// Most agents (client addresses) relayed at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_clients: u64,

    /// Most packets waiting for their delivery time at once.
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(2..))]
    max_queued: u64,

    /// Per-packet records kept per direction in the ground truth (0 keeps only the counts).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    log_limit: usize,

    /// Indent the JSON output.
    #[arg(long)]
    pretty: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shape {
    Uniform,
    Normal,
}

fn dpi_long_help() -> String {
    format!("A DPI rule, repeatable; the first rule that matches a packet applies.\n\n{DPI_SYNTAX}")
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let value: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{value} is not a fraction between 0 and 1 (write 5% as 0.05)"
        ))
    }
}

fn parse_burst_len(s: &str) -> Result<f64, String> {
    let value: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if value.is_finite() && value >= 1.0 {
        Ok(value)
    } else {
        Err(format!(
            "{value} is not a burst length of at least 1 packet"
        ))
    }
}

fn parse_ms(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of milliseconds"))?;
    let max = callwatch_tests::emulator::model::MAX_DELAY_MS;
    if (0.0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} ms is not between 0 and {max} ms"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of kbit/s"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} is not a positive rate"))
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{value} is not a positive number of seconds"))
}

fn parse_dpi(s: &str) -> Result<DpiRule, String> {
    s.parse::<DpiRule>()
        .map_err(|e| format!("{e} (see --help for the rule syntax)"))
}

/// Turns the flags into the model's config, or a usage error that names the flags at fault.
fn impairment_config(cli: &Cli) -> Result<ImpairmentConfig, clap::Error> {
    let usage_error = |message: String| Cli::command().error(ErrorKind::ValueValidation, message);
    let loss_model = |flag: &str, loss: Option<f64>| -> Result<LossModel, clap::Error> {
        match (loss, cli.burst_len) {
            (None, _) => Ok(LossModel::None),
            (Some(loss), None) => Ok(LossModel::bernoulli(loss)),
            (Some(loss), Some(burst_len)) => LossModel::from_burst(loss, burst_len).map_err(|e| {
                usage_error(format!(
                    "{flag} {loss} with --burst-len {burst_len}: {}",
                    e.problem
                ))
            }),
        }
    };
    if cli.burst_len.is_some()
        && cli.loss.is_none()
        && cli.loss_up.is_none()
        && cli.loss_down.is_none()
    {
        return Err(usage_error(
            "--burst-len needs a loss rate: --loss, --loss-up or --loss-down".into(),
        ));
    }
    let path = |flag: &str, loss: Option<f64>| -> Result<PathConfig, clap::Error> {
        Ok(PathConfig {
            loss: loss_model(flag, loss)?,
            delay: DelayConfig {
                delay_ms: cli.delay_ms,
                jitter_ms: cli.jitter_ms,
                shape: match cli.jitter_shape {
                    Shape::Uniform => JitterShape::Uniform,
                    Shape::Normal => JitterShape::Normal,
                },
            },
            reorder: cli.reorder,
            duplicate: cli.dup,
            policer: cli.rate_kbps.map(|rate_kbps| match cli.bucket_bytes {
                Some(bucket_bytes) => PolicerConfig {
                    rate_kbps,
                    bucket_bytes,
                },
                None => PolicerConfig::new(rate_kbps),
            }),
        })
    };
    let (up_flag, down_flag) = if cli.loss.is_some() {
        ("--loss", "--loss")
    } else {
        ("--loss-up", "--loss-down")
    };
    let mut rules = cli.dpi.clone();
    if let Some(file) = &cli.dpi_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            usage_error(format!(
                "--dpi-file {}: cannot read it: {e}",
                file.display()
            ))
        })?;
        let from_file: Vec<DpiRule> = serde_json::from_str(&text).map_err(|e| {
            usage_error(format!(
                "--dpi-file {}: not a JSON array of rules: {e}",
                file.display()
            ))
        })?;
        for (i, rule) in from_file.iter().enumerate() {
            rule.validate().map_err(|e| {
                usage_error(format!("--dpi-file {}: rule {i}: {e}", file.display()))
            })?;
        }
        rules.extend(from_file);
    }
    Ok(ImpairmentConfig {
        seed: cli.seed.unwrap_or_else(rand::random),
        up: path(up_flag, cli.loss.or(cli.loss_up))?,
        down: path(down_flag, cli.loss.or(cli.loss_down))?,
        rules,
        log_limit: cli.log_limit,
    })
}

#[derive(Serialize)]
struct Output<'a> {
    config: &'a ImpairmentConfig,
    #[serde(flatten)]
    snapshot: callwatch_tests::emulator::RelaySnapshot,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.listen.len() != cli.upstream.len() {
        Cli::command()
            .error(
                ErrorKind::WrongNumberOfValues,
                format!(
                    "--listen was given {} times and --upstream {} times; each --listen needs its --upstream",
                    cli.listen.len(),
                    cli.upstream.len()
                ),
            )
            .exit();
    }
    let impairment = impairment_config(&cli).unwrap_or_else(|e| e.exit());

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let config = RelayConfig {
        routes: cli
            .listen
            .iter()
            .zip(&cli.upstream)
            .map(|(&listen, &upstream)| Route { listen, upstream })
            .collect(),
        impairment: impairment.clone(),
        max_clients: usize::try_from(cli.max_clients).unwrap_or(usize::MAX),
        max_queued_packets: usize::try_from(cli.max_queued).unwrap_or(usize::MAX),
        ..RelayConfig::default()
    };
    // Before it announces itself: a signal right after that line must find the handler.
    let stop = callwatch_reflector::term::Stop::install()?;
    let relay = Relay::start(config).await?;
    info!(
        seed = impairment.seed,
        "impairing; stop with Ctrl-C or SIGTERM"
    );

    wait_for_stop(stop, cli.duration).await;
    let snapshot = relay.shutdown().await?;
    let output = Output {
        config: &impairment,
        snapshot,
    };
    let json = if cli.pretty {
        serde_json::to_string_pretty(&output)
    } else {
        serde_json::to_string(&output)
    }
    .context("cannot encode the ground truth")?;
    println!("{json}");
    Ok(())
}

async fn wait_for_stop(stop: callwatch_reflector::term::Stop, duration: Option<Duration>) {
    let timer = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.wait() => {}
        () = timer => {}
    }
}
