//! `status`: what the agent has been doing, from its state file.

use anyhow::Result;
use callwatch_agent::config::Config;
use callwatch_agent::state::AgentState;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's config file (written by `init`): its state file and queue are shown.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Print the state as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = Config::load(&args.config)?;
    super::init_logging(Some(cfg.log_level));
    let mut state = AgentState::load(&cfg.state_path())?;
    state.refresh_data_used(chrono::Utc::now());
    if args.json {
        println!("{}", serde_json::to_string(&state)?);
    } else {
        print!("{}", state.render());
    }
    Ok(ExitCode::SUCCESS)
}
