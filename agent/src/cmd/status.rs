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
        println!("{}", key_line(&cfg, &state, std::time::SystemTime::now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `status` says of the signing key: when it is replaced next, or that it is kept.
fn key_line(cfg: &Config, state: &AgentState, now: std::time::SystemTime) -> String {
    let when = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let last = state
        .key_rotated_at
        .map(|t| format!("; last replaced {}", when(t)))
        .unwrap_or_default();
    match cfg.rotate_key_every {
        None => format!(
            "signing key: kept (rotate_key_every = \"never\"): all reports link to one key{last}"
        ),
        Some(period) => {
            let slot = callwatch_agent::identity::rotation_slot(now, period);
            let next = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs((slot + 1) * period.as_secs().max(1));
            format!(
                "signing key: replaced every {} (rotate_key_every), next at {}{last}",
                callwatch_agent::config::format_duration(period),
                when(next.into())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_when_the_key_turns_or_that_it_is_kept() {
        let mut cfg = Config::new("127.0.0.1:4433".into(), [0; 32], "127.0.0.1:1".into());
        let state = AgentState::default();
        let at = std::time::SystemTime::from(
            chrono::DateTime::parse_from_rfc3339("2026-03-01T15:20:00Z").unwrap(),
        );
        let line = key_line(&cfg, &state, at);
        assert_eq!(
            line,
            "signing key: replaced every 1d (rotate_key_every), next at 2026-03-02 00:00 UTC"
        );
        cfg.rotate_key_every = None;
        assert!(key_line(&cfg, &state, at).contains("kept (rotate_key_every = \"never\")"));
    }
}
