//! What the three programs (agent, collector, reflector) do the same way on a terminal: colour
//! in their logs only when standard error is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>), so log files and the journal never get escape codes; and, for
//! commands whose output is piped, a closed pipe ends them quietly instead of a panic.
//! A wrong command line exits [`EX_USAGE`] in all three ([`parse_or_exit`]), and each catches
//! SIGTERM and SIGINT before it announces anything ([`Stop`]).
//! Here because the reflector crate is the lowest crate all three link that does I/O.

use std::io::IsTerminal;

/// The exit code of a wrong command line (sysexits' EX_USAGE): apart from every other error
/// (clap's own 2 would collide with the agent's "collector unreachable").
pub const EX_USAGE: i32 = 64;

/// The program's command line, or the process ends: a wrong one prints clap's message and
/// exits [`EX_USAGE`]; `--help` and `--version` print and exit 0.
pub fn parse_or_exit<C: clap::Parser>() -> C {
    C::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { EX_USAGE } else { 0 })
    })
}

/// Shells `completions` writes a script for.
pub use clap_complete::Shell;

/// Writes the completion script of program `C` for `shell` to standard output (`completions`).
pub fn print_completions<C: clap::CommandFactory>(shell: Shell) {
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// Writes program `C`'s man pages (roff, section 1) into `dir`: `NAME.1` for the program and
/// `NAME-SUB.1` for each subcommand, from the same definitions as `--help` (`manpages`).
/// Returns the files written.
pub fn write_manpages<C: clap::CommandFactory>(
    dir: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let cmd = C::command();
    let name = cmd.get_name().to_string();
    std::fs::create_dir_all(dir)?;
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        // clap names are &'static str without its `string` feature; a few bytes per page, once.
        let full: &'static str = Box::leak(full.into_boxed_str());
        pages.push((full.to_string(), sub.clone().name(full)));
    }
    let mut written = Vec::new();
    for (page, cmd) in pages {
        let path = dir.join(format!("{page}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut text)?;
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// Logging for the collector and the reflector: to stderr, at `RUST_LOG` or else info, colour
/// by [`colour_on_stderr`].
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .init();
}

/// Whether log lines on standard error may carry ANSI colour.
pub fn colour_on_stderr() -> bool {
    colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The rule behind [`colour_on_stderr`].
pub fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// For a command that writes its results to standard output and then ends (`export`,
/// `verify`, …): writing to a closed pipe (`… | head`) ends the process quietly, as the signal
/// does for every Unix filter, instead of Rust's default — the write fails and `println!`
/// panics. Not for servers: a server keeps running whoever closes what (and its sockets never
/// raise the signal: Rust's socket writes pass `MSG_NOSIGNAL`).
pub fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal; no handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// SIGTERM (a service manager stopping it) and SIGINT (Ctrl-C), caught from the moment it is
/// installed. Installed before a program prints what it serves: whoever reads that line may
/// signal at once, and a signal with no handler yet takes the default action, which kills the
/// process without its clean shutdown.
pub struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    /// Catches SIGTERM and SIGINT from now on. Needs a Tokio runtime.
    pub fn install() -> anyhow::Result<Self> {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    /// Returns the first signal's name (`SIGTERM` or `SIGINT`) since [`Stop::install`].
    pub async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }
}
