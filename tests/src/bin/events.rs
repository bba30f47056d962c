//! The event detector's table (docs/EVENTS.md): false onsets per 100 null network-months under
//! several null models, and the detection delay, onset-hour error and recoveries of simulated
//! restrictions, each over `--months` seeded network months.
//!
//!   cargo run --release -p callwatch-tests --bin callwatch-events -- --months 400

use callwatch_collector::domain::events::Detector;
use clap::Parser;

#[derive(Parser)]
#[command(about = "The event detector's false events, delays and errors over simulated months")]
struct Args {
    /// Network months per scenario.
    #[arg(long, default_value_t = 400)]
    months: usize,
    /// The onset threshold (default: the detector's).
    #[arg(long)]
    h_onset: Option<f64>,
    /// The recovery threshold (default: the detector's).
    #[arg(long)]
    h_recovery: Option<f64>,
    /// The first seed (months use consecutive seeds).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    let mut d = Detector::default();
    if let Some(h) = args.h_onset {
        d.h_onset = h;
    }
    if let Some(h) = args.h_recovery {
        d.h_recovery = h;
    }
    print!(
        "{}",
        callwatch_tests::history::table(&d, args.months, args.seed, &[])
    );
}
