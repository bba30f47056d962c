//! `check-config`: reads a config file as `run` would and says whether it is usable, without
//! touching the key, the queue or the state file (so a package's maintainer script can check a
//! config with a new binary before restarting the running agent).

use anyhow::Result;
use callwatch_agent::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The config file to check.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Every problem, each naming its key, as `run` would report them (exit 1 through main).
    Config::load(&args.config)?;
    println!("{}: ok", args.config.display());
    Ok(ExitCode::SUCCESS)
}
