//! `callwatch-detection`: the differentiation verdict's false-positive rate and power, measured
//! over simulated tests (simulated clock; the agent's real sessions and verdict, the collector's
//! real reflector core, the emulator's model). Prints a markdown table (docs/DETECTION.md).

use clap::Parser;

/// Simulates N two-arm WhatsApp-profile tests per scenario and prints the verdict rates.
#[derive(Parser)]
#[command(name = "callwatch-detection", version)]
struct Cli {
    /// Tests per scenario.
    #[arg(long, default_value_t = 200)]
    tests: u32,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match callwatch_tests::detection::markdown_table(cli.tests) {
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
