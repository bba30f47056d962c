//! What the three programs (agent, collector, reflector) do the same way on a terminal: colour
//! in their logs only when standard error is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>), so log files and the journal never get escape codes; and, for
//! commands whose output is piped, a closed pipe ends them quietly instead of a panic.
//! Here because the reflector crate is the lowest crate all three link that does I/O.

use std::io::IsTerminal;

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
