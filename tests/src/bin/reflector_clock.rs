//! callwatch-reflector-clock: one call test under each load a collector meets (the abuse table),
//! reporting what the test measured: the round trip, the reflector's residence time, and whether
//! the test was marked as taken under reflector load. A loaded collector must never show up as a
//! degraded network: the RTT stays where it is at idle, or the test says the reflector was loaded.
//! Bounded, loopback only.
//!
//! Layout (2 cores): one process. The collector (`serve`, sled, its reflector on threads of its
//! own) and the load generators share a tokio runtime; the agent's call test runs on its own
//! threads (a paced sender and one receiver per arm), as the real agent does. Nothing is pinned.
//!
//! Loads, each held for the whole test:
//! - `idle`: nothing;
//! - `unread-exports`: N HTTP clients ask for `/api/v1/reports` and never read the answer;
//! - `aggregation-loop`: 8 clients ask for an hourly country aggregation back to back;
//! - `ingest`: 8 uploaders send 250-report batches back to back (rate limits off);
//! - `reflector-flood`: 4 sockets send 172-byte garbage to the platform port as fast as they can.

use anyhow::Result;
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::upload::{exchange, pinned_client_config};
use callwatch_collector::ingest::RateLimits;
use callwatch_collector::{serve, Collector};
use callwatch_proto::report::VerdictRule;
use callwatch_proto::upload::Response;
use callwatch_proto::{CallReport, Platform, Role, SignedReport};
use callwatch_tests::seed::synthetic_report;
use clap::Parser;
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(
    name = "callwatch-reflector-clock",
    about = "A call test under each collector load: RTT, the reflector's residence time, and whether the test is marked as taken under reflector load (loopback, bounded)."
)]
struct Cli {
    /// Reports stored before the loads start (what the export clients ask for).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u32).range(0..=200_000))]
    reports: u32,
    /// HTTP clients that ask for exports and never read.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=2_000))]
    unread_clients: u32,
    /// Seconds each call test runs (at least 8 for a verdict).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(8..=60))]
    secs: u32,
    /// Call tests per load (one after another while the load is held).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    tests: u32,
    /// Loads to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,unread-exports,aggregation-loop,ingest,reflector-flood"
    )]
    loads: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = tempfile::tempdir()?;
    let mut cfg = callwatch_tests::seed::config(root.path(), "collector");
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    cfg.reflectors = vec![any, any];
    cfg.rate_limits = RateLimits::unlimited();
    let collector = serve(cfg).await?;
    eprintln!("storing {} reports…", cli.reports);
    seed(&collector, cli.reports).await?;
    let mut spec = TestSpec::voice(collector.reflector.addrs[0], cli.secs * 1000);
    spec.platform = Platform::Whatsapp;
    spec.size = None;
    spec.platform_port = Some(collector.reflector.addrs[0].port());
    spec.control_port = Some(collector.reflector.addrs[1].port());
    spec.reflector_key = Some(collector.reflector.seal_key);
    spec.reached_before = true;

    println!("| load | verdict | RTT p50 / p99 / max (ms) | residence p50 / p99 / max (ms) | reflector drops | marked |");
    println!("|---|---|---:|---:|---:|---|");
    let mut summary = Vec::new();
    for load in &cli.loads {
        eprintln!("{load}: starting the load…");
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicU64::new(0));
        let tasks = start_load(load, &collector, &cli, &stop, &work).await?;
        let mut marked = 0;
        let mut worst_rtt_p99: f64 = 0.0;
        for i in 0..cli.tests {
            eprintln!("{load}: test {} of {}, {} s…", i + 1, cli.tests, cli.secs);
            // The test on threads of its own, not the runtime's blocking pool: unread exports
            // hold every thread of that pool (which is the collector's, here).
            let (tx, rx) = tokio::sync::oneshot::channel();
            let s = spec.clone();
            std::thread::spawn(move || {
                let _ = tx.send(run_call_test(&s, &Cancel::default(), |_| {}));
            });
            let report = rx.await??;
            marked += u32::from(report.reflector_loaded);
            let p99 = report
                .streams
                .iter()
                .filter_map(|s| s.rtt_ms)
                .map(|r| r.p99);
            worst_rtt_p99 = p99.fold(worst_rtt_p99, f64::max);
            println!("{}", row(load, &report));
        }
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.abort();
        }
        summary.push(format!(
            "| {load} | {} | {marked} | {worst_rtt_p99:.2} |",
            cli.tests
        ));
        eprintln!("{load}: {} load operations", work.load(Ordering::Relaxed));
        // Let the held connections and sessions go before the next load.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!();
    println!("| load | tests | marked as reflector-loaded | worst RTT p99, either arm (ms) |");
    println!("|---|---:|---:|---:|");
    for line in summary {
        println!("{line}");
    }
    collector.shutdown().await;
    Ok(())
}

