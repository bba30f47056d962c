//! `callwatch-detection`: how the verdict does against every censor and null model of the
//! catalogue (`tests/src/censors.rs`), per platform profile, over simulated call tests (the
//! agent's real `CallTest` and verdict, the collector's real reflector core, the emulator's
//! model; simulated clock, so a 15 s test takes milliseconds). Prints the Markdown table of
//! docs/DETECTION.md, with 95 % Clopper–Pearson intervals; rows go to stderr as they finish.

use callwatch_proto::Platform;
use callwatch_tests::censors::{table, PLATFORMS};
use clap::Parser;

/// Simulates N call tests per (censor model, platform) and prints the verdict rates.
#[derive(Parser)]
#[command(name = "callwatch-detection", version)]
struct Cli {
    /// Tests per row. 1,000 lets a false-positive rate show a 95 % upper bound ≤ 1 % (at most
    /// 3 false positives).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    tests: u32,
    /// Platforms to include (comma-separated); default: every platform with a control arm.
    #[arg(long, value_delimiter = ',')]
    platforms: Vec<Platform>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let platforms = if cli.platforms.is_empty() {
        PLATFORMS.to_vec()
    } else {
        cli.platforms
    };
    match table(cli.tests, &platforms, |row| eprint!("{row}")) {
        Ok(table) => {
            print!("{table}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callwatch-detection: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
