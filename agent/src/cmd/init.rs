//! `init`: writes a config file and a new signing key beside it.

use anyhow::{Context, Result};
use callwatch_agent::config::{Config, ConfigFile};
use callwatch_agent::identity;
use callwatch_proto::seal::ReflectorKey;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Config file to write.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Collector QUIC address, host:port.
    #[arg(long, value_name = "HOST:PORT")]
    collector: String,
    /// SHA-256 fingerprint of the collector's certificate (its collector.pin file).
    #[arg(long, value_name = "HEX")]
    pin: String,
    /// Reflector UDP address, host:port, to test against instead of the collector's own
    /// (default: none written; the agent asks the collector where its reflector serves each
    /// platform, and refreshes that after every upload).
    #[arg(long, value_name = "HOST:PORT")]
    reflector: Option<String>,
    /// A platform to test; repeat for several (default: every one: generic, whatsapp,
    /// telegram, signal, max, tested in turn).
    #[arg(long = "platform", value_name = "PLATFORM")]
    platforms: Vec<callwatch_proto::Platform>,
    /// The reflector's key (the 64 hex digits of its reflector.pub file, printed when the
    /// collector starts). With it the platform arm's probes are sealed, so a DPI box cannot
    /// tell them from the platform's own payload; without it they travel bare.
    #[arg(long = "reflector-key", value_name = "HEX")]
    reflector_key: Option<ReflectorKey>,
    /// Replace an existing config and key.
    #[arg(long)]
    force: bool,
    /// You have read the notice below and agree to run an agent: for scripted installs, where
    /// nobody can answer the question `init` asks on a terminal.
    #[arg(long = "accept-risks")]
    accept_risks: bool,
}

/// What running an agent means, in plain words: shown by `init` (and its `--help`) before
/// anything is written, and agreed to on a terminal or with `--accept-risks`.
pub const NOTICE: &str = "\
Before you run a callwatch agent, know what it does and who sees what:
  - Every 15 minutes or so it sends test traffic shaped like WhatsApp, Telegram, Signal and
    Max calls from this network to the collector's reflector, and uploads the results to the
    collector. Your network operator (or anyone watching your traffic) can see that this
    machine does so, and where calls are restricted that may draw attention.
  - Each report says which platform was tested, the call quality measured and the hour of the
    test, signed with a key made here and replaced every day (rotate_key_every). It carries
    no name, hostname or local address.
  - The collector's operator sees the address you upload from (used to look up your country
    and network, then not kept) and every report.
  - The public sees figures by country, network and platform, only where enough volunteers
    stand behind them, and each report's measurements, country and hour without your key
    (its network only where enough volunteers share it). Researchers the operator gives a
    token see the signed reports with their signing key, which links a day's reports.
  - Measuring censorship can be risky where you are. If in doubt, do not run it.";

pub fn run(args: Args) -> Result<ExitCode> {
    super::init_logging(None);
    let Args {
        config,
        collector,
        pin,
        reflector,
        platforms,
        reflector_key,
        force,
        accept_risks,
    } = args;
    let mut file = ConfigFile::new(collector, pin.to_ascii_lowercase(), reflector);
    file.reflector_key = reflector_key.map(|k| k.to_hex());
    file.platforms = if platforms.is_empty() {
        callwatch_proto::Platform::ALL.to_vec()
    } else {
        platforms
    };
    // What is written must load: the same checks, with the same messages, as `run` makes.
    if let Err(problems) = Config::from_file(file.clone()) {
        anyhow::bail!("{}", problems.join("; "));
    }
    if config.exists() && !force {
        anyhow::bail!(
            "{} exists; pass --force to replace it and its key",
            config.display()
        );
    }
    eprintln!("{NOTICE}\n");
    if !accept_risks {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "callwatch-agent init: nothing written; agree to the notice above by answering on a \
                 terminal, or pass --accept-risks"
            );
            return Ok(ExitCode::from(super::exit::USAGE));
        }
        eprint!("Run a callwatch agent on this machine? Type yes to go on: ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !answer.trim().eq_ignore_ascii_case("yes") {
            eprintln!("callwatch-agent init: nothing written");
            return Ok(ExitCode::from(1));
        }
    }
    let base = config.parent().unwrap_or(std::path::Path::new("."));
    let key_path = base.join(&file.key_file);
    let key = identity::create_key(&key_path, force)?;
    std::fs::write(&config, file.to_toml())
        .with_context(|| format!("writing {}", config.display()))?;
    println!("wrote {} and {}", config.display(), key_path.display());
    println!(
        "agent key (public): {}",
        hex::encode(key.verifying_key().to_bytes())
    );
    Ok(ExitCode::SUCCESS)
}
