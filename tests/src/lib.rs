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

/// Path of a binary cargo built for this workspace (`callwatch-agent`, `callwatch-collector`),
/// found beside the running test executable (target/<profile>/deps/.. ).
pub fn built_binary(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().unwrap_or_default();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
