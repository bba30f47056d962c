//! callwatch-tests: end-to-end tests of the whole system, the local demo deployment, and the
//! tools tests use (a minimal HTTP client; the network impairment emulator).
//!
//! Nothing here ships in a release binary of the agent or the collector.

pub mod demo;
pub mod detection;
pub mod emulator;
pub mod http;
pub mod scenarios;
pub mod sim;
