//! One module per command: its flags (`Args`) and what it does (`run`).

pub mod check_config;
pub mod export_queue;
pub mod init;
pub mod run;
pub mod status;
pub mod test;

use callwatch_agent::config::LogLevel;

/// The exit codes every command shares (also in `--help` and the README).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Any other error (a bad config, a full disk, …), said on stderr.
    pub const ERROR: u8 = 1;
    /// The collector could not be reached or refused the upload; reports stay queued.
    pub const COLLECTOR_UNREACHABLE: u8 = 2;
    /// A test could not run: the reflector did not answer or refused it.
    pub const TEST_FAILED: u8 = 3;
    /// The collector's certificate is not the pinned one: a wrong pin, or the connection is
    /// being intercepted. Reports stay queued.
    pub const WRONG_PIN: u8 = 4;
    /// A wrong command line (callwatch_reflector::term::EX_USAGE, as in the collector), and
    /// `init` without the volunteer's agreement where nobody can answer.
    pub const USAGE: u8 = 64;
}

/// Logs to stderr: level from RUST_LOG, else `level` (the config's `log_level`, for the
/// commands that load one), else info; colours only on a terminal; no timestamps under systemd
/// (journald adds its own). Each command calls it first, or right after loading its config
/// (nothing logs before that: a config with mistakes is an error on stderr).
pub fn init_logging(level: Option<LogLevel>) {
    let level = level.unwrap_or(LogLevel::Info).as_str();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(callwatch_reflector::term::colour_on_stderr())
        .with_target(false)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
