//! callwatch-collector: verifies, stores and aggregates call reports, and embeds the UDP
//! reflector.
//!
//! An operator runs `callwatch-collector serve`: a QUIC and TLS-over-TCP ingest endpoint for
//! agents ([`ingest`]), carry-out files imported by the same rules ([`carry`]),
//! a store for raw signed reports ([`store`]), region lookup that forgets the address right after
//! ([`geo`]), aggregation ([`aggregate`]) exported over HTTP ([`http`]), and the reflector agents
//! test against (the `callwatch-reflector` crate; the standalone reflectors the collector knows
//! are in [`reflector::registry`]). [`serve`] wires them together.

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

pub mod attest;
pub mod carry;
pub mod cert;
pub mod counts;
pub mod domain;
pub mod events;
pub mod export;
pub mod fault;
pub mod geo;
pub mod http;
pub mod ingest;
pub mod reflector;
pub mod serve;
pub mod store;
pub mod token;

pub use serve::{serve, serve_with_store, Collector, ServeConfig};
