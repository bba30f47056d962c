//! A month of signed reports from hundreds of agents across dozens of networks, restrictions
//! switched on (and some off) at known hours on some, loaded into a real collector over QUIC;
//! then the collector's `/api/v1/events` scored against the truth (docs/EVENTS.md, "End to
//! end").
//!
//!   cargo run --release -p callwatch-tests --bin callwatch-history -- --networks 30 --days 30

use anyhow::{Context, Result};
use callwatch_proto::Platform;
use callwatch_tests::history::{
    history_config, quantile, signed_history, upload_history, HistorySpec, NetSpec, Restriction,
};
use clap::Parser;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(
    about = "Load a simulated month of signed reports into a collector and score its events",
    long_about = "Generates a history of signed reports (networks of 3 to 15 agents testing \
                  hourly, online about 80 % of hours, daily keys, some clocks 20 minutes off), \
                  restricts every third network at a known hour (a full block or a throttle \
                  caught in 60 % of tests, all or 60 % of its agents, half of them ending), \
                  uploads it over QUIC to a collector on loopback, asks GET /api/v1/events and \
                  prints, per network, the truth beside what the collector found, then a summary."
)]
struct Args {
    /// Networks (each its own country and AS).
    #[arg(long, default_value_t = 30)]
    networks: usize,
    /// Days of history, ending yesterday.
    #[arg(long, default_value_t = 30)]
    days: i64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The collector's data folder (default: a temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<std::path::PathBuf>,
}

const COUNTRIES: [&str; 10] = ["RU", "IR", "TR", "BY", "KZ", "DE", "BR", "IN", "PK", "EG"];
const PLATFORMS: [Platform; 4] = [
    Platform::Whatsapp,
    Platform::Telegram,
    Platform::Signal,
    Platform::Max,
];

