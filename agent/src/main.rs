//! `callwatch-agent`: the volunteer's program.

use anyhow::{Context, Result};
use callwatch_agent::config::Config;
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::queue::Queue;
use callwatch_agent::{identity, report_text, runner};
use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::Platform;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "callwatch-agent",
    version,
    about = "Measures what voice calls sound like from your network and reports it, signed, to a callwatch collector.",
    after_help = "Quick start:\n  callwatch-agent init --config ~/.config/callwatch/agent.toml \\\n      --collector collector.example.org:4433 --pin <64 hex digits> \\\n      --reflector collector.example.org:3479\n  callwatch-agent test --reflector collector.example.org:3479\n  callwatch-agent run --config ~/.config/callwatch/agent.toml --once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a config file and a new signing key (owner-only) next to it.
    Init {
        /// Config file to write.
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Collector QUIC address, host:port.
        #[arg(long, value_name = "HOST:PORT")]
        collector: String,
        /// SHA-256 fingerprint of the collector's certificate (its collector.pin file).
        #[arg(long, value_name = "HEX")]
        pin: String,
        /// Reflector UDP address, host:port (default: the collector's host, port 3479).
        #[arg(long, value_name = "HOST:PORT")]
        reflector: Option<String>,
        /// The reflector's key (the 64 hex digits of its reflector.pub file, printed when the
        /// collector starts). With it the platform arm's probes are sealed, so a DPI box cannot
        /// tell them from the platform's own payload; without it they travel bare.
        #[arg(long = "reflector-key", value_name = "HEX")]
        reflector_key: Option<ReflectorKey>,
        /// Replace an existing config and key.
        #[arg(long)]
        force: bool,
    },
    /// Run one call test now and print the result (nothing is uploaded).
    ///
    /// Sends an isochronous stream shaped like a voice call (a 172-byte packet every 20 ms by
    /// default) to the reflector, which echoes each one, and reports loss per direction, round
    /// trip time, jitter and an E-model MOS.
    Test {
        /// Reflector UDP address, host:port.
        #[arg(long, value_name = "HOST:PORT")]
        reflector: String,
        /// Platform whose call traffic to imitate: generic (one arm), or whatsapp, telegram,
        /// signal, max (a platform arm framed like its calls on its ports, plus a control arm of
        /// neutral bytes on port 40400, and a verdict comparing them).
        #[arg(long, default_value = "generic")]
        platform: Platform,
        /// Reflector port for the platform arm (default: the platform's own, e.g. 3478).
        #[arg(long = "platform-port", value_name = "PORT")]
        platform_port: Option<u16>,
        /// Reflector port for the control arm (default: 40400).
        #[arg(long = "control-port", value_name = "PORT")]
        control_port: Option<u16>,
        /// Send the profile's video-like stream (1000-1200 B every 5 ms, ~1.8 Mbit/s per arm)
        /// instead of voice.
        #[arg(long)]
        video: bool,
        /// Also ask this STUN/TURN server of the platform's 10 STUN Binding requests (role
        /// relay), beside the same requests to the reflector host (role relay-reference).
        #[arg(long = "relay", value_name = "HOST:PORT")]
        relay: Option<String>,
        /// The neutral STUN server the relay is judged against (default: the reflector host).
        #[arg(long = "relay-reference", value_name = "HOST:PORT", requires = "relay")]
        relay_reference: Option<String>,
        /// Test length in seconds (1..=120). A verdict needs at least 12 s of both arms.
        #[arg(long, default_value_t = 15, value_name = "SECS")]
        duration: u32,
        /// Interval between packets (5..=1000).
        #[arg(long = "interval-ms", default_value_t = 20, value_name = "MS")]
        interval_ms: u16,
        /// Every packet this long on the wire, UDP payload (48..=1400). Default: the platform
        /// profile's Opus-like sizes (generic: 172 bytes).
        #[arg(long, value_name = "BYTES")]
        size: Option<u16>,
        /// Local address to send from.
        #[arg(long, value_name = "ADDR")]
        bind: Option<IpAddr>,
        /// The reflector's key (64 hex digits, its reflector.pub): seals the platform arm's
        /// probes so that a DPI box cannot tell them from the platform's payload.
        #[arg(long = "reflector-key", value_name = "HEX")]
        reflector_key: Option<ReflectorKey>,
        /// Print exactly one JSON object (the report) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run tests on the configured schedule, sign and queue the reports, and upload them.
    ///
    /// Without --once this is the daemon: one test at a time, the configured platforms in turn,
    /// at `interval` with random `spread`, never in `quiet_hours`, never beyond the data
    /// budget (a skipped test and why show in `status`). Reports wait in the queue until the
    /// collector acknowledges them; failed uploads are retried with exponential backoff.
    /// SIGTERM/SIGINT stop it within a few seconds (exit 0).
    ///
    /// Exit codes with --once: 0 all uploaded; 2 the collector could not be reached or refused
    /// the upload (reports stay queued for next time); 3 a test could not run (reflector
    /// unreachable) — what was queued was still uploaded; 1 the queue could not be opened or a
    /// report could not be queued (a full disk is logged as "cannot open the queue: no space
    /// left on device" or "cannot queue the report: no space left on device") or any other
    /// error.
    Run {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Run every configured platform's test once (budget permitting), upload, and exit.
        #[arg(long)]
        once: bool,
        /// Test/demo override: seconds between tests instead of the config's `interval`;
        /// unlike `interval` it may be below one minute.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        every: Option<u64>,
        /// Longest wait between upload retries, in seconds (default 900; the first waits at
        /// most 5 s, each next one up to twice as long, randomised).
        #[arg(long = "retry-max", value_name = "SECS", default_value_t = 900,
              value_parser = clap::value_parser!(u64).range(1..))]
        retry_max: u64,
    },
    /// Write the queued reports to FILE, sealed to the collector, for carrying past a block.
    ///
    /// FILE (owner-only) can be opened only with the collector's carry-out key and says nothing
    /// in the clear; the collector's operator imports it with `callwatch-collector import`.
    /// The reports stay queued: they leave only when the collector acknowledges them, at the
    /// next upload that gets through (imported ones are then acknowledged as duplicates), so
    /// nothing is lost and nothing is stored twice. The key is the config's collector_seal_key
    /// or the one the collector sent with an upload. Stop a running agent first (it holds the
    /// queue).
    ///
    /// Example:
    ///   callwatch-agent export-queue --config ~/.config/callwatch/agent.toml /media/usb/carried.cwq
    #[command(name = "export-queue")]
    ExportQueue {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// The file to write.
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Show what the agent has been doing: recent tests, queue, uploads (and over which
    /// transport, quic or tcp), data used.
    Status {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Print the state as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs to stderr: level from RUST_LOG, else the config's `log_level`, else info; colours only
/// on a terminal; no timestamps under systemd (journald adds its own).
fn init_logging(cli: &Cli) {
    let config_level = match &cli.command {
        Command::Run { config, .. } | Command::Status { config, .. } => {
            std::fs::read_to_string(config)
                .ok()
                .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
                .and_then(|t| t.get("log_level")?.as_str().map(str::to_owned))
                .and_then(|l| callwatch_agent::config::log_level_name(&l))
        }
        _ => None,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| config_level.unwrap_or("info").into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callwatch-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One line of live progress: a bar of packets sent, replies so far, loss so far, last RTT.
fn progress_line(p: &callwatch_agent::engine::session::Progress) -> String {
    const WIDTH: usize = 24;
    let done = (p.sent as usize * WIDTH)
        .checked_div(p.total as usize)
        .unwrap_or(0)
        .min(WIDTH);
    let loss = if p.sent > 0 {
        format!(
            "{:.1}%",
            100.0 * (1.0 - p.received as f64 / p.sent as f64).max(0.0)
        )
    } else {
        "-".into()
    };
    format!(
        "[{}{}] {}/{} sent, {} back, loss {}, rtt {}",
        "#".repeat(done),
        " ".repeat(WIDTH - done),
        p.sent,
        p.total,
        p.received,
        loss,
        p.last_rtt_ms
            .map(|r| format!("{r:.2} ms"))
            .unwrap_or_else(|| "-".into())
    )
}

/// Resolves with the signal's name on SIGTERM or SIGINT.
async fn stop_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init {
            config,
            collector,
            pin,
            reflector,
            reflector_key,
            force,
        } => {
            let reflector = match reflector {
                Some(r) => r,
                None => {
                    let host = collector
                        .rsplit_once(':')
                        .map(|(h, _)| h)
                        .unwrap_or(&collector);
                    format!("{host}:3479")
                }
            };
            let mut cfg = Config::new(collector, pin.to_ascii_lowercase(), reflector);
            cfg.reflector_key = reflector_key.map(|k| k.to_hex());
            if let Err(problems) = cfg.validate() {
                anyhow::bail!("{}", problems.join("; "));
            }
            if config.exists() && !force {
                anyhow::bail!(
                    "{} exists; pass --force to replace it and its key",
                    config.display()
                );
            }
            let base = config.parent().unwrap_or(std::path::Path::new("."));
            let key_path = base.join(&cfg.key_file);
            let key = identity::create_key(&key_path, force)?;
            std::fs::write(&config, cfg.to_toml())
                .with_context(|| format!("writing {}", config.display()))?;
            println!("wrote {} and {}", config.display(), key_path.display());
            println!(
                "agent key (public): {}",
                hex::encode(key.verifying_key().to_bytes())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            reflector,
            platform,
            duration,
            interval_ms,
            size,
            bind,
            json,
            platform_port,
            control_port,
            relay,
            relay_reference,
            video,
            reflector_key,
        } => {
            let addr: SocketAddr = runner::resolve("reflector", &reflector)?;
            let relay_server = relay.map(|r| runner::resolve("relay", &r)).transpose()?;
            let relay_reference = relay_reference
                .map(|r| runner::resolve("relay reference", &r))
                .transpose()?;
            let spec = TestSpec {
                platform,
                interval_ms,
                size,
                bind,
                platform_port,
                control_port,
                relay_server,
                relay_reference,
                video,
                reflector_key,
                ..TestSpec::voice(addr, duration.saturating_mul(1000))
            };
            spec.validate()?;
            // A live line (packets, loss, RTT) only for a person at a terminal; pipes and
            // `--json` get the result alone.
            let interactive = !json && std::io::stdout().is_terminal();
            let report = run_call_test(&spec, &Cancel::default(), |p| {
                if let (true, Some(p)) = (interactive, p.first()) {
                    print!("\r{}   ", progress_line(p));
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                }
            })?;
            if interactive {
                println!();
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report_text::summary(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            once,
            every,
            retry_max,
        } => {
            let cfg = Config::load(&config)?;
            if let Some(period) = cfg.key_rotation() {
                if identity::rotate_if_due(&cfg.key_file, period, std::time::SystemTime::now())?
                    .is_some()
                {
                    tracing::info!("signing key rotated (older than rotate_key_every)");
                }
            }
            let key = identity::load_key(&cfg.key_file)?;
            let queue = match Queue::open(&cfg.queue_dir) {
                Ok(q) => q,
                Err(e) if callwatch_agent::queue::is_disk_full(&e) => {
                    // sled writes when it opens; a full disk stops it before any test runs.
                    tracing::error!(
                        "cannot open the queue: no space left on device ({e:#}); nothing was \
                         tested, reports queued before are kept"
                    );
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e),
            };
            let rt = tokio::runtime::Runtime::new()?;
            let code = rt.block_on(async {
                if !once {
                    let options = callwatch_agent::daemon::DaemonOptions {
                        every: every.map(std::time::Duration::from_secs),
                        backoff: callwatch_agent::backoff::Backoff::new(
                            callwatch_agent::backoff::DEFAULT_BASE,
                            std::time::Duration::from_secs(retry_max),
                        ),
                    };
                    let stop = async {
                        match stop_signal().await {
                            Ok(s) => tracing::info!("{s} received"),
                            Err(e) => {
                                tracing::warn!("cannot watch for signals: {e}");
                                std::future::pending::<()>().await
                            }
                        }
                    };
                    callwatch_agent::daemon::run_daemon(
                        std::sync::Arc::new(cfg),
                        key,
                        std::sync::Arc::new(queue),
                        options,
                        stop,
                    )
                    .await?;
                    return Ok::<_, anyhow::Error>(ExitCode::SUCCESS);
                }
                let cancel = Cancel::default();
                let stop = stop_signal();
                tokio::pin!(stop);
                let outcome = tokio::select! {
                    o = runner::run_cycle_cancellable(&cfg, &key, &queue, &cancel) => o?,
                    s = &mut stop => {
                        // Stop a running test at once; everything queued is already on disk.
                        cancel.cancel();
                        tracing::info!("{}: stopping", s?);
                        return Ok(ExitCode::SUCCESS);
                    }
                };
                let code = match &outcome.upload {
                    _ if !outcome.queue_errors.is_empty() => 1,
                    Some(Err(_)) => 2,
                    _ if !outcome.test_errors.is_empty() => 3,
                    _ => 0,
                };
                Ok(ExitCode::from(code))
            });
            // A test thread sees the cancel within milliseconds; don't wait on it for long.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            code
        }
        Command::ExportQueue {
            config,
            file,
            force,
        } => {
            let cfg = Config::load(&config)?;
            match callwatch_agent::carry::export_queue(&cfg, &file, force)? {
                None => println!("the queue is empty: nothing to export"),
                Some(e) => println!(
                    "wrote {} report(s) to {}, sealed to the collector's carry-out key {} ({}); \
                     they stay queued until the collector acknowledges them",
                    e.reports,
                    file.display(),
                    e.key,
                    match e.source {
                        callwatch_agent::carry::KeySource::Config => "from the config",
                        callwatch_agent::carry::KeySource::Collector => "sent by the collector",
                    }
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let cfg = Config::load(&config)?;
            let mut state = callwatch_agent::state::AgentState::load(&cfg.state_path())?;
            state.refresh_data_used(chrono::Utc::now());
            if json {
                println!("{}", serde_json::to_string(&state)?);
            } else {
                print!("{}", state.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
