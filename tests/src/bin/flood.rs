//! callwatch-flood: honest agents upload to a collector while attackers flood it; reports the
//! honest agents' success rate and acknowledgement latency with and without the attack, and what
//! the collector counted for each kind of rejection. Bounded, loopback only.
//!
//! Attackers (from their own loopback addresses, concurrently, as fast as they can):
//! - `connections`: opens QUIC connections and sends nothing (held open);
//! - `forged`: full batches of reports whose signature does not verify;
//! - `garbage`: well-sized frames of random bytes;
//! - `replay`: one honest agent's stored reports, again and again.

use anyhow::Result;
use callwatch_agent::upload::{exchange, pinned_client_config};
use callwatch_collector::{serve, Collector, ServeConfig};
use callwatch_proto::upload::{ReportStatus, Response, MAX_BATCH};
use callwatch_proto::{Platform, SignedReport};
use callwatch_tests::seed::synthetic_report;
use clap::Parser;
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "callwatch-flood",
    about = "Honest agents' upload success and latency with and without an attacker flooding the collector (loopback, bounded)."
)]
struct Cli {
    /// Honest agents, each on its own loopback address and connection.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Seconds each phase (quiet, then under attack) lasts.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Reports per honest batch; each agent sends one batch per second.
    #[arg(long, default_value_t = 10)]
    batch: usize,
}

#[derive(Default)]
struct Honest {
    sent: AtomicU64,
    ok: AtomicU64,
    latencies: std::sync::Mutex<Vec<Duration>>,
    /// Why the others failed, by reason.
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

fn pin(c: &Collector) -> [u8; 32] {
    let mut p = [0u8; 32];
    // The collector prints its pin as 64 hex digits.
    let _ = hex::decode_to_slice(&c.pin, &mut p);
    p
}

async fn connect(c: &Collector, from: IpAddr) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let mut ep = quinn::Endpoint::client(SocketAddr::new(from, 0))?;
    ep.set_default_client_config(pinned_client_config(pin(c))?);
    let conn = ep.connect(c.quic_addr, "localhost")?.await?;
    Ok((ep, conn))
}

/// Honest agent `i`'s address, each in a /24 of its own (127.1.1.1, 127.1.2.1, …): the
/// collector's rate limits are per network prefix, and honest volunteers are on many networks.
fn honest_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 250) as u8,
        1 + (i % 250) as u8,
        1,
    ))
}

/// Runs the honest agents for `secs`; ids continue from `first_id`.
async fn honest_phase(
    c: &Collector,
    agents: usize,
    secs: u64,
    batch: usize,
    first_id: u32,
) -> Result<Arc<Honest>> {
    let stats = Arc::new(Honest::default());
    let mut tasks = Vec::new();
    for a in 0..agents {
        let (ep, conn) = connect(c, honest_addr(a)).await?;
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            let key = SigningKey::from_bytes(&[(a % 250) as u8 + 1; 32]);
            let mut rng = rand::rngs::StdRng::seed_from_u64(a as u64);
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u32;
            while start.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                let reports: Vec<SignedReport> = (0..batch)
                    .map(|_| {
                        n += 1;
                        let id = first_id + (a as u32) * 100_000 + n;
                        let started =
                            chrono::Utc::now() - chrono::Duration::minutes(rng.gen_range(1..600));
                        let r = synthetic_report(&mut rng, id, Platform::Telegram, started, false);
                        SignedReport::sign(&r, &key).expect("serialises")
                    })
                    .collect();
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let failure =
                    match tokio::time::timeout(Duration::from_secs(10), exchange(&conn, reports))
                        .await
                    {
                        Ok(Ok(Response::Ack { statuses })) => statuses
                            .iter()
                            .find(|s| **s != ReportStatus::Accepted)
                            .map(|s| format!("{s:?}")),
                        Ok(Ok(Response::Error { code, reason })) => {
                            Some(format!("error {code}: {reason}"))
                        }
                        Ok(Ok(other)) => Some(format!("unexpected answer: {other:?}")),
                        Ok(Err(e)) => Some(format!("{e:#}")),
                        Err(_) => Some("no answer within 10 s".into()),
                    };
                if let Some(why) = failure {
                    if let Ok(mut f) = stats.failures.lock() {
                        *f.entry(why).or_default() += 1;
                    }
                } else {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = stats.latencies.lock() {
                        l.push(t.elapsed());
                    }
                }
            }
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(stats)
}

