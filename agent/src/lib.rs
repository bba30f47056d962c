//! callwatch-agent: the volunteer's program. Runs loopback call tests against a reflector,
//! signs each result and uploads it to a collector.
//!
//! [`engine`] runs a test (sans-IO sessions, a precise driver); [`metrics`] turns packet records
//! into figures; [`queue`] keeps signed reports on disk until acknowledged; [`upload`] sends them
//! over QUIC or TLS over TCP; [`carry`] seals them into a file a volunteer can carry out;
//! [`runner`] is one test → sign → queue, and one cycle of those plus an upload;
//! [`daemon`] is `run`: [`schedule`] and [`budget`] decide when a test may run, uploads retry
//! with [`backoff`]; [`state`] is what `status` shows; [`config`] and [`identity`] are the
//! volunteer's settings and key.

pub mod backoff;
pub mod budget;
pub mod carry;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod identity;
pub mod metrics;
pub mod queue;
pub mod report_text;
pub mod runner;
pub mod schedule;
pub mod state;
pub mod stats;
pub mod upload;
pub mod verdict;
