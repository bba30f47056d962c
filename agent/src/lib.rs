//! callwatch-agent: the volunteer's program. Runs loopback call tests against a reflector,
//! signs each result and uploads it to a collector.
//!
//! [`engine`] runs a test (sans-IO sessions, a precise driver); [`metrics`] turns packet records
//! into figures; [`queue`] keeps signed reports on disk until acknowledged; [`upload`] sends them
//! over QUIC or TLS over TCP; [`carry`] seals them into a file a volunteer can carry out;
//! [`runner`] is one test → sign → queue, and one cycle of those plus an upload; [`settings`]
//! is what every test is (the `test` command's flags, the config's keys) and the one builder of
//! its [`engine::TestSpec`];
//! [`daemon`] is `run`: [`schedule`] and [`budget`] decide when a test may run, uploads retry
//! with [`backoff`]; [`state`] is what `status` shows; [`config`] (the file, parsed once into
//! typed values) and [`identity`] are the volunteer's settings and key.

/// The version `--version` shows: the package version and the git commit built from (see
/// build-support/git_commit.rs; `unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CALLWATCH_GIT_COMMIT"),
    ")"
);
/// The git commit this build is from (12 hex digits, or `unknown`).
pub const GIT_COMMIT: &str = env!("CALLWATCH_GIT_COMMIT");

pub mod backoff;
pub mod budget;
pub mod carry;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod queue;
pub mod report_text;
pub mod runner;
pub mod schedule;
pub mod settings;
pub mod state;
pub mod stats;
pub mod upload;
pub mod verdict;