fn spec(args: &Args) -> HistorySpec {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let hours = args.days * 24;
    let networks = (0..args.networks)
        .map(|i| {
            let restriction = (i % 3 == 0).then(|| {
                let onset = rng.gen_range(hours / 6..hours * 2 / 3);
                Restriction {
                    onset,
                    end: rng
                        .gen_bool(0.5)
                        .then(|| onset + rng.gen_range(72..(hours - onset).max(73))),
                    share_of_agents: if rng.gen_bool(0.7) { 1.0 } else { 0.6 },
                    rate: if rng.gen_bool(0.5) { 0.95 } else { 0.6 },
                }
            });
            NetSpec {
                country: COUNTRIES[i % COUNTRIES.len()],
                asn: 64_500 + i as u32,
                platform: PLATFORMS[i % PLATFORMS.len()],
                agents: rng.gen_range(3..=15),
                tests_per_hour: 1,
                restriction,
                skew_minutes: if i % 4 == 1 { 20 } else { 0 },
            }
        })
        .collect();
    HistorySpec {
        networks,
        days: args.days,
        first_day: chrono::Utc::now().timestamp().div_euclid(86_400) - args.days,
        seed: args.seed,
        availability: 0.8,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let spec = spec(&args);
    let started = std::time::Instant::now();
    let reports = signed_history(&spec);
    let agents: usize = spec.networks.iter().map(|n| n.agents).sum();
    eprintln!(
        "signed {} reports of {agents} agents on {} networks over {} days in {:.1} s",
        reports.len(),
        spec.networks.len(),
        spec.days,
        started.elapsed().as_secs_f64()
    );
    let temp = tempfile::tempdir()?;
    let root = args
        .data
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let collector = callwatch_collector::serve(history_config(&root, &spec))
        .await
        .context("starting the collector")?;
    let t = std::time::Instant::now();
    let accepted = upload_history(&collector, &reports).await;
    let upload_s = t.elapsed().as_secs_f64();
    eprintln!(
        "uploaded {accepted} reports in {upload_s:.1} s ({:.0}/s)",
        accepted as f64 / upload_s
    );
    let t = std::time::Instant::now();
    let (status, body) = callwatch_tests::http::get(collector.http_addr, "/api/v1/events").await?;
    anyhow::ensure!(status == 200, "GET /api/v1/events: {status} {body}");
    let detect_s = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let h0 = spec.first_day * 24;
    let hour_of = |s: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(s.as_str().unwrap_or_default())
            .map(|t| t.timestamp().div_euclid(3600) - h0)
            .unwrap_or(i64::MIN)
    };
    println!(
        "| network | agents | truth | onset found: began, detected (delay h) | recovery found: began, detected (delay h) | other events |\n|---|---:|---|---|---|---:|"
    );
    let (mut delays, mut errors, mut rdelays) = (Vec::new(), Vec::new(), Vec::new());
    let (mut found, mut restricted, mut ended, mut recovered, mut false_events) = (0, 0, 0, 0, 0);
    let mut null_months = 0.0;
    for net in &spec.networks {
        let mine: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["asn"].as_u64() == Some(u64::from(net.asn)))
            .collect();
        let onsets: Vec<_> = mine.iter().filter(|e| e["kind"] == "onset").collect();
        let recoveries: Vec<_> = mine.iter().filter(|e| e["kind"] == "recovery").collect();
        let truth = match net.restriction {
            None => {
                null_months += spec.days as f64 / 30.0;
                "none".to_string()
            }
            Some(r) => format!(
                "{} of agents, {:.0} % of tests, from h{}{}",
                if r.share_of_agents >= 1.0 {
                    "all"
                } else {
                    "60 %"
                },
                r.rate * 100.0,
                r.onset,
                r.end.map(|e| format!(" to h{e}")).unwrap_or_default()
            ),
        };
        let mut cells = ["–".to_string(), "–".to_string()];
        let mut other = mine.len();
        if let Some(r) = net.restriction {
            restricted += 1;
            // The first onset that began within a day of the truth.
            if let Some(o) = onsets
                .iter()
                .find(|e| (hour_of(&e["began"]) - r.onset).abs() <= 24)
            {
                found += 1;
                other -= 1;
                let (b, d) = (hour_of(&o["began"]), hour_of(&o["detected"]));
                delays.push(d + 1 - r.onset);
                errors.push(b - r.onset);
                cells[0] = format!("h{b}, h{d} ({})", d + 1 - r.onset);
            }
            if let Some(end) = r.end.filter(|e| *e < spec.days * 24 - 1) {
                ended += 1;
                if let Some(x) = recoveries.iter().find(|e| hour_of(&e["detected"]) >= end) {
                    recovered += 1;
                    other -= 1;
                    let (b, d) = (hour_of(&x["began"]), hour_of(&x["detected"]));
                    rdelays.push(d + 1 - end);
                    cells[1] = format!("h{b}, h{d} ({})", d + 1 - end);
                }
            }
        }
        false_events += other;
        println!(
            "| {} AS{} {} | {} | {truth} | {} | {} | {other} |",
            net.country, net.asn, net.platform, net.agents, cells[0], cells[1]
        );
    }
    let q = |v: &[i64], p: f64| quantile(v, p).map(|x| x.to_string()).unwrap_or("–".into());
    let abs: Vec<i64> = errors.iter().map(|e| e.abs()).collect();
    println!();
    println!(
        "{} reports, {agents} agents, {} networks, {} days (uploaded in {upload_s:.0} s; events computed in {detect_s:.1} s). \
         Onsets found: {found} of {restricted}; delay h median {} / p90 {} / max {}; onset-hour error (abs) median {} / max {}. \
         Recoveries found: {recovered} of {ended}; delay h median {} / max {}. \
         Other network events: {false_events} (over {null_months:.1} null network-months and the restricted networks' other hours). \
         Country-wide events: {}.",
        reports.len(),
        spec.networks.len(),
        spec.days,
        q(&delays, 0.5),
        q(&delays, 0.9),
        q(&delays, 1.0),
        q(&abs, 0.5),
        q(&abs, 1.0),
        q(&rdelays, 0.5),
        q(&rdelays, 1.0),
        events.iter().filter(|e| e["asn"].is_null()).count(),
    );
    collector.shutdown().await;
    Ok(())
}
