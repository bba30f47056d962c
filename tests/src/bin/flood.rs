//! callwatch-flood: honest agents upload to a collector while attackers flood it; reports the
//! honest agents' success rate and acknowledgement latency with and without each attack, what
//! the attacker achieved, and what the collector counted. Bounded, loopback only: every phase
//! lasts `--secs`, and the attackers stop with it.
//!
//! Attacks (`--attack`, repeatable; default: every one, each in its own phase after a quiet one):
//! - `mixed`: from their own loopback addresses, concurrently, as fast as they can: QUIC
//!   connections that send nothing (held open), full batches of reports whose signature does not
//!   verify, well-sized frames of random bytes, and one honest agent's stored reports again;
//! - `initials`: QUIC Initials (captured from a real client) that never finish a handshake,
//!   sent again and again from one address;
//! - `sybil`: one network (a /24) mints a fresh key for every report and uploads as fast as it
//!   can from 10 of its addresses, to pass for many volunteers (16,384 such reports, signed
//!   before the phases so that the attacker's signing is not charged to the collector, sent
//!   round and round);
//! - `schema`: validly signed reports carrying a field no schema defines, and reports dated a day
//!   ahead, full batches as fast as the collector answers;
//! - `http`: 600 HTTP clients ask for every report and never read, while others repeat an
//!   hourly aggregation over 31 days.

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
    /// Attacks to run, each in its own phase (default: all).
    #[arg(long, value_enum)]
    attack: Vec<Attack>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Attack {
    Mixed,
    Initials,
    Sybil,
    Schema,
    Http,
}

impl Attack {
    const ALL: [Attack; 5] = [
        Attack::Mixed,
        Attack::Initials,
        Attack::Sybil,
        Attack::Schema,
        Attack::Http,
    ];
    fn name(self) -> &'static str {
        match self {
            Attack::Mixed => "mixed",
            Attack::Initials => "initials",
            Attack::Sybil => "sybil",
            Attack::Schema => "schema",
            Attack::Http => "http",
        }
    }
}

/// What an attack did and achieved, by name (printed after its phase).
type Tally = Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>;

fn add(t: &Tally, what: &'static str, n: u64) {
    if let Ok(mut m) = t.lock() {
        *m.entry(what).or_default() += n;
    }
}

