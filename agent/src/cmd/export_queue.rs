//! `export-queue`: the queue sealed to the collector's carry-out key in a file.

use anyhow::Result;
use callwatch_agent::carry::{export_queue, KeySource};
use callwatch_agent::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's config file (written by `init`): its queue and the collector's carry-out key.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// The file to write.
    file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    super::init_logging(None);
    let cfg = Config::load(&args.config)?;
    match export_queue(&cfg, &args.file, args.force)? {
        None => println!("the queue is empty: nothing to export"),
        Some(e) => println!(
            "wrote {} report(s) to {}, sealed to the collector's carry-out key {} ({}); \
             they stay queued until the collector acknowledges them",
            e.reports,
            args.file.display(),
            e.key,
            match e.source {
                KeySource::Config => "from the config",
                KeySource::Collector => "sent by the collector",
            }
        ),
    }
    Ok(ExitCode::SUCCESS)
}