fn summary(label: &str, s: &Honest) {
    let mut l = s.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    let p = |q: f64| {
        l.get(((q * l.len().saturating_sub(1) as f64).round()) as usize)
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    let (sent, ok) = (s.sent.load(Ordering::Relaxed), s.ok.load(Ordering::Relaxed));
    println!(
        "{label:<14} {sent:>8} {ok:>8} {:>9.2} % {:>9} {:>9}",
        100.0 * ok as f64 / sent.max(1) as f64,
        p(0.5),
        p(0.99)
    );
    if let Ok(f) = s.failures.lock() {
        for (why, n) in f.iter() {
            println!("    failed {n}×: {why}");
        }
    }
}

async fn attack(
    c: Arc<Collector>,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
) -> Result<()> {
    let mut tasks = Vec::new();
    // Idle connections: far more than the per-address cap allows.
    {
        let (c, stop, counts) = (c.clone(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) && held.len() < 500 {
                counts[0].fetch_add(1, Ordering::Relaxed);
                if let Ok(pair) = connect(&c, "127.0.0.66".parse().expect("literal")).await {
                    held.push(pair);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    // Forged, garbage and replayed uploads, each from its own address.
    for (kind, from) in [(1usize, "127.0.0.67"), (2, "127.0.0.68"), (3, "127.0.0.69")] {
        let (c, stop, counts) = (c.clone(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((_ep, conn)) = connect(&c, from.parse().expect("literal")).await else {
                return;
            };
            let key = SigningKey::from_bytes(&[200; 32]);
            let mut rng = rand::rngs::StdRng::seed_from_u64(kind as u64);
            let base = synthetic_report(&mut rng, 1, Platform::Whatsapp, chrono::Utc::now(), false);
            let mut signed = SignedReport::sign(&base, &key).expect("serialises");
            if kind == 1 {
                signed.signature[0] ^= 1;
            }
            let batch = vec![signed; MAX_BATCH];
            while !stop.load(Ordering::Relaxed) {
                counts[kind].fetch_add(1, Ordering::Relaxed);
                let r = if kind == 2 {
                    garbage(&conn, &mut rng).await
                } else {
                    exchange(&conn, batch.clone()).await.map(drop)
                };
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

async fn garbage(conn: &quinn::Connection, rng: &mut impl Rng) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut body = vec![0u8; 4096];
    rng.fill(&mut body[..]);
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    send.finish()?;
    let _ = recv.read_to_end(1 << 20).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = tempfile::tempdir()?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut cfg = ServeConfig::new(root.path().join("collector"));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    let c = Arc::new(serve(cfg).await?);
    println!(
        "{} honest agents, one batch of {} reports per second each, {} s per phase; default collector limits",
        cli.agents, cli.batch, cli.secs
    );
    println!(
        "{:<14} {:>8} {:>8} {:>11} {:>9} {:>9}",
        "phase", "batches", "acked", "success", "p50 ms", "p99 ms"
    );
    let quiet = honest_phase(&c, cli.agents, cli.secs, cli.batch, 0).await?;
    summary("quiet", &quiet);
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let attacker = tokio::spawn(attack(c.clone(), stop.clone(), counts.clone()));
    let attacked = honest_phase(&c, cli.agents, cli.secs, cli.batch, 50_000_000).await?;
    stop.store(true, Ordering::Relaxed);
    attacker.await??;
    summary("under attack", &attacked);
    let names = [
        "connection attempts",
        "forged batches",
        "garbage frames",
        "replayed batches",
    ];
    for (name, n) in names.iter().zip(counts.iter()) {
        println!("attacker {name}: {}", n.load(Ordering::Relaxed));
    }
    println!(
        "collector: refused connections {}, rejected {:?}, duplicates {}",
        c.ingest.stats.connections_refused.load(Ordering::Relaxed),
        c.ingest.stats.rejected(),
        c.ingest.stats.duplicate.load(Ordering::Relaxed)
    );
    Ok(())
}