/// Stores `n` synthetic reports, from 16 agent keys, in 250-report batches.
async fn seed(c: &Collector, n: u32) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let keys: Vec<SigningKey> = (0..16u8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    let now = chrono::Utc::now();
    let reports: Vec<SignedReport> = (0..n)
        .map(|i| {
            let started = now - chrono::Duration::minutes(i64::from(i % 10_000));
            let r = synthetic_report(
                &mut rng,
                i + 1_000_000,
                Platform::Whatsapp,
                started,
                i % 3 == 0,
            );
            SignedReport::sign(&r, &keys[(i % 16) as usize])
        })
        .collect::<Result<_, _>>()?;
    let conn = connect(c).await?;
    for batch in reports.chunks(250) {
        match exchange(&conn, batch.to_vec()).await? {
            Response::Ack { .. } => {}
            other => anyhow::bail!("seeding refused: {other:?}"),
        }
    }
    Ok(())
}

async fn connect(c: &Collector) -> Result<quinn::Connection> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin)?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(pinned_client_config(pin)?);
    Ok(ep.connect(c.quic_addr, "localhost")?.await?)
}

async fn start_load(
    load: &str,
    c: &Collector,
    cli: &Cli,
    stop: &Arc<AtomicBool>,
    work: &Arc<AtomicU64>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    match load {
        "idle" => {}
        "unread-exports" => {
            for _ in 0..cli.unread_clients {
                let mut s = tokio::net::TcpStream::connect(c.http_addr).await?;
                let req = format!(
                    "GET /api/v1/reports?limit=100000 HTTP/1.1\r\nHost: {}\r\n\r\n",
                    c.http_addr
                );
                s.write_all(req.as_bytes()).await?;
                work.fetch_add(1, Ordering::Relaxed);
                // Held open, never read, until the load ends.
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    drop(s);
                }));
            }
        }
        "aggregation-loop" => {
            for _ in 0..8 {
                let (addr, stop, work) = (c.http_addr, stop.clone(), work.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let q = "/api/v1/aggregation?by=hour,country&since=2000-01-01T00:00:00Z";
                        if callwatch_tests::http::get(addr, q).await.is_ok() {
                            work.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        "ingest" => {
            for u in 0..8u32 {
                let conn = connect(c).await?;
                let (stop, work) = (stop.clone(), work.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(u));
                    let key = SigningKey::from_bytes(&[100 + u as u8; 32]);
                    let mut id = 2_000_000 + u * 1_000_000;
                    while !stop.load(Ordering::SeqCst) {
                        let batch: Vec<SignedReport> = (0..250)
                            .filter_map(|_| {
                                id += 1;
                                let r = synthetic_report(
                                    &mut rng,
                                    id,
                                    Platform::Telegram,
                                    chrono::Utc::now(),
                                    false,
                                );
                                SignedReport::sign(&r, &key).ok()
                            })
                            .collect();
                        if exchange(&conn, batch).await.is_err() {
                            return;
                        }
                        work.fetch_add(250, Ordering::Relaxed);
                    }
                }));
            }
        }
        "reflector-flood" => {
            let target = c.reflector.addrs[0];
            for _ in 0..4 {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
                sock.connect(target)?;
                let (stop, work) = (stop.clone(), work.clone());
                std::thread::spawn(move || {
                    let garbage = [0x5Au8; 172];
                    while !stop.load(Ordering::SeqCst) {
                        if sock.send(&garbage).is_ok() {
                            work.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        other => anyhow::bail!("unknown load {other:?}"),
    }
    Ok(tasks)
}

fn row(load: &str, r: &CallReport) -> String {
    let control = r.streams.iter().find(|s| s.role == Role::Control);
    let rtt = control.and_then(|s| s.rtt_ms);
    let held = control.and_then(|s| s.reflector_residence_ms);
    let drops: u32 = r.streams.iter().map(|s| s.reflector_drops).sum();
    let rule = r.verdict_detail.as_ref().and_then(|d| d.rule);
    let verdict = format!(
        "{}{}",
        r.verdict
            .map_or("–".into(), |v| format!("{v:?}").to_lowercase()),
        rule.filter(|r| *r == VerdictRule::ReflectorLoaded)
            .map_or(String::new(), |_| " (reflector-loaded)".into())
    );
    let three = |s: Option<callwatch_proto::report::Stats>| {
        s.map_or("–".into(), |s| {
            format!("{:.2} / {:.2} / {:.1}", s.median, s.p99, s.max)
        })
    };
    format!(
        "| {load} | {verdict} | {} | {} | {drops} | {} |",
        three(rtt),
        three(held),
        if r.reflector_loaded { "yes" } else { "no" }
    )
}