#[derive(Default)]
struct Honest {
    sent: AtomicU64,
    ok: AtomicU64,
    /// Reports in acknowledged batches (every one accepted).
    reports_acked: AtomicU64,
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
                    stats
                        .reports_acked
                        .fetch_add(batch as u64, Ordering::Relaxed);
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

/// Prints the phase's line (and its failures) and returns its table row.
fn summary(label: &str, s: &Honest) -> String {
    let mut l = s.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    let p = |q: f64| {
        l.get(((q * l.len().saturating_sub(1) as f64).round()) as usize)
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    let (sent, ok) = (s.sent.load(Ordering::Relaxed), s.ok.load(Ordering::Relaxed));
    let share = 100.0 * ok as f64 / sent.max(1) as f64;
    println!(
        "{label:<14} {sent:>8} {ok:>8} {share:>9.2} % {:>9} {:>9}",
        p(0.5),
        p(0.99)
    );
    if let Ok(f) = s.failures.lock() {
        for (why, n) in f.iter() {
            println!("    failed {n}×: {why}");
        }
    }
    format!(
        "| {label} | {sent} | {ok} | {share:.2} % | {} ms | {} ms |",
        p(0.5),
        p(0.99)
    )
}

async fn mixed(c: Arc<Collector>, stop: Arc<AtomicBool>, tally: Tally) -> Result<()> {
    let mut tasks = Vec::new();
    // Idle connections: far more than the per-address cap allows.
    {
        let (c, stop, tally) = (c.clone(), stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) && held.len() < 500 {
                add(&tally, "connection attempts", 1);
                if let Ok(pair) = connect(&c, "127.0.0.66".parse().expect("literal")).await {
                    add(&tally, "connections held", 1);
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
        let (c, stop, tally) = (c.clone(), stop.clone(), tally.clone());
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
                add(
                    &tally,
                    ["", "forged batches", "garbage frames", "replayed batches"][kind],
                    1,
                );
                let r = if kind == 2 {
                    garbage(&conn, &mut rng).await
                } else {
                    exchange(&conn, batch.clone()).await.map(|answer| {
                        if let Response::Ack { statuses } = answer {
                            let stored = statuses
                                .iter()
                                .filter(|s| **s == ReportStatus::Accepted)
                                .count();
                            add(&tally, "reports stored", stored as u64);
                        }
                    })
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

/// QUIC Initials of `n` real connection attempts (a quinn client aimed at a socket that never
/// answers), to be sent again from elsewhere.
async fn captured_initials(c: &Collector, n: usize) -> Result<Vec<Vec<u8>>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(pinned_client_config(pin(c))?);
    let connecting: Vec<_> = (0..n)
        .map(|_| ep.connect(sink_addr, "localhost"))
        .collect::<Result<_, _>>()?;
    let mut seen = std::collections::HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    // Bounded: a retransmission of one attempt is read at most a few times.
    for _ in 0..n * 4 {
        if initials.len() == n {
            break;
        }
        let len = tokio::time::timeout(Duration::from_secs(5), sink.recv(&mut buf)).await??;
        let d = &buf[..len];
        // Long header, type Initial (RFC 9000 §17.2.2); the destination id names the attempt.
        if d.len() > 6 && d[0] & 0xF0 == 0xC0 {
            let dcid_len = usize::from(d[5]);
            if d.len() > 6 + dcid_len && seen.insert(d[6..6 + dcid_len].to_vec()) {
                initials.push(d.to_vec());
            }
        }
    }
    drop(connecting);
    ep.close(0u32.into(), b"");
    Ok(initials)
}

async fn initials(c: Arc<Collector>, stop: Arc<AtomicBool>, tally: Tally) -> Result<()> {
    let initials = captured_initials(&c, 64).await?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.77:0").await?;
    while !stop.load(Ordering::Relaxed) {
        for d in &initials {
            socket.send_to(d, c.quic_addr).await?;
            add(&tally, "Initials sent", 1);
        }
        // About 6,400 Initials a second, whatever the answers.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A report signed as `key` by hand: `sign` refuses a body the schema does not define.
fn signed_raw(body: Vec<u8>, key: &SigningKey) -> SignedReport {
    use ed25519_dalek::Signer;
    let mut message = callwatch_proto::sign::CONTEXT.to_vec();
    message.extend_from_slice(&body);
    SignedReport {
        signature: key.sign(&message).to_bytes().to_vec(),
        key: key.verifying_key().to_bytes().to_vec(),
        body,
    }
}

/// Batches the Sybil attacker cycles through: [`SYBIL_BATCHES`] full batches, every report
/// signed by a key of its own.
const SYBIL_BATCHES: usize = 64;

/// The Sybil attacker's reports, signed before any phase: an attacker signs on machines of
/// its own, so signing inside the phase would charge its CPU to the collector (both share
/// this host's cores, and the signing ran on the collector's runtime threads).
fn sybil_pool() -> Vec<Vec<SignedReport>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(70);
    let mut id = 90_000_000u32;
    let started = chrono::Utc::now() - chrono::Duration::minutes(5);
    (0..SYBIL_BATCHES)
        .map(|_| {
            (0..MAX_BATCH)
                .map(|_| {
                    id += 1;
                    let key = SigningKey::from_bytes(&rng.gen());
                    let r = synthetic_report(&mut rng, id, Platform::Telegram, started, true);
                    SignedReport::sign(&r, &key).expect("serialises")
                })
                .collect()
        })
        .collect()
}

async fn sybil(
    c: Arc<Collector>,
    stop: Arc<AtomicBool>,
    tally: Tally,
    pool: Arc<Vec<Vec<SignedReport>>>,
) -> Result<()> {
    let mut tasks = Vec::new();
    // Ten connections from addresses of one /24 (127.0.70.0/24).
    for a in 0..10u8 {
        let Ok((ep, conn)) = connect(&c, IpAddr::V4(Ipv4Addr::new(127, 0, 70, 1 + a))).await else {
            continue;
        };
        let (stop, tally, pool) = (stop.clone(), tally.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            // Each connection starts at its own place in the pool and goes round it.
            let mut next = usize::from(a) * SYBIL_BATCHES / 10;
            while !stop.load(Ordering::Relaxed) {
                let batch = pool[next % pool.len()].clone();
                next += 1;
                add(
                    &tally,
                    "reports sent (each a fresh key)",
                    batch.len() as u64,
                );
                match exchange(&conn, batch).await {
                    Ok(Response::Ack { statuses }) => {
                        for s in statuses {
                            match s {
                                ReportStatus::Accepted => add(&tally, "reports stored", 1),
                                ReportStatus::Deferred { .. } => add(&tally, "deferred", 1),
                                ReportStatus::Duplicate => add(&tally, "duplicates", 1),
                                _ => add(&tally, "other answers", 1),
                            }
                        }
                    }
                    Ok(_) => add(&tally, "batches refused (BUSY)", 1),
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            conn.close(0u32.into(), b"done");
            drop(ep);
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

async fn schema(c: Arc<Collector>, stop: Arc<AtomicBool>, tally: Tally) -> Result<()> {
    let Ok((_ep, conn)) = connect(&c, "127.0.0.80".parse()?).await else {
        return Ok(());
    };
    let key = SigningKey::from_bytes(&[80; 32]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(80);
    let mut id = 95_000_000u32;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<SignedReport> = (0..MAX_BATCH)
            .map(|i| {
                id += 1;
                if i % 2 == 0 {
                    let r = synthetic_report(
                        &mut rng,
                        id,
                        Platform::Whatsapp,
                        chrono::Utc::now(),
                        false,
                    );
                    let mut v = serde_json::to_value(&r).expect("a report is JSON");
                    v["hostname"] = "volunteer-laptop.local".into();
                    signed_raw(serde_json::to_vec(&v).expect("JSON"), &key)
                } else {
                    let ahead = chrono::Utc::now() + chrono::Duration::days(1);
                    let r = synthetic_report(&mut rng, id, Platform::Whatsapp, ahead, false);
                    SignedReport::sign(&r, &key).expect("serialises")
                }
            })
            .collect();
        add(&tally, "reports sent", batch.len() as u64);
        match exchange(&conn, batch).await {
            Ok(Response::Ack { statuses }) => {
                for s in statuses {
                    match s {
                        ReportStatus::Accepted => add(&tally, "reports stored", 1),
                        ReportStatus::Rejected { .. } => add(&tally, "refused", 1),
                        ReportStatus::Deferred { .. } => add(&tally, "deferred (kept)", 1),
                        ReportStatus::Duplicate => add(&tally, "duplicates", 1),
                    }
                }
            }
            Ok(_) => add(&tally, "batches refused (BUSY)", 1),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    Ok(())
}

async fn http(c: Arc<Collector>, stop: Arc<AtomicBool>, tally: Tally) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = c.http_addr;
    // 600 clients that ask for every report and never read.
    let mut held = Vec::new();
    for _ in 0..600 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let ask = "GET /api/v1/reports?limit=100000 HTTP/1.1\r\nHost: collector\r\n\r\n";
            if s.write_all(ask.as_bytes()).await.is_ok() {
                add(&tally, "report pages held unread", 1);
                held.push(s);
            }
        }
    }
    // Four clients repeating the most expensive documented query.
    let since = (chrono::Utc::now() - chrono::Duration::days(30)).format("%Y-%m-%d");
    let query = format!(
        "GET /api/v1/aggregation?axis_x=hour&axis_y=country&since={since} HTTP/1.1\r\nHost: \
         collector\r\nConnection: close\r\n\r\n"
    );
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, tally, query) = (stop.clone(), tally.clone(), query.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                let mut answer = Vec::new();
                if s.write_all(query.as_bytes()).await.is_err()
                    || s.read_to_end(&mut answer).await.is_err()
                {
                    continue;
                }
                let status = if answer.starts_with(b"HTTP/1.1 200") {
                    "aggregations answered 200"
                } else if answer.starts_with(b"HTTP/1.1 503") {
                    "aggregations answered 503"
                } else {
                    "aggregations answered otherwise"
                };
                add(&tally, status, 1);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let attacks = if cli.attack.is_empty() {
        Attack::ALL.to_vec()
    } else {
        cli.attack.clone()
    };
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
    let pool = Arc::new(if attacks.contains(&Attack::Sybil) {
        eprintln!(
            "signing the Sybil attacker's {} reports, each with a fresh key, before the phases…",
            SYBIL_BATCHES * MAX_BATCH
        );
        tokio::task::spawn_blocking(sybil_pool).await?
    } else {
        Vec::new()
    });
    let mut rows = Vec::new();
    let quiet = honest_phase(&c, cli.agents, cli.secs, cli.batch, 0).await?;
    rows.push(summary("quiet", &quiet));
    let mut acked = quiet.reports_acked.load(Ordering::Relaxed);
    let mut achieved = Vec::new();
    for (n, attack) in attacks.into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let tally: Tally = Default::default();
        let (c2, s2, t2, pool) = (c.clone(), stop.clone(), tally.clone(), pool.clone());
        let attacker = tokio::spawn(async move {
            match attack {
                Attack::Mixed => mixed(c2, s2, t2).await,
                Attack::Initials => initials(c2, s2, t2).await,
                Attack::Sybil => sybil(c2, s2, t2, pool).await,
                Attack::Schema => schema(c2, s2, t2).await,
                Attack::Http => http(c2, s2, t2).await,
            }
        });
        let first_id = 1_000_000 * (n as u32 + 1);
        let attacked = honest_phase(&c, cli.agents, cli.secs, cli.batch, first_id).await?;
        stop.store(true, Ordering::Relaxed);
        attacker.await??;
        rows.push(summary(attack.name(), &attacked));
        acked += attacked.reports_acked.load(Ordering::Relaxed);
        acked += tally
            .lock()
            .map(|m| m.get("reports stored").copied().unwrap_or(0))
            .unwrap_or(0);
        let what: Vec<String> = tally
            .lock()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
            .unwrap_or_default();
        println!("    attacker: {}", what.join(", "));
        achieved.push(format!("| {} | {} |", attack.name(), what.join(", ")));
    }
    println!(
        "collector: refused connections {}, QUIC retries {}, rejected {:?}, duplicates {}",
        c.ingest.stats.connections_refused.load(Ordering::Relaxed),
        c.ingest.stats.quic_retries.load(Ordering::Relaxed),
        c.ingest.stats.rejected(),
        c.ingest.stats.duplicate.load(Ordering::Relaxed)
    );
    // Nothing acknowledged is lost: the store holds exactly the reports acknowledged as
    // accepted, the honest agents' and the few the attackers got stored.
    let stored = c.store.len() as u64;
    println!(
        "store: {stored} reports; acknowledged as accepted: {acked} ({})",
        if stored == acked {
            "nothing acknowledged lost"
        } else {
            "MISMATCH"
        }
    );
    anyhow::ensure!(
        stored == acked,
        "the store holds {stored}, {acked} were acknowledged"
    );
    println!("\n| phase | honest batches | acknowledged | success | ack p50 | ack p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    println!("\n| attack | what the attacker sent and achieved |\n|---|---|");
    for a in achieved {
        println!("{a}");
    }
    Ok(())
}
