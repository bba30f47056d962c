//! One module per command: its flags (`Args`) and what it does (`run`).

pub mod export_queue;
pub mod init;
pub mod run;
pub mod status;
pub mod test;

use callwatch_agent::config::LogLevel;
use std::io::IsTerminal;
use std::path::Path;

/// Logs to stderr: level from RUST_LOG, else the `log_level` of `config` (read alone, so that
/// a config with mistakes elsewhere still logs at its level), else info; colours only on a
/// terminal; no timestamps under systemd (journald adds its own).
pub fn init_logging(config: Option<&Path>) {
    let config_level = config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| t.get("log_level")?.as_str().and_then(LogLevel::from_name))
        .map(LogLevel::as_str);
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
